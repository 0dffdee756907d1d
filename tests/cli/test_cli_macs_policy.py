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
