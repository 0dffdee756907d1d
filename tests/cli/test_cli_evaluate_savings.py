"""`hgc-tune evaluate`: the policy's MAC saving split by mechanism, beside the reduction."""

from __future__ import annotations

import json

import pytest

from hgc_tune.cli import main

ARGV = ["evaluate", "--model", "tiny", "--condition", "seg", "--steps", "4", "--samples", "1"]
ARGV += ["--metric", "ssim", "--confidence", "0", "--no-progress"]


def test_evaluate_splits_the_saving_by_mechanism(capsys):
    # T-GATE gated at step 2 with CFG truncated there: guidance window and cross-attention reuse
    assert main([*ARGV, "--policy", "peer:tgate-g2-cfg", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for convention, macs in result["macs"].items():
        split = result["savings_by_mechanism"][convention]
        assert split["full"] == macs["full"] and split["policy"] == macs["policy"]
        assert sum(split["macs"].values()) == split["saved"] == macs["full"] - macs["policy"] > 0
        # steps 2 and 3 of 4 run the conditional half only: a quarter of the denoiser forwards
        assert split["reduction"]["guidance_window"] == pytest.approx(0.25)
        assert split["macs"]["cross_attention"] > 0
        assert split["macs"]["unet_blocks"] == split["macs"]["controlnet_window"] == 0
    assert main([*ARGV, "--policy", "peer:tgate-g2-cfg"]) == 0
    assert "where from (paper, each skipped MAC once): guidance window 25.0% + " in capsys.readouterr().out


def test_evaluate_without_a_policy_saves_nothing(capsys):
    assert main([*ARGV, "--policy", "none", "--json"]) == 0
    split = json.loads(capsys.readouterr().out)["savings_by_mechanism"]["paper"]
    assert split["saved"] == 0 and set(split["macs"].values()) == {0}
