"""`hgc-tune data shapes|preview` on a full disk (injected ENOSPC, and a real 64 KiB tmpfs where mount works)
and after a SIGKILL: one line, exit 1, nothing partial, the previous dataset or file unchanged."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from hgc_tune.cli import main
from hgc_tune.data import _benchmark


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HGC_TUNE_CACHE", str(tmp_path / "cache"))


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_line_naming(err: str, path: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "ENOSPC" in lines[0], err


def test_shapes_on_a_full_disk_exit_1_and_keep_the_previous_dataset(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cal"
    assert main(["data", "shapes", "--out", str(out), "--n", "2"]) == 0
    before = (out / "metadata.jsonl").read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(_benchmark, "_save_png", _full)
    assert main(["data", "shapes", "--out", str(out), "--n", "3", "--overwrite", "--json"]) == 1
    _one_line_naming(capsys.readouterr().err, out)
    assert (out / "metadata.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal"]  # no temporary folder left


def test_preview_on_a_full_disk_exit_1_and_keep_the_previous_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "preview.png"
    assert main(["data", "preview", "--out", str(out), "--n", "1"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(Image.Image, "save", _full)
    assert main(["data", "preview", "--out", str(out), "--n", "2", "--overwrite"]) == 1
    _one_line_naming(capsys.readouterr().err, out)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["preview.png"]


def test_shapes_and_preview_on_a_small_tmpfs(small_tmpfs, capsys):
    assert main(["data", "shapes", "--out", str(small_tmpfs / "cal"), "--n", "16", "--json"]) == 1
    _one_line_naming(capsys.readouterr().err, small_tmpfs / "cal")
    assert main(["data", "preview", "--out", str(small_tmpfs / "p.png"), "--n", "12"]) == 1
    _one_line_naming(capsys.readouterr().err, small_tmpfs / "p.png")
    assert list(small_tmpfs.iterdir()) == []


def test_a_killed_shapes_run_leaves_nothing_a_rerun_does_not_clean(tmp_path):
    out = tmp_path / "cal"
    code = "import sys; from hgc_tune.cli import main; sys.exit(main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "data", "shapes", "--out", str(out), "--n", "2000", "--json"]
    env = {**os.environ, "HGC_TUNE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".cal.*/image/00001.png")) and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".cal.")]
    assert len(left) == 1 and not out.exists()  # the killed run's temporary folder, and no dataset
    assert main(["data", "shapes", "--out", str(out), "--n", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["cal"]
