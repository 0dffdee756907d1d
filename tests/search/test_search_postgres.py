"""PostgreSQL storage: the URL forms, a missing driver, and a real server shared by two workers.

The server test needs a running PostgreSQL: ``.ci/run`` installs and starts one with ``.ci/postgres.sh``
and passes its URL in ``HGC_TUNE_TEST_POSTGRES_URL``; without that variable the test starts a throwaway
cluster itself where the server is installed, and skips (saying why) where it is not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

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

from hgc_tune.errors import SearchError
from hgc_tune.search import _storage as storage_module
from hgc_tune.search._storage import check_storage_url, redact_storage
from hgc_tune.search._trials import ATTR

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "postgres.sh"


def test_plain_postgresql_url_names_an_installed_driver(monkeypatch):
    monkeypatch.setattr(storage_module, "_importable", lambda module: module == "psycopg2")
    assert (
        check_storage_url("postgresql://u:pw@db.example/hgc") == "postgresql+psycopg2://u:pw@db.example/hgc"
    )
    monkeypatch.setattr(storage_module, "_importable", lambda module: module == "psycopg")
    if importlib.util.find_spec("psycopg") is not None:
        assert (
            check_storage_url("postgresql://u:pw@db.example/hgc")
            == "postgresql+psycopg://u:pw@db.example/hgc"
        )
    else:  # the psycopg 3 form is chosen; its import then fails, naming the package
        with pytest.raises(SearchError, match=r"postgresql\+psycopg://u:\*\*\*@.*install psycopg\[binary\]"):
            check_storage_url("postgresql://u:pw@db.example/hgc")


def test_without_a_driver_the_message_names_the_package(monkeypatch):
    monkeypatch.setattr(storage_module, "_importable", lambda module: False)
    with pytest.raises(SearchError) as info:
        check_storage_url("postgresql://u:pw@db.example/hgc")
    message = str(info.value)
    assert "psycopg2-binary" in message and "hgc-tune[postgres]" in message and "pw" not in message
    assert "postgresql+psycopg2://" in message


def test_a_missing_driver_is_refused_before_the_profile_is_read(tmp_path):
    # pg8000 is a driver SQLAlchemy knows and this project does not install: the error names it at once,
    # although the profile does not exist either.
    if importlib.util.find_spec("pg8000") is not None:
        pytest.skip("pg8000 is installed here")
    start = time.perf_counter()
    done = run_cli(
        *(
            "search",
            "--profile",
            str(tmp_path / "nope"),
            "--budget",
            "0.1",
            "--out",
            str(tmp_path / "p.json"),
        ),
        *("--storage", "postgresql+pg8000://u:secret@127.0.0.1:1/db"),
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "needs the database driver 'pg8000', which is not installed: install pg8000" in done.stderr
    assert "secret" not in done.stderr
    assert time.perf_counter() - start < 30  # an interpreter start, not a profile load


@pytest.fixture(scope="module")
def postgres_url():
    if importlib.util.find_spec("psycopg2") is None:
        pytest.skip("psycopg2 is not installed: pip install 'hgc-tune[postgres]'")
    url = os.environ.get("HGC_TUNE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"no PostgreSQL server: {started.stderr.strip()}")
    found = dict(line.split("=", 1) for line in started.stdout.split())
    try:
        yield found["HGC_TUNE_TEST_POSTGRES_URL"]
    finally:
        subprocess.run([str(SCRIPT), "stop", found["HGC_TUNE_TEST_POSTGRES_DIR"]], timeout=120)


def test_two_workers_share_n_trials_and_a_killed_workers_trial_is_retried(
    postgres_url, tiny_pipe, tmp_path_factory, tmp_path
):
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), tmp_path / "profile")
    study, n = f"pg-{uuid.uuid4().hex[:8]}", 8
    args = search_args(profile, postgres_url, tmp_path / "p.json", n, "--heartbeat", "1", study=study)

    def trials():
        return study_trials(postgres_url, study)

    # One worker, SIGKILLed in the middle of a trial: that trial stays RUNNING with a heartbeat that stops.
    process = subprocess.Popen(
        cli_command(*args), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:

        def mid_trial(found):
            return killable_mid_trial(found, completed=1)

        wait_for(mid_trial, trials, time.monotonic() + 240)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    before = trials()
    completed = {t.number: (t.value, t.params) for t in before if t.state.name == "COMPLETE"}
    killed = [t.number for t in before if t.state.name == "RUNNING"]
    assert len(killed) == 1 and 1 <= len(completed) < n

    # Two workers resume the study against the same server.
    done = run_cli(*args, "--workers", "2", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = trials()
    complete = [t for t in after if t.state.name == "COMPLETE"]
    surplus = [t for t in after if t.user_attrs.get(ATTR.SURPLUS)]
    # exactly N completed trials, none duplicated, nothing left running or waiting
    assert len(complete) == n and len({t.number for t in complete}) == n
    assert sorted(
        t.number for t in [*complete, *surplus, *[t for t in after if t.number in killed]]
    ) == sorted(t.number for t in after)
    assert not [t for t in after if t.state.name in ("RUNNING", "WAITING")]
    peers = [t.user_attrs.get(ATTR.PEER) for t in complete if t.user_attrs.get(ATTR.PEER)]
    assert sorted(peers) == ["deepcache-n3-b0", "full-compute"]
    # what completed before the kill is unchanged; the killed trial failed and ran again with its parameters
    assert all((t.value, t.params) == completed[t.number] for t in complete if t.number in completed) and set(
        completed
    ) <= {t.number for t in complete}
    stale = next(t for t in after if t.number == killed[0])
    retry = [t for t in after if t.system_attrs.get("failed_trial") == killed[0]]
    assert stale.state.name == "FAIL"
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == stale.params
    # the password never reaches the output
    result = json.loads(done.stdout)
    assert result["storage"] == redact_storage(postgres_url) and "hgc-test-secret" not in done.stdout
