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

A storage that cannot be opened fails in bounded time (``timeout``, the ``--storage-timeout`` flag: the
driver's connect timeout, and a watchdog for drivers without one) with one line, the password redacted:
:class:`~hgc_tune.errors.StorageUnreachableError` for a server that refuses the connection or does not
answer (the CLI exits 1), :class:`~hgc_tune.errors.StorageError` for a URL, folder or file that cannot
work (a missing or read-only folder, a file that is no SQLite database; exit 2).
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hgc_tune.errors import SearchError, StorageError, StorageUnreachableError

if TYPE_CHECKING:
    from optuna.trial import Trial

__all__ = [
    "DEFAULT_TIMEOUT",
    "JOURNAL_PREFIX",
    "check_storage_url",
    "default_storage_url",
    "open_storage",
    "record_first_heartbeat",
    "redact_storage",
    "storage_error",
]

DEFAULT_TIMEOUT = 10.0

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


# Database driver (SQLAlchemy's name) -> its connect argument for a timeout in seconds.
_CONNECT_TIMEOUT_ARGS: dict[str, str] = {
    "psycopg2": "connect_timeout",
    "psycopg": "connect_timeout",
    "pg8000": "timeout",
    "asyncpg": "timeout",
    "pymysql": "connect_timeout",
    "mysqldb": "connect_timeout",
    "mysqlconnector": "connection_timeout",
}
# Beyond the driver's own timeout, the watchdog gives up on a storage that has still not opened.
_WATCHDOG_SLACK = 3.0
# A server's refusal for a reason the user must fix (exit 2), not an unreachable server (exit 1).
_REFUSALS = (
    "authentication failed",
    "access denied",
    "does not exist",
    "no pg_hba.conf entry",
    "unknown database",
)
# Several processes creating one database's tables at once: the loser sees the winner's tables.
_CREATE_RACE = ("already exists", "unique constraint", "duplicate key", "duplicate entry")


def default_storage_url(folder: Any) -> str:
    """The default storage of a search: ``sqlite:///<profile folder>/study.db``."""
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
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise StorageError(
            f"the port of `storage` must be in 1..65535, but got {parsed.port!r} in "
            f"storage={redact_storage(url)!r}."
        )
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_path(parsed.database, url)
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


def _sqlite_file(database: str | None) -> Path | None:
    """The file of a SQLite URL's database (``None``: in memory)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _check_sqlite_path(database: str | None, url: str) -> None:
    path = _sqlite_file(database)
    if path is None:
        return
    folder = path.parent
    if not folder.is_dir():
        raise StorageError(
            f"the folder of the SQLite storage {str(folder)!r} does not exist (storage={url!r}); create it "
            "or pass --storage with an existing folder."
        )
    if path.exists() and not path.is_file():
        raise StorageError(
            f"the SQLite storage {str(path)!r} is not a regular file (storage={url!r}); pass --storage "
            "sqlite:///PATH with a file path."
        )


def _check_writable(path: Path, url: str) -> None:
    """SQLite writes its file and a journal beside it: a read-only folder (or file) fails here, by name."""
    try:
        with tempfile.TemporaryFile(dir=path.parent, prefix=".hgc-write-check-"):
            pass
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise StorageError(
            f"the folder of the SQLite storage {str(path.parent)!r} is read-only (storage={url!r}); make it "
            "writable or pass --storage sqlite:///PATH in a writable folder."
        ) from None
    if path.is_file() and not os.access(path, os.W_OK):
        raise StorageError(
            f"the SQLite storage {str(path)!r} is read-only (storage={url!r}); make it writable or pass "
            "--storage with another file."
        )


def _reason(error: BaseException, url: str) -> str:
    """The driver's own words for ``error`` on one line: no SQL, no SQLAlchemy links, no password."""
    cause = getattr(_database_error(error), "orig", None) or error
    lines = [line.strip() for line in str(cause).splitlines()]
    text = next((line for line in lines if line and not line.startswith(("(Background", "[SQL"))), "")
    text = text or type(cause).__name__
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    return text.rstrip(".")


def _database_error(error: BaseException) -> BaseException:
    """The SQLAlchemy error behind ``error`` (Optuna wraps some in its own), else ``error``."""
    cause: BaseException | None = error
    while cause is not None:
        if hasattr(cause, "orig"):
            return cause
        cause = cause.__cause__
    return error


def _password(url: str) -> str | None:
    if "://" not in url:
        return None
    try:
        return urllib.parse.urlsplit(url).password
    except ValueError:
        return None


def storage_error(
    error: BaseException, url: str, *, timeout: float = DEFAULT_TIMEOUT, study: str | None = None
) -> StorageError:
    """The one-line :class:`~hgc_tune.errors.StorageError` for a failure to open or use the storage ``url``:
    :class:`~hgc_tune.errors.StorageUnreachableError` when its server refused or did not answer.

    Args:
        error: What the driver, SQLAlchemy or Optuna raised.
        url: The storage string (its password is redacted in the message).
        timeout: The connect timeout in force, in seconds (for the message).
        study: The study being opened, if any (for the message).
    """
    if isinstance(error, StorageError):
        return error
    shown = redact_storage(url)
    what = f"study {study!r} in the storage {shown!r}" if study else f"the storage {shown!r}"
    reason = _reason(error, url)
    lowered = reason.lower()
    sqlite = url.startswith("sqlite")
    if sqlite and "not a database" in lowered:
        return StorageError(
            f"cannot open {what}: the file is not a SQLite database ({reason}); pass --storage with a new "
            "file or a study.db a search wrote."
        )
    if sqlite and "readonly" in lowered.replace("-", "").replace(" ", ""):
        return StorageError(f"cannot open {what}: it is read-only ({reason}); make it writable or move it.")
    if not sqlite and not url.startswith(JOURNAL_PREFIX) and _unreachable(error, lowered):
        return StorageUnreachableError(
            f"cannot reach {what}: {reason} (connect timeout {timeout:g} s); check that the database server "
            "runs at that host and port, or raise --storage-timeout."
        )
    return StorageError(f"cannot open {what}: {reason}.")


def _unreachable(error: BaseException, lowered: str) -> bool:
    if any(words in lowered for words in _REFUSALS):
        return False
    import sqlalchemy.exc

    return isinstance(
        _database_error(error), sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError | TimeoutError
    )


def _within(timeout: float, url: str, open_: Callable[[], Any]) -> Any:
    """``open_()``, given up after ``timeout`` plus a little: a server that accepts the connection and never
    answers must not hang the search, whatever its driver does about timeouts."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["storage"] = open_()
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    worker = threading.Thread(target=run, name="hgc-open-storage", daemon=True)
    worker.start()
    worker.join(timeout + _WATCHDOG_SLACK)
    if worker.is_alive():
        raise StorageUnreachableError(
            f"cannot reach the storage {redact_storage(url)!r}: no answer within {timeout:g} s; check that "
            "the database server runs at that host and port, or raise --storage-timeout."
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["storage"]


def _serialise_transactions(engine: Any) -> None:
    """Make each transaction on a SQLite file take its write lock when it begins (``BEGIN IMMEDIATE``).

    Python's sqlite3 starts a transaction only at the first write, so Optuna's read-then-write steps (pop a
    waiting trial: read WAITING, write RUNNING; number a new trial) interleave between processes: two
    searches on one file both ran the same waiting trial, and the second could not record it. With the lock
    taken at ``BEGIN``, each step is atomic; the other process waits for the lock (the ``timeout`` above).
    """
    from sqlalchemy import event

    def no_implicit_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's BEGIN below is then the only one

    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", no_implicit_transactions)
    event.listen(engine, "begin", begin_immediate)
    engine.dispose()  # connections opened before the listeners would not have them


def record_first_heartbeat(trial: Trial) -> None:
    """Record a running trial's first heartbeat now, in the caller's thread, before any work.

    Optuna's heartbeat thread records it concurrently, and a worker killed before that thread got the
    storage's lock leaves a RUNNING trial with no heartbeat at all, which never goes stale: every later
    search would wait for it forever. Recorded here, a trial that does work always goes stale once its
    worker dies. A storage without heartbeats (in memory) records nothing.
    """
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = trial.study._storage  # Optuna's Trial has no public handle on its storage (pinned Optuna)
    if is_heartbeat_enabled(storage):
        # is_heartbeat_enabled holds for a BaseHeartbeat only.
        cast(BaseHeartbeat, storage).record_heartbeat(trial._trial_id)


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
    url: str,
    *,
    heartbeat_interval: int = 30,
    grace_period: int | None = None,
    max_retry: int = 2,
    timeout: float = DEFAULT_TIMEOUT,
):
    """Open an Optuna storage with heartbeats and retry of stale trials.

    Args:
        url: An RDB URL or ``journal:PATH`` (see the module docstring).
        heartbeat_interval: Seconds between heartbeats of a running trial.
        grace_period: Seconds of silence after which a running trial is stale; ``None``: twice the interval.
        max_retry: How often a stale trial is enqueued again.
        timeout: Seconds to wait for a database server to connect and answer.

    Raises:
        SearchError: A string that is neither.
        StorageError: A storage that cannot be opened (one line, the password redacted).
        StorageUnreachableError: A server that refuses the connection or does not answer within ``timeout``.
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
                raise StorageError(f"cannot open the journal storage {path!r}: {e}") from e
            return _journal_storage_class()(
                backend, heartbeat_interval=heartbeat_interval, grace_period=grace, stale_trial_callback=retry
            )
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite:
            # Several worker processes share one SQLite file: wait for its lock instead of failing.
            connect_args: dict[str, Any] = {"timeout": 120}
            file = _sqlite_file(parsed.database)
            if file is not None:
                _check_writable(file, url)
        else:
            name = _CONNECT_TIMEOUT_ARGS.get(parsed.get_driver_name())
            connect_args = {} if name is None else {name: max(1, round(timeout))}

        def open_rdb():
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": connect_args},
                heartbeat_interval=heartbeat_interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=retry,
            )

        for attempt in range(3):
            try:
                if not sqlite:
                    return _within(timeout, url, open_rdb)
                storage = open_rdb()
                _serialise_transactions(storage.engine)
                return storage
            except StorageError:
                raise
            except Exception as e:  # sqlalchemy raises its own types for bad URLs, missing drivers, auth
                if attempt < 2 and any(words in str(e).lower() for words in _CREATE_RACE):
                    time.sleep(0.2 * (attempt + 1))  # another process created the tables meanwhile
                    continue
                raise storage_error(e, url, timeout=timeout) from e
