"""`hgc-tune bench`: full and policy generation timed alternately; the figures agree with each other."""

from __future__ import annotations

import json

import pytest

from hgc_tune.cli import main

ARGS = ["bench", "--model", "tiny", "--steps", "4", "--repeats", "2", "--warmup", "0"]


def test_json_figures_are_consistent(capsys):
    assert main([*ARGS, "--policy", "peer:deepcache-n2-b0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["steps"], out["compile"], out["compiled_regions"]) == ("tiny", 4, False, 0)
    assert len(out["baseline_runs_ms"]) == len(out["policy_runs_ms"]) == 2
    assert min(out["baseline_runs_ms"]) <= out["baseline_ms"] <= max(out["baseline_runs_ms"])
    assert out["speedup"] == pytest.approx(out["baseline_ms"] / out["policy_ms"])
    paper = out["macs"]["paper"]
    assert out["mac_ratio"] == pytest.approx(paper["full"] / paper["policy"]) and out["mac_ratio"] > 1
    assert out["speedup_over_mac_ratio"] == pytest.approx(out["speedup"] / out["mac_ratio"])
    assert out["machine"]


def test_text_output_names_the_figures(capsys):
    assert main([*ARGS, "--policy", "full-hooked"]) == 0
    text = capsys.readouterr().out
    assert "ms/image" in text and "(full-hooked)" in text
    # an all-compute policy computes every MAC: the MAC ratio is exactly 1
    assert "MAC ratio 1.000x" in text


def test_a_policy_is_required(capsys):
    assert main(["bench", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err == "hgc-tune bench: error: the following arguments are required: --policy\n"
