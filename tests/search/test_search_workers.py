"""Several processes on one study: two workers share N trials; a killed run resumes without losing trials."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import optuna
import pytest
from _search_fixtures import (
    cli_command,
    cli_env,
    copy_profile,
    killable_mid_trial,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
    run_cli,
    search_args,
    study_trials,
    wait_for,
)

from hgc_tune.search._storage import open_storage
from hgc_tune.search._trials import ATTR

STUDY = "shared"
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _trials(storage_url: str):
    return study_trials(storage_url, STUDY)


def _search_args(profile, storage_url, out, trials, *extra):
    return search_args(profile, storage_url, out, trials, *extra, study=STUDY)


def test_two_worker_processes_share_n_trials(tiny_pipe, tmp_path_factory, tmp_path):
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), tmp_path / "profile")
    storage_url = f"journal:{tmp_path / 'study.log'}"
    n = 10
    done = run_cli(*_search_args(profile, storage_url, tmp_path / "p.json", n, "--workers", "2"), timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _trials(storage_url)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    surplus = [t for t in trials if t.user_attrs.get(ATTR.SURPLUS)]
    # none lost, none duplicated: N completed trials with distinct numbers, nothing left running or waiting
    assert len(complete) == n
    assert len({t.number for t in complete}) == n
    assert sorted(t.number for t in [*complete, *surplus]) == list(range(len(trials)))
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    # the enqueued peers ran once each
    peers = [t.user_attrs.get(ATTR.PEER) for t in complete if t.user_attrs.get(ATTR.PEER)]
    assert sorted(peers) == ["deepcache-n3-b0", "full-compute"]
    # both processes worked on the study
    assert {t.user_attrs[ATTR.WORKER] for t in complete} == {0, 1}
    result = json.loads(done.stdout)
    assert len(result["trials"]) == n


def test_killed_search_resumes_and_keeps_completed_trials(tiny_pipe, tmp_path_factory, tmp_path):
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), tmp_path / "profile")
    storage_url = f"sqlite:///{tmp_path / 'study.db'}"
    n = 5
    args = _search_args(profile, storage_url, tmp_path / "p.json", n, "--heartbeat", "1")
    process = subprocess.Popen(
        cli_command(*args), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:

        def mid_trial(trials):
            return killable_mid_trial(trials, completed=2)

        wait_for(mid_trial, lambda: _trials(storage_url), time.monotonic() + 240)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    before = _trials(storage_url)
    completed = {t.number: (t.value, t.params) for t in before if t.state.name == "COMPLETE"}
    killed = [t.number for t in before if t.state.name == "RUNNING"]
    assert len(completed) >= 2 and len(killed) == 1 and len(completed) < n

    done = run_cli(*args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _trials(storage_url)
    now = {t.number: (t.value, t.params) for t in after if t.state.name == "COMPLETE"}
    # every trial completed before the kill is still there, unchanged, and the study grew to N
    assert all(now.get(number) == value for number, value in completed.items())
    assert len(now) == n > len(completed)
    # the killed trial went stale, was failed and retried with the same parameters
    stale = next(t for t in after if t.number == killed[0])
    assert stale.state.name == "FAIL"
    retry = [t for t in after if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == stale.params
    assert not [t for t in after if t.state.name in ("RUNNING", "WAITING")]


def _evaluated_once(trials) -> None:
    """Each policy was evaluated by one completed trial; every other trial of it reused that result."""
    evaluated = [
        t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get(ATTR.DUPLICATE_OF) is None
    ]
    keys = [t.user_attrs[ATTR.POLICY_KEY] for t in evaluated]
    assert len(keys) == len(set(keys)), sorted(keys)
    by_key = {t.user_attrs[ATTR.POLICY_KEY]: t.number for t in evaluated}
    for t in trials:
        if t.state.name == "COMPLETE" and t.user_attrs.get(ATTR.DUPLICATE_OF) is not None:
            assert t.user_attrs[ATTR.DUPLICATE_OF] == by_key[t.user_attrs[ATTR.POLICY_KEY]]


def test_two_searches_started_at_once_on_one_sqlite_file_both_finish(tiny_pipe, tmp_path_factory, tmp_path):
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), tmp_path / "profile")
    storage_url = f"sqlite:///{tmp_path / 'study.db'}"
    n = 6
    processes = [
        subprocess.Popen(
            cli_command(*_search_args(profile, storage_url, tmp_path / f"p{i}.json", n, "--heartbeat", "2")),
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode in (0, 1), err[-3000:]  # 1: no policy within the budget, said in one line
        assert "Traceback" not in err and len(json.loads(out)["trials"]) == n
    trials = _trials(storage_url)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == n and not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    counted = [t for t in trials if not t.user_attrs.get(ATTR.SURPLUS)]
    assert len(counted) == n  # surplus trials (a race, a duplicate peer) did no work and are not counted
    # each peer ran once; both processes sample the same points (one seed): those reuse, not re-evaluate
    peers = [t.user_attrs[ATTR.PEER] for t in complete if t.user_attrs.get(ATTR.PEER)]
    assert sorted(peers) == ["deepcache-n3-b0", "full-compute"]
    _evaluated_once(trials)


def test_a_search_killed_in_a_peer_resumes_without_evaluating_a_point_twice(
    tiny_pipe, tmp_path_factory, tmp_path
):
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), tmp_path / "profile")
    storage_url = f"sqlite:///{tmp_path / 'study.db'}"
    n = 5
    peers = "deepcache-n3-b0,deepcache-n5-b0"
    args = (*_search_args(profile, storage_url, tmp_path / "p.json", n, "--heartbeat", "1"), "--peers", peers)
    process = subprocess.Popen(
        cli_command(*args), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(
            lambda t: killable_mid_trial(t, completed=2), lambda: _trials(storage_url), time.monotonic() + 240
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    killed = [t for t in _trials(storage_url) if t.state.name == "RUNNING"]
    assert [t.user_attrs.get(ATTR.PEER) for t in killed] == ["deepcache-n5-b0"]  # killed in the peer
    done = run_cli(*args, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    after = _trials(storage_url)
    assert not [t for t in after if t.state.name in ("RUNNING", "WAITING")]
    complete = [t for t in after if t.state.name == "COMPLETE"]
    assert len(complete) == n
    assert [t.user_attrs.get(ATTR.PEER) for t in complete].count("deepcache-n5-b0") == 1
    _evaluated_once(after)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_stale_trial_is_failed_and_enqueued_again(tmp_path, kind):
    url = f"journal:{tmp_path / 'j.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study_id = storage.get_study_id_from_name("s")
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.record_heartbeat(trial_id)  # as the heartbeat thread of a running trial does
    # The worker "died": no heartbeat for longer than the grace period (SQLite's clock has 1 s resolution).
    time.sleep(2.2)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["failed_trial"] == 0
