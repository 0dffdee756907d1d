"""`hgc-tune demo` resumes from an intact profile of the current weights, and profiles again otherwise."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from hgc_tune.cli.demo import _reusable_profile, _test_line
from hgc_tune.policy import load_policy, save_policy
from hgc_tune.profile import Profile


def _tiny_profile(tiny_pipe, folder):
    from hgc_tune.data import open_dataset
    from hgc_tune.profile import profile_pipeline

    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=1)
    profile = profile_pipeline(tiny_pipe, samples, num_steps=2, progress=False, model_name="tiny")
    return profile.save(folder)


def test_profile_reuse_needs_an_intact_profile_of_the_same_weights(tiny_pipe, tmp_path, capsys):
    folder = _tiny_profile(tiny_pipe, tmp_path / "tiny-seg")
    # made at the model's recommended guidance (None), or asked for by value
    assert _reusable_profile(folder, "tiny", "seg", None) and _reusable_profile(folder, "tiny", "seg", 7.5)
    assert not _reusable_profile(folder, "tiny", "seg", 3.0)
    assert "made at guidance 7.5, not 3: profiling again" in capsys.readouterr().out
    assert not _reusable_profile(tmp_path / "missing", "tiny", "seg", None)
    assert not _reusable_profile(folder, "tiny", "seg", None, 8)  # other batching: other references

    retrained = tmp_path / "retrained"
    shutil.copytree(folder, retrained)
    loaded = Profile.load(retrained)
    meta = loaded.meta
    meta["model"]["weights_digest"] = "0" * 16
    shutil.rmtree(retrained)
    Profile(meta, loaded.tensors()).save(retrained)
    assert not _reusable_profile(retrained, "tiny", "seg", None)
    assert "made with other weights of 'tiny': profiling again" in capsys.readouterr().out

    (folder / "profile.safetensors").write_bytes(b"truncated")
    assert not _reusable_profile(folder, "tiny", "seg", None)


def test_demo_searches_the_task_metric_with_a_95_percent_bound_bounded_by_trials(tmp_path):
    from hgc_tune.cli import build_parser
    from hgc_tune.cli.demo import _child_argv, _search_argv

    args = build_parser().parse_args(["demo", "--runs", str(tmp_path)])
    argv = _search_argv(args, tmp_path / "shapes-seg", tmp_path / "shapes-seg" / "policy.json")
    assert "--metric" not in argv  # the condition type's task metric
    assert argv[argv.index("--confidence") + 1] == "0.95"
    assert argv[argv.index("--trials") + 1] == str(args.trials) and "--timeout" not in argv
    assert argv[argv.index("--workers") + 1] == "1"  # one worker per condition: reproducible
    for split in ("--validation-samples", "--test-samples"):
        assert int(argv[argv.index(split) + 1]) > 0
    # a --parallel child runs the same search
    child = build_parser().parse_args(_child_argv(args, ["seg", "hed"]))
    assert child.child and child.parallel == 1 and child.conditions == "seg,hed"
    assert _search_argv(child, tmp_path / "shapes-seg", tmp_path / "shapes-seg" / "policy.json") == argv
    assert "--no-guidance-window" not in argv and args.validation_samples >= 40 and args.test_samples >= 64


def test_demo_passes_no_guidance_window_on_to_each_search(tmp_path):
    from hgc_tune.cli import build_parser
    from hgc_tune.cli.demo import _child_argv, _search_argv

    args = build_parser().parse_args(["demo", "--runs", str(tmp_path), "--no-guidance-window"])
    argv = _search_argv(args, tmp_path / "shapes-seg", tmp_path / "shapes-seg" / "policy.json")
    assert "--no-guidance-window" in argv
    child = build_parser().parse_args(_child_argv(args, ["seg"]))
    assert not child.search_guidance
    assert _search_argv(child, tmp_path / "shapes-seg", tmp_path / "shapes-seg" / "policy.json") == argv


def test_a_demo_that_ran_to_the_end_exits_0_unless_strict(tmp_path, monkeypatch, capsys):
    import hgc_tune.cli.demo as demo
    from hgc_tune.cli import build_parser

    def run_condition(args, condition):  # seg finds a policy, hed none (the search's exit code 1)
        folder = tmp_path / "runs" / f"shapes-{condition}"
        folder.mkdir(parents=True, exist_ok=True)
        if condition == "seg":
            (folder / "policy.json").write_text("{}")
        return 0 if condition == "seg" else 1

    def children(args, conditions):
        return {condition: run_condition(args, condition) for condition in conditions}

    monkeypatch.setattr(demo, "_children", children)
    monkeypatch.setattr(demo, "_combine", lambda outcomes, out: None)
    monkeypatch.setattr(demo, "_test_line", lambda path: "test split: …")
    argv = ["demo", "--conditions", "seg,hed", "--parallel", "1"]
    argv += ["--runs", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports")]
    assert demo.run(build_parser().parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert "no policy within the budget for hed" in out and "seg: policy" in out
    assert demo.run(build_parser().parse_args([*argv, "--strict"])) == 1


def test_test_line_without_a_mac_reduction_says_so(tmp_path):
    policy = load_policy("policies/tiny-deepcache-n3-b0.json").select()
    fidelity = {"test_loss": 0.01, "test_loss_upper": 0.02, "test_samples": 4}
    provenance = dataclasses.replace(policy.provenance, macs={}, fidelity=fidelity, metric="lpips")
    path = save_policy(dataclasses.replace(policy, provenance=provenance), tmp_path / "p.json")
    line = _test_line(path)
    assert line.startswith("test split: no MAC figure, lpips loss 1.00%,")
    assert line.endswith("on 4 samples")


# A stand-in for the demo's child process: it reports its condition types' stages as a child does; hed dies.
_FAKE_CHILD = """
import sys
from hgc_tune.cli._progress_file import DONE, EventWriter
argv = sys.argv[1:]
path = argv[argv.index("--status-file") + 1]
for condition in argv[argv.index("--conditions") + 1].split(","):
    report = EventWriter(path, condition)
    for done in range(3):
        report("profile", done, 2)
    report("trial", 0, 3)
    if condition == "hed":
        print("hed: something broke")
        sys.exit(3)
    report("trial", 3, 3)
    report("report", 0, 1)
    report("report", 1, 1)
    report(DONE, 1, 1)
"""


def _demo_args(tmp_path, *extra):
    from hgc_tune.cli import build_parser

    argv = ["demo", "--conditions", "seg,hed,canny", "--runs", str(tmp_path / "runs")]
    return build_parser().parse_args([*argv, "--reports", str(tmp_path / "reports"), *extra])


def test_the_status_line_goes_to_stderr_and_shows_a_child_that_died_as_failed(tmp_path, monkeypatch, capsys):
    import hgc_tune.cli.demo as demo

    monkeypatch.setattr(demo, "_CHILD", _FAKE_CHILD)
    assert demo.run(_demo_args(tmp_path)) == 2  # lanes seg,canny and hed; hed's process exits 3
    out, err = capsys.readouterr()
    last = err.splitlines()[-1]
    assert last.startswith("demo ") and "hed: failed (exit 3)" in last and "2/3 done" in last
    assert "\r" not in err  # not a terminal: plain lines
    # a log gets a line for every stage, even those a child began and ended between two polls of the parent
    for condition in ("seg", "canny"):
        for stage in ("profile", "trial", "report"):
            assert any(f"{condition}: {stage}" in line for line in err.splitlines()), (condition, stage)
    assert "--status-file" not in out  # the command lines shown are the user's
    assert f"--- {tmp_path / 'runs' / 'hed.log'} (exit 3)" in out and "hed: something broke" in out
    assert not any(line.startswith("demo ") for line in out.splitlines())


def test_no_progress_leaves_stderr_alone(tmp_path, monkeypatch, capsys):
    import hgc_tune.cli.demo as demo

    monkeypatch.setattr(demo, "_CHILD", "import sys; print('child ran'); sys.exit(0)")
    monkeypatch.setattr(demo, "_combine", lambda outcomes, out: None)
    assert demo.run(_demo_args(tmp_path, "--no-progress")) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.count("child ran") == 2


def test_an_interrupted_demo_stops_its_children(tmp_path, monkeypatch):
    import hgc_tune.cli.demo as demo

    lanes = []

    def interrupted(started, board, printer):
        lanes.extend(started)
        raise KeyboardInterrupt  # as Ctrl-C does, while the parent waits

    monkeypatch.setattr(demo, "_CHILD", "import time; time.sleep(120)")
    monkeypatch.setattr(demo, "_watch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.run(_demo_args(tmp_path, "--parallel", "3"))
    assert len(lanes) == 3 and all(lane.process.poll() is not None for lane in lanes)


def test_a_tiny_demo_shows_its_stages_on_stderr(tmp_path, capsys):
    from hgc_tune.cli import main
    from hgc_tune.cli._progress_file import EventReader

    argv = ["demo", "--model", "tiny", "--conditions", "seg", "--metric", "ssim", "--budget", "0.5"]
    argv += ["--confidence", "0", "--samples", "2", "--steps", "2", "--trials", "2"]
    argv += ["--validation-samples", "1", "--test-samples", "1"]
    argv += ["--runs", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert any("seg: profile" in line for line in lines) and any("seg: trial" in line for line in lines)
    assert lines[-1].startswith("demo ") and lines[-1].endswith(" | done")
    assert "== seg: search" in out  # the details: the child's log, shown at the end
    # the child reported every stage, in order, to the parent
    events = EventReader(tmp_path / "runs" / "seg.progress.jsonl").read()
    stages = [e.stage for i, e in enumerate(events) if i == 0 or e.stage != events[i - 1].stage]
    assert stages == ["profile", "trial", "validation", "test", "report", "done"]
