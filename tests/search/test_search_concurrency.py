"""Several processes on one study, at the storage and objective level: each waiting trial runs once, each
policy is evaluated once (a trial waits for another process's evaluation of the same policy), and no trial
is left waiting once the study is full."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from hgc_tune.search._objective import PolicyObjective
from hgc_tune.search._storage import open_storage, record_first_heartbeat
from hgc_tune.search._trials import (
    ATTR,
    close_leftover_waiting,
    close_waiting,
    counted_trials,
    duplicate_waiting_peers,
    present_peers,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
]
X = optuna.distributions.FloatDistribution(0, 1)

_POP = """
import sys, optuna
from hgc_tune.search._storage import open_storage, record_first_heartbeat
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="s", storage=open_storage(sys.argv[1], heartbeat_interval=60))
popped = []
while True:
    trial_id = study._pop_waiting_trial_id()
    if trial_id is None:
        break
    popped.append(study._storage.get_trial(trial_id).number)
print(" ".join(map(str, popped)))
"""


def test_two_processes_popping_one_sqlite_queue_never_run_a_trial_twice(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url, heartbeat_interval=60))
    for i in range(60):
        study.enqueue_trial({"x": i / 60})
    command = [sys.executable, "-c", _POP, url]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    popped = [int(n) for p in processes for n in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in processes)
    assert sorted(popped) == list(range(60))  # each waiting trial started by exactly one process


def _objective(study) -> PolicyObjective:
    objective = PolicyObjective(None, None, None, None, n_trials=10)
    objective.wait_seconds = 0.1
    return objective


def _running(study, key: str):
    trial = study.ask({"x": X})
    trial.set_user_attr(ATTR.POLICY_KEY, key)
    return trial


def test_a_trial_waits_for_another_processs_evaluation_of_the_same_policy_and_reuses_it(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=60)
    study = optuna.create_study(study_name="s", storage=storage)
    first, second = _running(study, "K"), _running(study, "K")
    other = _running(study, "other")  # a running trial of another policy is not waited for
    assert _objective(study)._duplicate(other, "other") is None

    def finish() -> None:
        time.sleep(0.5)
        first.set_user_attr(ATTR.LOSS, 0.01)
        study.tell(first, 1.0)

    finisher = threading.Thread(target=finish)
    finisher.start()
    start = time.monotonic()
    found = _objective(study)._duplicate(second, "K")
    finisher.join()
    assert found is not None and found.number == first.number and time.monotonic() - start >= 0.4
    # the earlier trial never waits for a later one: it evaluates
    third = _running(study, "L")
    fourth = _running(study, "L")
    assert _objective(study)._duplicate(third, "L") is None
    assert fourth.number > third.number


def test_a_killed_owner_goes_stale_and_the_waiting_trial_takes_over(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    dead, waiting = _running(study, "K"), _running(study, "K")
    for trial in (dead, waiting):
        storage.record_heartbeat(trial._trial_id)
    keep_alive = threading.Event()

    def beat() -> None:  # the waiting trial's worker is alive: its heartbeat goes on
        while not keep_alive.wait(0.3):
            storage.record_heartbeat(waiting._trial_id)

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        start = time.monotonic()
        assert _objective(study)._duplicate(waiting, "K") is None  # the dead owner failed: evaluate here
        assert time.monotonic() - start < 15
    finally:
        keep_alive.set()
        beater.join()
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[dead.number] == TrialState.FAIL and states[waiting.number] == TrialState.RUNNING


def test_duplicate_peers_and_leftovers_are_closed_and_resumes_enqueue_closed_peers_again():
    study = optuna.create_study()
    for peer in ("full-compute", "dc3", "full-compute", "dc3", "tg"):  # two processes enqueued at once
        study.enqueue_trial({"x": 0.5}, user_attrs={ATTR.PEER: peer})
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in duplicate_waiting_peers(trials)] == [2, 3]
    assert close_waiting(study, duplicate_waiting_peers(trials)) == 2
    assert close_waiting(study, duplicate_waiting_peers(study.get_trials(deepcopy=False))) == 0
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials].count(TrialState.WAITING) == 3 and len(counted_trials(trials)) == 0
    assert present_peers(trials) == {"full-compute", "dc3", "tg"}
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)  # pops trials 0 and 1
    assert close_leftover_waiting(study, n_trials=3) == 0  # not full yet: the peer waits for its turn
    assert close_leftover_waiting(study, n_trials=2) == 1  # full: `tg` would wait forever
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    assert present_peers(trials) == {"full-compute", "dc3"}  # a resume with more trials enqueues `tg` again


def test_a_trial_killed_before_its_heartbeat_thread_wrote_still_goes_stale(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    silent = study.ask({"x": X})  # started, then killed before any heartbeat: Optuna never fails it
    beaten = study.ask({"x": X})
    record_first_heartbeat(beaten)  # what the objective does first, in its own thread
    time.sleep(2.2)
    stale = storage._get_stale_trial_ids(study._study_id)
    assert beaten._trial_id in stale and silent._trial_id not in stale
