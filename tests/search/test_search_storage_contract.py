"""Contract with Optuna's private heartbeat interface, which the journal storage implements.

Optuna offers heartbeats publicly for ``RDBStorage`` only. ``hgc_tune/search/_storage.py`` gives
``JournalStorage`` the same by implementing ``optuna.storages._heartbeat.BaseHeartbeat``; ``Study.optimize``
starts a heartbeat thread for any storage that does, and ``optuna.storages.fail_stale_trials`` asks it for
its stale trials. pyproject.toml pins Optuna to the tested minor release; when a new release changes this
interface, these tests fail and say what to adapt.
"""

from __future__ import annotations

import inspect
import time

import optuna
import pytest
from optuna.storages import _heartbeat

from hgc_tune.search._storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def test_the_private_heartbeat_interface_is_the_one_implemented():
    assert _heartbeat.BaseHeartbeat.__abstractmethods__ == {
        "record_heartbeat",
        "_get_stale_trial_ids",
        "get_heartbeat_interval",
        "get_heartbeat_stale_trial_callback",
    }
    assert list(inspect.signature(_heartbeat.BaseHeartbeat._get_stale_trial_ids).parameters) == [
        "self",
        "study_id",
    ]


def test_optuna_runs_the_journal_heartbeat(tmp_path):
    storage = open_storage(f"journal:{tmp_path / 'j.log'}", heartbeat_interval=1)
    assert isinstance(storage, _heartbeat.BaseHeartbeat)
    assert _heartbeat.is_heartbeat_enabled(storage)
    study = optuna.create_study(study_name="s", storage=storage)
    seen: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        # The heartbeat thread records once as the trial starts, then every interval while it runs.
        deadline = time.monotonic() + 5.0
        while not seen and time.monotonic() < deadline:
            attrs = study.get_trials(deepcopy=False)[-1].system_attrs
            if "hgc:heartbeat" in attrs:
                seen.append(attrs)
            time.sleep(0.02)
        return 0.0

    study.optimize(objective, n_trials=1)
    assert len(seen) == 1 and isinstance(seen[0]["hgc:heartbeat"], float)
