"""`hgc-tune generate`: one image with or without a policy, deterministic for a seed, MACs with --json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hgc_tune.cli import main

ARGS = ["generate", "--model", "tiny", "--prompt", "a red square", "--steps", "4", "--seed", "3"]


@pytest.fixture(scope="module")
def condition_file(tmp_path_factory, condition_image):
    path = tmp_path_factory.mktemp("condition") / "seg.png"
    condition_image.save(path)
    return path


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_same_seed_same_image_and_all_compute_policy_changes_nothing(tmp_path, condition_file):
    base = [*ARGS, "--condition-image", str(condition_file)]
    paths = [tmp_path / name for name in ("a.png", "b.png", "full.png", "cached.png")]
    assert main([*base, "--out", str(paths[0])]) == 0
    assert main([*base, "--out", str(paths[1])]) == 0
    assert main([*base, "--out", str(paths[2]), "--policy", "full-hooked"]) == 0
    assert main([*base, "--out", str(paths[3]), "--policy", "peer:deepcache-n2-b0"]) == 0
    a, b, full, cached = (_pixels(p) for p in paths)
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b) and np.array_equal(a, full)
    assert not np.array_equal(a, cached)


def test_json_reports_time_and_macs_of_the_policy(tmp_path, condition_file, capsys):
    out = tmp_path / "nested" / "x.png"
    argv = [*ARGS, "--condition-image", str(condition_file), "--out", str(out), "--json"]
    assert main([*argv, "--policy", "peer:deepcache-n2-b0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.is_file() and result["out"] == str(out)
    assert result["steps"] == 4 and result["seconds"] > 0
    paper = result["macs"]["paper"]
    assert 0 < paper["policy"] < paper["full"]
    assert paper["reduction"] == pytest.approx(1 - paper["policy"] / paper["full"])
    assert result["macs"]["complete"]["full"] > paper["full"]  # the complete convention counts more ops
    # the call's summary: what each scheduled module did, the guidance steps, and the MACs counted while it
    # ran, which equal the analytic figure above
    summary = result["summary"]
    assert summary["policy"] == "deepcache-n2-b0" and summary["steps"] == 4
    assert summary["guidance"] == {"cfg_steps": 4, "cfg_truncated_steps": 0}
    assert summary["modules"]["unet.mid_block"] == {"computed": 2, "reused": 2, "dropped": 0}
    for convention in ("paper", "complete"):
        counted, analytic = summary["macs"][convention], result["macs"][convention]
        assert (counted["executed"], counted["full"]) == (analytic["policy"], analytic["full"])
    assert main(argv) == 2  # the image is there: replacing it takes --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0  # no policy: the full MACs, no reduction, no summary
    plain = json.loads(capsys.readouterr().out)
    assert plain["macs"]["paper"]["reduction"] == 0 and "summary" not in plain


def test_unreadable_condition_image_names_the_flag_and_path(tmp_path, capsys):
    missing = tmp_path / "missing.png"
    argv = [*ARGS, "--condition-image", str(missing), "--out", str(tmp_path / "o.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--condition-image" in err and str(missing) in err
    assert not (tmp_path / "o.png").exists()
