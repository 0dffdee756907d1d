"""Shared CLI checks: bad numbers and impossible output paths fail at once (one line, exit 2, no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hgc_tune.cli import main
from hgc_tune.cli._checks import check_output
from hgc_tune.errors import HgcTuneError

# Every case runs in one fresh interpreter, which reports each one's exit status, its stderr and whether
# torch had been imported by then (it must not: the check comes before any loading or compute).
_RUNNER = """
import contextlib, io, json, sys, time
from hgc_tune.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    results.append({"code": code, "err": err.getvalue(), "seconds": time.perf_counter() - start,
                    "torch": "torch" in sys.modules})
print(json.dumps(results))
"""


def _run_all(cases: list[list[str]]) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(cases)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def _assert_refused_at_once(cases: list[tuple[list[str], str]]) -> None:
    results = _run_all([argv for argv, _ in cases])
    for (argv, expected), result in zip(cases, results):
        assert result["code"] == 2, (argv, result)
        assert result["err"].count("\n") == 1 and "Traceback" not in result["err"], (argv, result)
        assert expected in result["err"], (argv, expected, result["err"])
        assert not result["torch"], argv
        assert result["seconds"] < 1.0, (argv, result)


@pytest.fixture
def places(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.png").write_bytes(b"old")
    (tmp_path / "policy.json").write_text("{}")
    (tmp_path / "only-pareto.pareto.json").write_text("{}")
    (tmp_path / "profiled").mkdir()
    (tmp_path / "profiled" / "profile.json").write_text("{}")
    (tmp_path / "reported").mkdir()
    (tmp_path / "reported" / "index.html").write_text("")
    return {
        "dir": str(tmp_path / "folder"),
        "file": str(tmp_path / "file.png"),
        "below_file": str(tmp_path / "file.png" / "x.png"),
        "policy": str(tmp_path / "policy.json"),
        "pareto_only": str(tmp_path / "only-pareto.json"),
        "profiled": str(tmp_path / "profiled"),
        "reported": str(tmp_path / "reported"),
        "new": str(tmp_path / "new" / "out.png"),
    }


def test_output_paths_are_checked_before_any_work(places):
    p = places
    gen = ["generate", "--prompt", "x", "--condition-image", p["file"], "--steps", "2"]
    search = ["search", "--profile", p["dir"], "--budget", "0.1"]
    report = ["report", "--profile", p["dir"]]
    _assert_refused_at_once(
        [
            ([*gen, "--out", "/proc/x.png"], "cannot create files in '/proc'"),
            ([*gen, "--out", p["dir"]], "which is a folder"),
            ([*gen, "--out", p["file"]], "already exists; pass --overwrite"),
            ([*gen, "--out", p["below_file"]], "is not a folder"),
            (["data", "shapes", "--out", "/proc/shapes"], "cannot create files in '/proc'"),
            (["data", "shapes", "--out", p["file"]], "which is a file"),
            (["data", "preview", "--out", "/proc/p.png"], "cannot create files in '/proc'"),
            (["data", "preview", "--out", p["file"]], "pass --overwrite"),
            (["profile", "--out", "/proc/run"], "cannot create files in '/proc'"),
            (["profile", "--out", p["file"]], "which is a file"),
            (["profile", "--out", p["profiled"]], "profile.json' (a profile) already exists"),
            ([*search, "--out", "/proc/p.json"], "cannot create files in '/proc'"),
            ([*search, "--out", p["dir"]], "which is a folder"),
            ([*search, "--out", p["policy"]], "policy.json' (a search's output) already exists"),
            ([*search, "--out", p["pareto_only"]], "only-pareto.pareto.json' (a search's output) already"),
            ([*report, "--out", "/proc/report"], "cannot create files in '/proc'"),
            ([*report, "--out", p["file"]], "which is a file"),
            ([*report, "--out", p["reported"]], "index.html' (a report) already exists"),
            (["demo", "--runs", p["file"]], "`--runs` must be a folder"),
            (["demo", "--reports", "/proc/reports"], "`--reports` must be a path hgc-tune can write"),
        ]
    )


def test_numbers_are_checked_by_one_rule_per_flag(places):
    gen = ["generate", "--prompt", "x", "--condition-image", places["file"], "--out", places["new"]]
    search = ["search", "--profile", places["dir"], "--out", places["new"]]
    _assert_refused_at_once(
        [
            ([*gen, "--steps", "0"], "`--steps` must be an integer in [1, 1000], but got --steps=0."),
            ([*gen, "--steps", "-1"], "but got --steps=-1."),
            ([*gen, "--steps", "100000"], "but got --steps=100000."),
            ([*gen, "--seed", "-1"], "`--seed` must be an integer in [0, 4294967295], but got --seed=-1."),
            ([*gen, "--resolution", "63"], "a multiple of 8, but got --resolution=63."),
            (["profile", "--out", places["dir"], "--steps", "1001"], "but got --steps=1001."),
            (["profile", "--out", places["dir"], "--samples", "0"], "`--samples` must be an integer in"),
            (["bench", "--policy", "full", "--steps", "0"], "but got --steps=0."),
            (["bench", "--policy", "full", "--repeats", "0"], "but got --repeats=0."),
            (["macs", "--steps", "0"], "but got --steps=0."),
            (["macs", "--batch", "x"], "but got --batch=x."),
            (["evaluate", "--policy", "none", "--samples", "0"], "but got --samples=0."),
            (["demo", "--budget", "-1"], "`--budget` must be in (0, 1), but got --budget=-1."),
            (["demo", "--budget", "nan"], "but got --budget=nan."),
            (["demo", "--timeout", "-1"], "must be a number >= 0, but got --timeout=-1."),
            (["demo", "--confidence", "1"], "`--confidence` must be in [0, 1), but got --confidence=1."),
            (["demo", "--test-samples", "0"], "but got --test-samples=0."),
            (["demo", "--steps", "0"], "but got --steps=0."),
            ([*search, "--budget", "1.5"], "`--budget` must be in (0, 1), but got --budget=1.5."),
            ([*search, "--budget", "0.1", "--trials", "0"], "but got --trials=0."),
            ([*search, "--budget", "0.1", "--timeout", "0"], "`--timeout` must be a number > 0"),
            ([*search, "--budget", "0.1", "--workers", "0"], "but got --workers=0."),
            ([*search, "--budget", "0.1", "--heldout-samples", "-1"], "but got --validation-samples=-1."),
            ([*search, "--budget", "0.1", "--test-samples", "-1"], "but got --test-samples=-1."),
            ([*search, "--budget", "0.1", "--confidence", "nan"], "but got --confidence=nan."),
            (["report", "--profile", "x", "--out", places["new"], "--samples", "-1"], "--samples=-1."),
            (["data", "shapes", "--out", places["new"], "--size", "10"], "but got --size=10."),
            (["data", "preview", "--out", places["new"], "--n", "0"], "but got --n=0."),
            (["bench", "--model", "tiny"], "the following arguments are required: --policy"),
        ]
    )


def test_help_states_the_bounds(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "1..1000" in text and "--overwrite" in text


def test_check_output_kinds_and_overwrite(tmp_path):
    target = tmp_path / "a" / "b.json"
    assert check_output(target, overwrite=False) == target
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert [p.name for p in tmp_path.iterdir()] == []
    target.parent.mkdir()
    target.write_text("{}")
    with pytest.raises(HgcTuneError, match="pass --overwrite"):
        check_output(target, overwrite=False)
    assert check_output(target, overwrite=True) == target
    assert check_output(target, overwrite=None) == target  # a command that always replaces its output
    with pytest.raises(HgcTuneError, match="`--out` must be a folder"):
        check_output(target, kind="folder")
    with pytest.raises(HgcTuneError, match="written beside --out.* is a folder"):
        (tmp_path / "a" / "c.pareto.json").mkdir()
        check_output(tmp_path / "a" / "c.json", overwrite=True, replaces=("c.pareto.json",))


def test_a_run_that_writes_goes_on_after_the_check(tmp_path, capsys):
    out = tmp_path / "p.png"
    start = time.perf_counter()
    assert main(["data", "preview", "--out", str(out), "--n", "1"]) == 0
    assert out.is_file() and (out.stat().st_mode & 0o777) == 0o644
    assert main(["data", "preview", "--out", str(out), "--n", "1"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["data", "preview", "--out", str(out), "--n", "2", "--overwrite"]) == 0
    assert time.perf_counter() - start < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]  # no temporary file left
