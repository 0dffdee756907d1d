"""Storages that cannot be opened: bounded time, one line, the password redacted, no SQLAlchemy links;
a server that is down or silent is an environment failure (exit 1); a bad URL, folder or file bad input."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _search_fixtures import copy_profile, one_torch_thread  # noqa: F401 (an autouse fixture)

from hgc_tune.cli import main
from hgc_tune.errors import ResourceError, SearchError, StorageError, StorageUnreachableError
from hgc_tune.search import SearchConfig
from hgc_tune.search import _storage as storage_module
from hgc_tune.search._storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
PASSWORD = "s3cret-pw"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentServer:
    """A local socket on 127.0.0.1 that accepts connections and never answers; it closes itself after
    ``lifetime`` seconds (a bounded loop), so a test that fails cannot leave it behind."""

    def __init__(self, lifetime: float = 30.0) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._end = time.monotonic() + lifetime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._end:
            try:
                self.accepted.append(self.socket.accept()[0])
            except OSError:
                continue
        for conn in self.accepted:
            conn.close()
        self.socket.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Background on this error" not in text and "sqlalche.me" not in text, text
    assert PASSWORD not in text, text
    return text


def _opens_within(url: str, timeout: float, limit: float, expected: type[BaseException]) -> str:
    start = time.monotonic()
    with pytest.raises(expected) as info:
        open_storage(url, timeout=timeout)
    assert time.monotonic() - start < limit
    return _one_line(info.value)


def test_a_closed_port_and_no_server_on_the_socket_are_unreachable_in_one_line():
    pytest.importorskip("psycopg2")
    port = _closed_port()
    for url in (
        f"postgresql://me:{PASSWORD}@127.0.0.1:{port}/db",
        f"postgresql+psycopg2://me:{PASSWORD}@127.0.0.1:{port}/db",
        f"postgresql+psycopg2://me:{PASSWORD}@:1/db",  # no host: the local socket, where none listens
    ):
        text = _opens_within(url, 2, 10, StorageUnreachableError)
        assert text.startswith("cannot reach the storage") and "me:***@" in text
        assert "--storage-timeout" in text


def test_a_server_that_accepts_and_never_answers_fails_within_the_timeout(silent_server):
    pytest.importorskip("psycopg2")
    url = f"postgresql+psycopg2://me:{PASSWORD}@127.0.0.1:{silent_server.port}/db"
    text = _opens_within(url, 2, 2 + 6, StorageUnreachableError)
    assert "me:***@" in text and silent_server.accepted  # it did connect: the silence is what timed out


def test_a_driver_without_a_timeout_is_bounded_by_the_watchdog(silent_server, monkeypatch):
    pytest.importorskip("psycopg2")
    monkeypatch.setattr(storage_module, "_CONNECT_TIMEOUT_ARGS", {})  # as a driver we know no flag of
    url = f"postgresql+psycopg2://me:{PASSWORD}@127.0.0.1:{silent_server.port}/db"
    text = _opens_within(url, 1, 1 + storage_module._WATCHDOG_SLACK + 3, StorageUnreachableError)
    assert "no answer within 1 s" in text


def test_unreachable_is_an_environment_failure_and_a_search_error():
    assert issubclass(StorageUnreachableError, ResourceError)
    assert issubclass(StorageUnreachableError, StorageError) and issubclass(StorageError, SearchError)


def test_a_port_outside_1_to_65535_is_refused_before_any_connection():
    text = _opens_within(f"postgresql+psycopg2://me:{PASSWORD}@127.0.0.1:99999/db", 10, 2, StorageError)
    assert "port" in text and "99999" in text and "1..65535" in text
    assert not isinstance(StorageError(text), ResourceError)


def test_sqlite_in_a_missing_folder_a_folder_and_a_png_are_refused_by_name(tmp_path):
    text = _opens_within(f"sqlite:///{tmp_path / 'missing' / 'study.db'}", 10, 5, StorageError)
    assert "does not exist" in text and str(tmp_path / "missing") in text
    (tmp_path / "adir").mkdir()
    text = _opens_within(f"sqlite:///{tmp_path / 'adir'}", 10, 5, StorageError)
    assert "not a regular file" in text
    png = tmp_path / "picture.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png)
    before = png.read_bytes()
    text = _opens_within(f"sqlite:///{png}", 10, 5, StorageError)
    assert "not a SQLite database" in text and not isinstance(StorageError(text), ResourceError)
    assert png.read_bytes() == before


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder the test process cannot write: mode 0555 for a user, a read-only tmpfs for root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)])
    if mounted.returncode != 0:
        pytest.skip("root ignores 0555 and mount -t tmpfs -o ro is not permitted here")
    yield folder
    subprocess.run(["umount", "-l", str(folder)])


def test_a_read_only_folder_is_named_as_such(read_only_folder):
    text = _opens_within(f"sqlite:///{read_only_folder / 'study.db'}", 10, 5, StorageError)
    assert "is read-only" in text and str(read_only_folder) in text


def test_the_timeout_is_a_checked_setting():
    assert SearchConfig(budget=0.1).storage_timeout == 10.0
    for bad in (0, -1, float("nan"), "5"):
        with pytest.raises(SearchError, match="storage_timeout"):
            SearchConfig(budget=0.1, storage_timeout=bad)


def _search(profile: Path, out: Path, *extra: str) -> list[str]:
    return [
        "search",
        "--profile",
        str(profile),
        "--budget",
        "0.05",
        "--metric",
        "ssim",
        "--trials",
        "1",
        "--peers",
        "none",
        "--heldout-samples",
        "0",
        "--test-samples",
        "0",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def test_the_cli_fails_before_loading_the_pipeline_with_exit_1_or_2(
    tiny_pipe, tmp_path_factory, tmp_path, capsys, monkeypatch, silent_server
):
    pytest.importorskip("psycopg2")
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), tmp_path / "profile")

    def no_pipeline(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the storage was opened")

    monkeypatch.setattr("hgc_tune.cli.search._load_pipeline", no_pipeline)
    cases = [
        (f"postgresql://me:{PASSWORD}@127.0.0.1:{_closed_port()}/db", 1, "cannot reach"),
        (f"postgresql+psycopg2://me:{PASSWORD}@127.0.0.1:{silent_server.port}/db", 1, "cannot reach"),
        (f"postgresql+psycopg2://me:{PASSWORD}@127.0.0.1:99999/db", 2, "1..65535"),
        (f"sqlite:///{tmp_path / 'missing' / 'study.db'}", 2, "does not exist"),
    ]
    for url, code, words in cases:
        start = time.monotonic()
        assert main(_search(profile, tmp_path / "p.json", "--storage", url, "--storage-timeout", "2")) == code
        assert time.monotonic() - start < 15
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and PASSWORD not in err, err
        assert "Background on this error" not in err
    assert not (tmp_path / "p.json").exists()


def test_the_message_comes_from_the_driver_through_optunas_wrapping():
    import optuna
    import sqlalchemy.exc

    url = f"postgresql+psycopg2://me:{PASSWORD}@db.example:5432/hgc"

    def wrapped(driver_message: str) -> BaseException:
        inner = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(driver_message))
        try:
            raise optuna.exceptions.StorageInternalError("An exception during the commit.") from inner
        except optuna.exceptions.StorageInternalError as e:
            return e

    down = storage_module.storage_error(wrapped("could not connect: Connection timed out\n\tIs it up?"), url)
    assert isinstance(down, StorageUnreachableError) and "Connection timed out" in _one_line(down)
    refused = storage_module.storage_error(
        wrapped(f'FATAL:  password authentication failed for user "me" ({PASSWORD})'), url, study="s"
    )
    text = _one_line(refused)
    assert type(refused) is StorageError and "authentication failed" in text and "study 's'" in text
