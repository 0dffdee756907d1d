"""Optuna storages for a search shared by several processes or machines, with stale-trial recovery.

Storage strings:

- an RDB URL (``sqlite:///runs/NAME/study.db``, ``postgresql+psycopg2://user:pass@host/db``,
  ``mysql+pymysql://…``), checked by :func:`check_storage_url` (its database driver must be installed) and
  passed to :class:`optuna.storages.RDBStorage` with heartbeats: a running trial records a heartbeat every
  ``heartbeat_interval`` seconds; a trial silent for ``grace_period`` seconds (its worker was killed) is
  failed by the next worker that starts a trial, and
  :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` enqueues it again with the same parameters,
  so it neither blocks the study nor is lost;
- ``journal:PATH``: Optuna's JournalFile storage (an append-only log; works where SQLite file locking does
  not, e.g. NFS), with the same heartbeat mechanism (recorded as a trial system attribute, wall-clock time of
  the worker; keep the machines' clocks in sync).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from typing import Any

from hgc_tune.errors import SearchError

__all__ = ["JOURNAL_PREFIX", "check_storage_url", "default_storage_url", "open_storage", "redact_storage"]

JOURNAL_PREFIX = "journal:"
_HEARTBEAT_ATTR = "hgc:heartbeat"
# PostgreSQL drivers SQLAlchemy knows, in the order a plain ``postgresql://`` URL picks them: psycopg2 first,
# the one the ``postgres`` extra installs (SQLAlchemy 2.1 itself would pick psycopg 3, which is rarely there).
_POSTGRES_DRIVERS: tuple[tuple[str, str], ...] = (("psycopg2", "psycopg2"), ("psycopg", "psycopg"))
# Python module of a database driver -> the pip package that provides it.
_DRIVER_PACKAGES: dict[str, str] = {
    "psycopg2": "psycopg2-binary (pip install 'hgc-tune[postgres]')",
    "psycopg": "psycopg[binary] (psycopg 3)",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
}


def default_storage_url(folder: Any) -> str:
    """The default storage of a search: ``sqlite:///<profile folder>/study.db``."""
    from pathlib import Path

    return f"sqlite:///{Path(folder).resolve() / 'study.db'}"


def redact_storage(url: str | None) -> str | None:
    """The storage string without a password (for reports and logs)."""
    if url is None or url.startswith(JOURNAL_PREFIX) or "://" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_storage_url(url: str) -> str:
    """Check a storage string and return the URL to open: fails at once, before any work.

    A plain ``postgresql://`` URL is given the first installed driver (``postgresql+psycopg2://``, else
    ``postgresql+psycopg://``); any RDB URL whose driver module is not installed is refused with the package
    to install.

    Args:
        url: An RDB URL or ``journal:PATH``.

    Returns:
        The storage string to open (the same, or with the PostgreSQL driver named).

    Raises:
        SearchError: A malformed URL, an unknown database, or a missing driver.
    """
    if url.startswith(JOURNAL_PREFIX):
        if not url[len(JOURNAL_PREFIX) :]:
            raise SearchError(f"`storage` must be journal:PATH with a file path, but got storage={url!r}.")
        return url
    if "://" not in url:
        raise SearchError(
            "`storage` must be a database URL (sqlite:///PATH, postgresql+psycopg2://…, mysql+pymysql://…) "
            f"or journal:PATH, but got storage={url!r}."
        )
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise SearchError(
            f"`storage` is not a database URL: storage={redact_storage(url)!r} ({e})."
        ) from None
    if parsed.drivername == "postgresql":
        # No driver named: pick an installed one explicitly rather than SQLAlchemy's default (psycopg 3).
        found = next((driver for driver, module in _POSTGRES_DRIVERS if _importable(module)), None)
        if found is None:
            raise SearchError(
                f"storage {redact_storage(url)!r} needs a PostgreSQL driver, and none is installed: install "
                f"{_DRIVER_PACKAGES['psycopg2']} and use postgresql+psycopg2://USER:PASSWORD@HOST/DB."
            )
        parsed = parsed.set(drivername=f"postgresql+{found}")
        url = parsed.render_as_string(hide_password=False)
    try:
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError as e:
        raise SearchError(
            f"`storage` names a database SQLAlchemy does not know: storage={redact_storage(url)!r} ({e}); "
            "use sqlite:///PATH, postgresql+psycopg2://…, mysql+pymysql://… or journal:PATH."
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        module = (e.name or "").split(".")[0]
        package = _DRIVER_PACKAGES.get(module, module or "its driver")
        raise SearchError(
            f"storage {redact_storage(url)!r} needs the database driver {module or parsed.drivername!r}, "
            f"which is not installed: install {package}."
        ) from None
    return url


def _journal_storage_class():
    # Optuna's heartbeat is public for RDBStorage only; a journal storage joins it by implementing the
    # private `BaseHeartbeat` (as `RDBStorage` does), which `Study.optimize` and `fail_stale_trials` look
    # for. pyproject.toml pins Optuna to the tested minor release, and
    # tests/search/test_search_storage_contract.py fails when that interface changes.
    from optuna.storages import JournalStorage
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.trial import TrialState

    class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
        """A JournalStorage whose running trials record heartbeats, so a killed worker's trial goes stale."""

        def __init__(
            self,
            backend: Any,
            *,
            heartbeat_interval: int,
            grace_period: int,
            stale_trial_callback: Callable[..., None] | None,
        ) -> None:
            super().__init__(backend)
            self._heartbeat_interval = heartbeat_interval
            self._grace_period = grace_period
            self._stale_trial_callback = stale_trial_callback

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, _HEARTBEAT_ATTR, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            stale = []
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                beat = trial.system_attrs.get(_HEARTBEAT_ATTR)
                if beat is None:
                    continue
                # A retried trial inherits its predecessor's last heartbeat: its own start counts as one.
                started = (
                    trial.datetime_start.timestamp() if isinstance(trial.datetime_start, datetime) else 0.0
                )
                if now - max(float(beat), started) > self._grace_period:
                    stale.append(self.get_trial_id_from_study_id_trial_number(study_id, trial.number))
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self._heartbeat_interval

        def get_heartbeat_stale_trial_callback(self) -> Callable[..., None] | None:
            return self._stale_trial_callback

    return HeartbeatJournalStorage


def open_storage(
    url: str, *, heartbeat_interval: int = 30, grace_period: int | None = None, max_retry: int = 2
):
    """Open an Optuna storage with heartbeats and retry of stale trials.

    Args:
        url: An RDB URL or ``journal:PATH`` (see the module docstring).
        heartbeat_interval: Seconds between heartbeats of a running trial.
        grace_period: Seconds of silence after which a running trial is stale; ``None``: twice the interval.
        max_retry: How often a stale trial is enqueued again.

    Raises:
        SearchError: A string that is neither, or a storage that cannot be opened.
    """
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    grace = grace_period if grace_period is not None else 2 * heartbeat_interval
    with warnings.catch_warnings():
        # Heartbeats and the retry callback are marked experimental in Optuna; they are what we want.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        url = check_storage_url(url)
        if url.startswith(JOURNAL_PREFIX):
            path = url[len(JOURNAL_PREFIX) :]
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

            try:
                backend = JournalFileBackend(path, lock_obj=JournalFileOpenLock(path))
            except OSError as e:
                raise SearchError(f"cannot open the journal storage {path!r}: {e}") from e
            return _journal_storage_class()(
                backend, heartbeat_interval=heartbeat_interval, grace_period=grace, stale_trial_callback=retry
            )
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # Several worker processes share one SQLite file: wait for its lock instead of failing.
            engine_kwargs["connect_args"] = {"timeout": 120}
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=retry,
            )
        except Exception as e:  # sqlalchemy raises its own types for bad URLs, missing drivers, auth
            raise SearchError(f"cannot open the storage {redact_storage(url)!r}: {e}") from e
