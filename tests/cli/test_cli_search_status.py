"""`hgc-tune search` shows the status line on stderr (never on stdout, --json included); with the demo's
--status-file, `profile` and `search` report their stages there instead."""

from __future__ import annotations

import json

import pytest

from hgc_tune.cli import main
from hgc_tune.cli._progress_file import EventReader

PROFILE = ["profile", "--model", "tiny", "--condition", "seg", "--dataset", "shapes", "--samples", "2"]
SEARCH = ["--budget", "0.5", "--metric", "ssim", "--trials", "3", "--confidence", "0"]
SEARCH += ["--validation-samples", "2", "--test-samples", "2"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """A tiny profile (2 samples, 3 steps) and the progress events its profiling reported."""
    root = tmp_path_factory.mktemp("status")
    events = root / "profile.progress.jsonl"
    argv = [*PROFILE, "--steps", "3", "--no-progress", "--out", str(root / "prof")]
    assert main([*argv, "--status-file", str(events)]) == 0
    return root / "prof", EventReader(events).read()


def test_profile_reports_each_batch_to_the_status_file(profiled, tmp_path):
    _, events = profiled
    # the default batch (8 samples per call) holds both samples: one report before, one after it
    assert [(e.task, e.stage, e.done, e.total) for e in events] == [
        ("seg", "profile", 0, 2),
        ("seg", "profile", 2, 2),
    ]
    # one sample per call: a report after each sample
    events_file = tmp_path / "one.progress.jsonl"
    argv = [
        *PROFILE,
        "--steps",
        "2",
        "--no-progress",
        "--out",
        str(tmp_path / "prof"),
        "--samples-per-call",
        "1",
    ]
    assert main([*argv, "--status-file", str(events_file)]) == 0
    assert [(e.done, e.total) for e in EventReader(events_file).read()] == [(0, 2), (1, 2), (2, 2)]


def test_search_shows_the_status_line_on_stderr_and_json_on_stdout(profiled, tmp_path, capsys):
    profile, _ = profiled
    argv = ["search", "--profile", str(profile), *SEARCH, "--out", str(tmp_path / "p.json")]
    assert main([*argv, "--json", "--storage", f"sqlite:///{tmp_path / 'study.db'}"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["trials"]  # stdout is the JSON alone
    lines = err.splitlines()
    assert lines[0].startswith("search 0:") and "seg: trial 1/3" in lines[0]
    assert "left (estimate)" in lines[-2] or "time left: estimating" in lines[-2]
    assert any("seg: validation" in line for line in lines) and any("seg: test" in line for line in lines)
    assert lines[-1].startswith("search ") and lines[-1].endswith(" | done")


def test_no_progress_hides_the_status_line(profiled, tmp_path, capsys):
    profile, _ = profiled
    argv = ["search", "--profile", str(profile), *SEARCH, "--out", str(tmp_path / "p.json"), "--no-progress"]
    assert main([*argv, "--storage", f"sqlite:///{tmp_path / 'study.db'}"]) == 0
    assert capsys.readouterr().err == ""


def test_with_a_status_file_search_reports_every_stage_there(profiled, tmp_path, capsys):
    profile, _ = profiled
    events = tmp_path / "search.progress.jsonl"
    argv = ["search", "--profile", str(profile), *SEARCH, "--out", str(tmp_path / "p.json"), "--no-progress"]
    argv += ["--storage", f"sqlite:///{tmp_path / 'study.db'}", "--status-file", str(events)]
    assert main(argv) == 0
    assert "search 0:" not in capsys.readouterr().err  # the file has the status, not stderr
    by_stage: dict[str, list[tuple[int, int]]] = {}
    for event in EventReader(events).read():
        assert event.task == "seg"
        by_stage.setdefault(event.stage, []).append((event.done, event.total))
    assert list(by_stage) == ["trial", "validation", "test"]
    assert by_stage["trial"][0] == (0, 3) and by_stage["trial"][-1] == (3, 3)
    for stage in ("validation", "test"):
        steps = by_stage[stage]
        # the references and the checks count one sample at a time; the total never grows, ends at done
        assert all(b[0] - a[0] in (0, 1) and b[1] <= a[1] for a, b in zip(steps, steps[1:]))
        assert steps[-1][0] == steps[-1][1] > 0
    assert by_stage["test"][0] == (0, 4)  # 2 references and 2 samples with the chosen policy
