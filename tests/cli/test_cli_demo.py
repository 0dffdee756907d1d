"""`hgc-tune demo` resumes from an intact profile of the current weights, and profiles again otherwise."""

from __future__ import annotations

import dataclasses
import shutil

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


def test_a_demo_that_ran_to_the_end_exits_0_unless_strict(tmp_path, monkeypatch, capsys):
    import hgc_tune.cli.demo as demo
    from hgc_tune.cli import build_parser

    def run_condition(args, condition):  # seg finds a policy, hed none (the search's exit code 1)
        folder = tmp_path / "runs" / f"shapes-{condition}"
        folder.mkdir(parents=True, exist_ok=True)
        if condition == "seg":
            (folder / "policy.json").write_text("{}")
        return 0 if condition == "seg" else 1

    monkeypatch.setattr(demo, "_run_condition", run_condition)
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
