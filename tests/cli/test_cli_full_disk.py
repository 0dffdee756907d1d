"""Full disk from the command line: every writer (generate, profile, report; data in tests/data) exits 1
with one line naming the path, leaves no partial file and keeps the previous one. The disk fills when the
data is flushed (``os.fsync`` raising ENOSPC, as delayed allocation reports it), and, where mount works,
on a real 64 KiB tmpfs."""

from __future__ import annotations

import errno
import os

import pytest

from hgc_tune.cli import main
from hgc_tune.errors import DiskFullError, ProfileError

GENERATE = ["generate", "--model", "tiny", "--prompt", "a red square", "--steps", "2", "--seed", "3"]


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_line_naming(err: str, path) -> None:
    lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and str(path) in lines[0] and "ENOSPC" in lines[0], err


@pytest.fixture(scope="module")
def condition_file(tmp_path_factory, condition_image):
    path = tmp_path_factory.mktemp("condition") / "seg.png"
    condition_image.save(path)
    return path


def test_generate_on_a_full_disk_keeps_the_previous_image(tmp_path, condition_file, monkeypatch, capsys):
    out = tmp_path / "a.png"
    args = [*GENERATE, "--condition-image", str(condition_file), "--out", str(out)]
    assert main(args) == 0
    before = out.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(os, "fsync", _full)
    assert main([*args, "--overwrite", "--seed", "4"]) == 1
    _one_line_naming(capsys.readouterr().err, out)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_generate_on_a_small_tmpfs(small_tmpfs, condition_file, capsys):
    (small_tmpfs / "filler").write_bytes(b"x" * 60_000)
    out = small_tmpfs / "a.png"
    assert main([*GENERATE, "--condition-image", str(condition_file), "--out", str(out)]) == 1
    _one_line_naming(capsys.readouterr().err, out)
    assert [p.name for p in small_tmpfs.iterdir()] == ["filler"]


def test_profile_and_report_on_a_full_disk_keep_what_was_there(tmp_path, monkeypatch, capsys):
    profile = tmp_path / "prof"
    args = ["profile", "--model", "tiny", "--condition", "seg", "--dataset", "shapes", "--samples", "1"]
    args += ["--steps", "2", "--no-progress", "--out", str(profile)]
    monkeypatch.setenv("HGC_TUNE_CACHE", str(tmp_path / "cache"))
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in profile.iterdir()}
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _full)
        assert main([*args, "--overwrite", "--seed", "5"]) == 1
        _one_line_naming(capsys.readouterr().err, profile / "profile.safetensors")
        report = tmp_path / "report"
        assert main(["report", "--profile", str(profile), "--samples", "0", "--out", str(report)]) == 1
        _one_line_naming(capsys.readouterr().err, report)
    assert {p.name: p.read_bytes() for p in profile.iterdir()} == before
    assert not (report / "index.html").exists()  # the page is written last: no report claims to be whole


def test_main_turns_a_full_disk_met_anywhere_into_exit_1_and_debug_shows_the_traceback(monkeypatch, capsys):
    def full_disk(args):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/somewhere/out.bin")

    monkeypatch.setattr("hgc_tune.cli.macs.run", full_disk)
    argv = ["macs", "--model", "tiny"]
    assert main(argv) == 1
    _one_line_naming(capsys.readouterr().err.replace("EDQUOT", "ENOSPC"), "/somewhere/out.bin")
    with pytest.raises(OSError):
        main(["--debug", *argv])

    def raises(error):
        def run(args):
            raise error

        return run

    monkeypatch.setattr("hgc_tune.cli.macs.run", raises(DiskFullError("cannot write 'x': no space")))
    assert main(argv) == 1
    monkeypatch.setattr("hgc_tune.cli.macs.run", raises(ProfileError("bad input")))
    assert main(argv) == 2
