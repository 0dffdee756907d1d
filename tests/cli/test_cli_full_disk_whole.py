"""Full disk, outputs made of several files: a failed `profile` leaves no folder it created, a failed `report`
no partial report (and the previous report as it was), a failed `search --out` neither a new policy nor a new
Pareto file beside the old one. The disk fills when one file is flushed (``os.fsync`` raising ENOSPC for it),
or, for the search, when the policy replaces the old one after the Pareto file did."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hgc_tune.cli import main

PROFILE = ["profile", "--model", "tiny", "--condition", "seg", "--dataset", "shapes", "--samples", "1"]
PROFILE += ["--steps", "2", "--no-progress"]


def _full_for(name: str):
    """``os.fsync`` that fails with ENOSPC for the temporary file of ``name`` only."""
    real_fsync = os.fsync

    def fsync(fd):
        if f".{name}.hgc-tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    return fsync


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_line_naming(err: str, path) -> None:
    lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and str(path) in lines[0] and "ENOSPC" in lines[0], err


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` by relative name: a file's bytes, ``None`` for a folder."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiled")
    os.environ["HGC_TUNE_CACHE"] = str(root / "cache")
    try:
        assert main([*PROFILE, "--out", str(root / "prof")]) == 0
    finally:
        del os.environ["HGC_TUNE_CACHE"]
    return root / "prof"


def test_a_failed_profile_removes_the_folders_it_created_and_nothing_else(
    tmp_path, profiled, monkeypatch, capsys
):
    monkeypatch.setenv("HGC_TUNE_CACHE", str(profiled.parent / "cache"))
    monkeypatch.setattr(os, "fsync", _full_for("profile.json"))  # the tensors are flushed, the metadata not
    new = tmp_path / "runs" / "a" / "prof"
    assert main([*PROFILE, "--out", str(new)]) == 1
    _one_line_naming(capsys.readouterr().err, new / "profile.json")
    assert list(tmp_path.iterdir()) == []  # runs/a/prof, all three created by the save, are gone

    held = tmp_path / "held"  # a folder that was there, with a file of someone else's: both stay
    held.mkdir()
    (held / "notes.txt").write_text("mine")
    assert main([*PROFILE, "--out", str(held)]) == 1
    _one_line_naming(capsys.readouterr().err, held / "profile.json")
    assert _tree(tmp_path) == {"held": None, "held/notes.txt": b"mine"}


def test_a_failed_report_leaves_no_partial_report_and_the_previous_one_as_it_was(
    tmp_path, profiled, monkeypatch, capsys
):
    report = tmp_path / "report"
    args = ["report", "--profile", str(profiled), "--samples", "0", "--out", str(report)]
    with monkeypatch.context() as m:
        # The second figure fails: before, the first one was left, whole, with no page.
        m.setattr(os, "fsync", _full_for("similarity_controlnet.png"))
        assert main(args) == 1
        _one_line_naming(capsys.readouterr().err, report / "similarity_controlnet.png")
        assert list(tmp_path.iterdir()) == []
    assert main(args) == 0
    before = _tree(tmp_path)
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _full_for("report.json"))  # every figure written, the summary not
        assert main([*args, "--overwrite"]) == 1
        _one_line_naming(capsys.readouterr().err, report / "report.json")
    assert _tree(tmp_path) == before
    assert main([*args, "--overwrite"]) == 0  # and with space, the report is replaced


def test_a_report_folder_holding_other_files_is_refused_not_replaced(tmp_path, profiled, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["report", "--profile", str(profiled), "--samples", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'notes.txt'" in err and "choose another folder" in err and len(err.strip().splitlines()) == 1
    assert _tree(tmp_path) == {"mine": None, "mine/notes.txt": b"mine"}


def test_a_failed_search_keeps_the_previous_policy_and_pareto_file_as_a_pair(
    tmp_path, profiled, monkeypatch, capsys
):
    import shutil

    profile = tmp_path / "prof"
    shutil.copytree(profiled, profile)
    out = tmp_path / "policies" / "p.json"
    pareto = out.with_name("p.pareto.json")
    args = ["search", "--profile", str(profile), "--budget", "0.9", "--metric", "ssim", "--trials", "2"]
    args += ["--peers", "deepcache-n3-b0", "--heldout-samples", "0", "--confidence", "0", "--no-progress"]
    args += ["--out", str(out)]
    # The first search writes nothing when the policy cannot be flushed: no Pareto file alone either.
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _full_for("p.json"))
        assert main(args) == 1
        _one_line_naming(capsys.readouterr().err, out)
        assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert main(args) == 0
    assert out.is_file() and pareto.is_file()
    before = _tree(out.parent)
    capsys.readouterr()
    more = [*args, "--overwrite", "--trials", "3"]  # the study resumes: a new Pareto file (3 trials)
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _full_for("p.json"))  # the Pareto file is flushed, the policy not
        assert main(more) == 1
        _one_line_naming(capsys.readouterr().err, out)
    assert _tree(out.parent) == before
    real_replace = os.replace

    def replace(src, dst):  # the Pareto file moved in, then the policy's move fails
        if str(dst) == str(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        assert main(more) == 1
        _one_line_naming(capsys.readouterr().err, out)
    assert _tree(out.parent) == before  # the new Pareto file was taken back
    assert main(more) == 0
    assert pareto.read_bytes() != before["p.pareto.json"]
