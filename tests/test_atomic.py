"""The one atomic writer: whole files or nothing, mode 0644, stale temporary files of dead writers removed,
a full disk one error naming the file (injected ENOSPC everywhere; a real 64 KiB tmpfs where mount works)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from hgc_tune import _atomic as atomic
from hgc_tune._atomic import (
    atomic_folder,
    atomic_write,
    atomic_write_files,
    atomic_write_text,
    created_folder,
    remove_stale_temporaries,
)
from hgc_tune.errors import DiskFullError, ResourceError


def test_new_files_are_0644_whatever_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o077)
    try:
        path = atomic_write_text(tmp_path / "sub" / "a.json", "{}\n")
    finally:
        os.umask(old)
    assert path.read_text() == "{}\n" and oct(path.stat().st_mode & 0o777) == "0o644"
    path.chmod(0o600)
    atomic_write_text(path, "[]\n")
    assert path.read_text() == "[]\n" and oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_only_temporaries_of_dead_processes_and_legacy_folders_are_removed(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / f".a.json.hgc-tmp-{child.pid}-x1.tmp"
    live = tmp_path / f".a.json.hgc-tmp-{os.getpid()}-x2.tmp"
    legacy = tmp_path / ".old-tmp-123"
    for path in (dead, live, tmp_path / "a.json", tmp_path / ".hidden"):
        path.write_text("x")
    legacy.mkdir()
    removed = remove_stale_temporaries(tmp_path, legacy_prefixes=(".old-tmp-",))
    assert sorted(p.name for p in removed) == sorted([dead.name, legacy.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "a.json", ".hidden"])


def test_the_next_write_of_a_file_removes_its_killed_writers_temporary(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / f".policy.json.hgc-tmp-{child.pid}-x1.tmp"
    other = tmp_path / f".other.json.hgc-tmp-{child.pid}-x2.tmp"
    dead.write_text("{")
    other.write_text("{")
    atomic_write_text(tmp_path / "policy.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, "policy.json"])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_error_naming_the_file_and_the_old_file_stays(tmp_path, code):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def full(tmp):
        tmp.write_text("half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(DiskFullError, match=r"cannot write '.*a\.txt': .*" + errno.errorcode[code]) as info:
        atomic_write(path, full)
    assert "\n" not in str(info.value) and isinstance(info.value, ResourceError)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_full_disk_reported_by_a_library_in_its_own_words_is_recognised(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"

    class LibraryError(Exception):
        pass

    def safetensors_like(tmp):
        raise LibraryError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(DiskFullError, match="ENOSPC"):
        atomic_write(path, safetensors_like)

    def torch_like(tmp):  # torch.save on a full disk: "unexpected pos", no errno
        tmp.write_bytes(b"x")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(atomic, "_nearly_full", lambda folder: True)
    with pytest.raises(DiskFullError, match="ENOSPC"):
        atomic_write(path, torch_like)
    monkeypatch.setattr(atomic, "_nearly_full", lambda folder: False)
    with pytest.raises(RuntimeError, match="unexpected pos"):  # with space left it is not a full disk
        atomic_write(path, torch_like)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_written_whole_or_not_at_all(tmp_path):
    target = tmp_path / "data"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(DiskFullError, match="data"):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (target / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["data"]
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_a_full_disk_in_a_folder_names_the_file_where_it_would_have_been(tmp_path):
    target = tmp_path / "report"
    with pytest.raises(DiskFullError) as caught:
        with atomic_folder(target) as tmp:
            atomic_write(tmp / "a.png", lambda p: _raise(OSError(errno.ENOSPC, "No space left on device")))
    assert str(target / "a.png") in str(caught.value) and ".hgc-tmp-" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def _raise(error: BaseException):
    raise error


def _write(text: str):
    return lambda p: p.write_text(text)


def test_files_written_as_one_all_change_or_none(tmp_path, monkeypatch):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    atomic_write_files({a: _write("a0"), b: _write("b0")})
    b.chmod(0o600)
    # The second content cannot be flushed: nothing was replaced yet.
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError, match=r"b\.json.*ENOSPC"):
        atomic_write_files({a: _write("a1"), b: _write("b1"), c: _write("c1")})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
    assert (a.read_text(), b.read_text()) == ("a0", "b0")
    # The third move fails after two moved: those two get their old files back, a new one is removed.
    real_replace = os.replace

    def replace(src, dst):
        if str(dst) == str(b):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(DiskFullError, match=r"b\.json.*EDQUOT"):
        atomic_write_files({a: _write("a1"), c: _write("c1"), b: _write("b1")})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
    assert (a.read_text(), b.read_text()) == ("a0", "b0")
    written = atomic_write_files({a: _write("a1"), b: _write("b1"), c: _write("c1")})
    assert [p.read_text() for p in written] == ["a1", "b1", "c1"]
    assert oct(b.stat().st_mode & 0o777) == "0o600" and oct(c.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]


def test_a_created_folder_is_removed_on_failure_but_never_one_that_was_there_or_holds_a_file(tmp_path):
    with pytest.raises(ValueError):
        with created_folder(tmp_path / "x" / "y" / "z"):
            raise ValueError("failed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError):
        with created_folder(tmp_path / "x" / "y" / "z") as folder:
            (folder.parent / "other.txt").write_text("another writer's")
            raise ValueError("failed")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["x", "x/y", "x/y/other.txt"]
    with created_folder(tmp_path / "x" / "new") as folder:
        pass
    assert folder.is_dir()


def test_a_killed_folder_writer_leaves_nothing_the_next_write_does_not_clean(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    target = tmp_path / "data"
    (tmp_path / f".data.hgc-tmp-{child.pid}-0a1b2c3d").mkdir()  # killed while filling its folder
    (tmp_path / f".data.tmp-{child.pid}-0a1b2c3d").mkdir()  # the same, by an older version
    aside = tmp_path / f".data.hgc-old-{child.pid}-0a1b2c3d"  # killed between its two renames
    aside.mkdir()
    (aside / "a.txt").write_text("old")
    live = tmp_path / f".data.hgc-tmp-{os.getpid()}-0a1b2c3d"
    live.mkdir()
    with atomic_folder(target, legacy_marks=(".tmp-",)) as tmp:
        assert (target / "a.txt").read_text() == "old"  # put back before anything else
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data", live.name])
    assert [p.name for p in target.iterdir()] == ["b.txt"]


def test_on_a_small_tmpfs_every_kind_of_writer_fails_cleanly(small_tmpfs):
    """The real thing (a 64 KiB tmpfs): bytes, a PNG, torch.save and safetensors, each on a full disk."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    path = atomic_write_text(small_tmpfs / "a.bin", "old")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8))
    big = {"w": torch.rand(100_000)}
    writers = [
        lambda p: p.write_bytes(os.urandom(200_000)),
        lambda p: noise.save(p, format="PNG"),
        lambda p: torch.save(big, p),
        lambda p: save_file(big, str(p)),
    ]
    for write in writers:
        with pytest.raises(DiskFullError, match=r"a\.bin.*ENOSPC"):
            atomic_write(path, write)
        assert path.read_text() == "old" and [p.name for p in small_tmpfs.iterdir()] == ["a.bin"]
    with pytest.raises(DiskFullError, match="ENOSPC"):
        with atomic_folder(small_tmpfs / "d") as tmp:
            (tmp / "x").write_bytes(os.urandom(200_000))
    assert [p.name for p in small_tmpfs.iterdir()] == ["a.bin"]
