"""`hgc-tune evaluate`: fidelity to the full-compute picture (SSIM, PSNR) beside the metric."""

from __future__ import annotations

import json

import pytest

from hgc_tune.cli import main
from hgc_tune.fidelity._metrics import PSNR_CAP_DB

ARGV = ["evaluate", "--model", "tiny", "--condition", "seg", "--steps", "4", "--samples", "2"]
ARGV += ["--metric", "miou", "--confidence", "0", "--no-progress"]


def test_evaluate_json_reports_ssim_and_psnr_to_full_compute(capsys):
    assert main([*ARGV, "--policy", "peer:deepcache-n2-b0", "--json"]) == 0
    cached = json.loads(capsys.readouterr().out)["picture"]
    assert set(cached) == {"ssim", "psnr"}
    # a cached policy changes the picture: below the identical-picture values, but still finite and close
    assert 0.0 < cached["ssim"] < 1.0 and 0.0 < cached["psnr"] < PSNR_CAP_DB
    assert main([*ARGV, "--policy", "none", "--json"]) == 0
    same = json.loads(capsys.readouterr().out)["picture"]
    assert same == {"ssim": pytest.approx(1.0), "psnr": PSNR_CAP_DB}


def test_evaluate_prints_ssim_and_psnr(capsys):
    assert main([*ARGV, "--policy", "peer:deepcache-n2-b0"]) == 0
    assert "picture vs full compute: SSIM 0." in capsys.readouterr().out
