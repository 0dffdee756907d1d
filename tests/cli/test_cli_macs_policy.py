"""`hgc-tune macs --policy`: full and policy MACs and the reduction, from the shipped peer files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hgc_tune.cli import main

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_macs_with_a_shipped_policy(capsys):
    from hgc_tune.macs import count_pipeline_macs
    from hgc_tune.models import load_pipeline
    from hgc_tune.policy import load_policy, policy_macs

    path = POLICIES / "tiny-deepcache-n3-b0.json"
    assert main(["macs", "--model", "tiny", "--policy", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    policy = load_policy(path).select()
    table = count_pipeline_macs(load_pipeline("tiny"), height=64, width=64, model_name="tiny")
    expected = policy_macs(policy, table, cfg=True, convention="paper")
    assert out["steps"] == policy.num_steps == 20
    assert out["policy"]["paper"]["policy"] == expected["policy"]
    assert out["policy"]["paper"]["full"] == out["conventions"]["paper"]["total"]
    assert 0 < out["policy"]["paper"]["reduction"] == pytest.approx(1 - expected["policy"] / expected["full"])


def test_macs_policy_with_other_steps_is_refused(capsys):
    path = POLICIES / "tiny-deepcache-n3-b0.json"
    assert main(["macs", "--model", "tiny", "--policy", str(path), "--steps", "10"]) == 2
    assert "made for 20 steps, but --steps 10" in capsys.readouterr().err


def test_another_models_policy_is_refused_naming_both_fingerprints(capsys):
    from hgc_tune.models import load_pipeline, model_fingerprint
    from hgc_tune.policy import load_policy

    path = POLICIES / "sd15-deepcache-n3-b0.json"
    assert main(["macs", "--model", "tiny", "--policy", str(path)]) == 2
    captured = capsys.readouterr()
    assert "reduction" not in captured.out
    theirs = load_policy(path).select().target.fingerprint
    ours = model_fingerprint(load_pipeline("tiny"))
    assert "does not fit this pipeline" in captured.err
    assert f"policy has {theirs!r}, pipeline has {ours!r}" in captured.err


def test_shapes_macs_need_no_condition(capsys):
    assert main(["macs", "--model", "shapes", "--steps", "2", "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)
    assert main(["macs", "--model", "shapes", "--condition", "depth", "--steps", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["conventions"] == counted["conventions"]


def _tuned_shapes_conditions() -> list[str]:
    from hgc_tune.policy import load_policy

    # a condition type whose policy `make demo` could not prove has none in the file
    return list(load_policy(POLICIES / "shapes.json").condition_types)


@pytest.mark.parametrize("condition", _tuned_shapes_conditions())
def test_macs_split_the_tuned_shapes_policys_saving_by_mechanism(capsys, condition):
    from hgc_tune.policy import load_policy

    path = POLICIES / "shapes.json"
    assert main(["macs", "--model", "shapes", "--policy", str(path), "--condition", condition, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["policy"]
    policy = load_policy(path).select(condition)
    for convention in ("paper", "complete"):
        split = out["savings_by_mechanism"][convention]
        assert split["order"] == [
            "guidance_window",
            "controlnet_window",
            "controlnet_blocks",
            "unet_blocks",
            "cross_attention",
        ]
        # the parts add up, to the MAC, to what the policy saves on the real shapes table
        assert split["full"] == out[convention]["full"] and split["policy"] == out[convention]["policy"]
        assert sum(split["macs"].values()) == split["saved"] == split["full"] - split["policy"]
        assert split["reduction"]["total"] == pytest.approx(out[convention]["reduction"])
        # guidance first: the unconditional half of every step from cfg_until on, in full (none without a
        # guidance window)
        cfg_until = policy.num_steps if policy.guidance is None else policy.guidance.cfg_until
        conditional_only = policy.num_steps - cfg_until
        assert split["reduction"]["guidance_window"] == pytest.approx(
            conditional_only / (2 * policy.num_steps)
        )
        # the ControlNet window's part, per ControlNet (none listed for a policy without a window)
        windows = {"controlnet": split["macs"]["controlnet_window"]} if policy.controlnet is not None else {}
        assert split["controlnet_windows"] == windows


def test_macs_prints_where_the_savings_come_from(capsys):
    path = POLICIES / "tiny-tgate-g10-cfg.json"
    assert main(["macs", "--model", "tiny", "--policy", str(path)]) == 0
    out = capsys.readouterr().out
    assert "where the savings come from (paper)" in out
    lines = {line.split("  ")[1].strip(): line for line in out.splitlines() if line.startswith("  ")}
    # T-GATE with truncated CFG: CFG off from step 10 (a quarter of the denoiser forwards), attn2 reused
    assert lines["guidance window"].endswith("25.0% of full")
    assert lines["U-Net blocks"].endswith(" 0.0% of full")
    assert "cross-attention reuse" in lines and "total" in lines


def test_macs_split_the_controlnet_window_per_controlnet(capsys):
    path = POLICIES / "shapes-seg-depth.json"
    argv = ["macs", "--model", "shapes", "--condition", "seg,depth", "--policy", str(path)]
    assert main([*argv, "--json"]) == 0
    split = json.loads(capsys.readouterr().out)["policy"]["savings_by_mechanism"]["paper"]
    windows = split["controlnet_windows"]
    assert set(windows) == {"controlnet.nets.0", "controlnet.nets.1"} and all(windows.values())
    assert sum(windows.values()) == split["macs"]["controlnet_window"]
    assert sum(split["macs"].values()) == split["saved"] == split["full"] - split["policy"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "\n    controlnet.nets.0 " in out and "\n    controlnet.nets.1 " in out


@pytest.mark.parametrize("guidance, cfg", [(1.0, False), (3.0, True)])
def test_macs_counts_cfg_as_the_policy_was_measured(tmp_path, capsys, guidance, cfg):
    import dataclasses

    from hgc_tune.policy import dumps_policy, load_policy

    policy = load_policy(POLICIES / "tiny-deepcache-n3-b0.json").select()
    provenance = dataclasses.replace(policy.provenance, guidance_scale=guidance)
    path = tmp_path / "measured.json"
    path.write_text(dumps_policy(dataclasses.replace(policy, provenance=provenance)))
    assert main(["macs", "--model", "tiny", "--policy", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cfg"] is cfg and out["cfg_source"] == f"the policy's guidance scale {guidance:g}"
    assert main(["macs", "--model", "tiny", "--policy", str(path), "--json", "--cfg"]) == 0
    with_cfg = json.loads(capsys.readouterr().out)
    # without CFG the denoisers run one branch instead of two: half the MACs, the same reduction
    halved = 1 if cfg else 2
    assert out["conventions"]["paper"]["total"] * halved == with_cfg["conventions"]["paper"]["total"]
    assert out["policy"]["paper"]["reduction"] == pytest.approx(with_cfg["policy"]["paper"]["reduction"])


def test_macs_without_a_policy_counts_cfg_at_the_models_recommended_guidance(capsys):
    from hgc_tune.models import recommended_guidance

    assert main(["macs", "--model", "tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cfg"] is True and out["cfg_source"].startswith("guidance scale 7.5")
    assert main(["macs", "--model", "shapes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cfg"] is (recommended_guidance("shapes").scale > 1)
    assert main(["macs", "--model", "tiny", "--no-cfg", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cfg"] is False and out["cfg_source"] == "--no-cfg"


def test_macs_cfg_flags_exclude_each_other(capsys):
    assert main(["macs", "--model", "tiny", "--cfg", "--no-cfg"]) == 2
    assert "argument --no-cfg: not allowed with argument --cfg" in capsys.readouterr().err
