"""The one atomic writer: whole files or nothing, mode 0644, stale temporary files of dead writers removed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hgc_tune._atomic import atomic_write, atomic_write_text, remove_stale_temporaries


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
