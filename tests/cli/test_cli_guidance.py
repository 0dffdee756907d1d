"""``--guidance-scale`` on `profile`, `evaluate`, `generate`, `bench` and `demo`: unset, the model's
recommended scale (what ``load_pipeline`` notes on the pipeline); given, it overrides; every output records
the scale used."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from hgc_tune.cli import main
from hgc_tune.cli.demo import _child_argv
from hgc_tune.models import RecommendedGuidance
from hgc_tune.models import _loading as loading

RECOMMENDED = 3.0


@pytest.fixture
def recommended(monkeypatch):
    """The tiny preset's recommended guidance made 3 (its pipeline default is 7.5), as a model's measured
    value would be."""
    monkeypatch.setattr(
        loading,
        "recommended_guidance",
        lambda model, pipeline_class=None: RecommendedGuidance(RECOMMENDED, "test"),
    )


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("given", "used"), [([], RECOMMENDED), (["--guidance-scale", "1.5"], 1.5)])
def test_evaluate_json_records_the_scale_used(recommended, capsys, given, used):
    argv = ["evaluate", "--model", "tiny", "--condition", "seg", "--steps", "2", "--samples", "2"]
    argv += ["--metric", "ssim", "--policy", "peer:deepcache-n2-b0", "--no-progress", "--json", *given]
    assert main(argv) == 0
    assert _json(capsys)["guidance_scale"] == used


@pytest.mark.parametrize(("given", "used"), [([], RECOMMENDED), (["--guidance-scale", "1"], 1.0)])
def test_profile_records_the_scale_used(recommended, capsys, tmp_path, given, used):
    from hgc_tune.profile import Profile

    out = tmp_path / "profile"
    argv = ["profile", "--model", "tiny", "--condition", "seg", "--steps", "2", "--samples", "1"]
    assert main([*argv, "--out", str(out), "--no-progress", "--json", *given]) == 0
    assert _json(capsys)["guidance_scale"] == used
    assert Profile.load(out).guidance_scale == used


@pytest.mark.parametrize(("given", "used"), [([], RECOMMENDED), (["--guidance-scale", "6"], 6.0)])
def test_generate_and_bench_use_and_record_the_scale(recommended, capsys, tmp_path, given, used):
    condition = tmp_path / "condition.png"
    Image.new("RGB", (64, 64)).save(condition)
    argv = ["generate", "--model", "tiny", "--prompt", "a red circle", "--condition-image", str(condition)]
    assert main([*argv, "--steps", "2", "--out", str(tmp_path / "out.png"), "--json", *given]) == 0
    assert _json(capsys)["guidance_scale"] == used
    argv = ["bench", "--model", "tiny", "--policy", "full", "--steps", "2", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--json", *given]) == 0
    assert _json(capsys)["guidance_scale"] == used


def test_unset_guidance_follows_the_pipeline_class_default(capsys):
    # No registry patch: tiny-sdxl loads as an SDXL pipeline, whose diffusers default is 5.0 (not 7.5).
    argv = ["evaluate", "--model", "tiny-sdxl", "--condition", "seg", "--steps", "2", "--samples", "2"]
    assert main([*argv, "--metric", "ssim", "--policy", "none", "--no-progress", "--json"]) == 0
    assert _json(capsys)["guidance_scale"] == 5.0


def test_demo_passes_the_scale_on(capsys):
    from hgc_tune.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.guidance_scale is None and "--guidance-scale" not in _child_argv(args, ["seg"])
    args = build_parser().parse_args(["demo", "--guidance-scale", "3"])
    argv = _child_argv(args, ["seg"])
    assert argv[argv.index("--guidance-scale") + 1] == "3.0"
