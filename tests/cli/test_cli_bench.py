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
    # the skipped MACs split by mechanism beside the timing: the parts add up to the policy's reduction
    for convention in ("paper", "complete"):
        split = out["savings_by_mechanism"][convention]
        assert sum(split["macs"].values()) == split["saved"] == split["full"] - split["policy"]
        assert split["reduction"]["total"] == pytest.approx(out["macs"][convention]["reduction"])
        assert split["reduction"]["unet_blocks"] > 0  # DeepCache skips U-Net blocks


def test_text_output_names_the_figures(capsys):
    assert main([*ARGS, "--policy", "full-hooked"]) == 0
    text = capsys.readouterr().out
    assert "ms/image" in text and "(full-hooked)" in text
    # an all-compute policy computes every MAC: the MAC ratio is exactly 1
    assert "MAC ratio 1.000x" in text
    assert "MACs saved (paper):" in text and "= 0.0%" in text


def test_a_policy_is_required(capsys):
    assert main(["bench", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err == "hgc-tune bench: error: the following arguments are required: --policy\n"


@pytest.mark.parametrize(
    ("model", "task", "strength", "pipeline", "steps_run"),
    [
        # --steps 4 at strength 0.5 runs int(4 × 0.5) = 2 steps; inpainting's default strength 1.0 runs all 4
        ("tiny", "img2img", "0.5", "StableDiffusionControlNetImg2ImgPipeline", 2),
        ("tiny", "inpaint", None, "StableDiffusionControlNetInpaintPipeline", 4),
        ("tiny-sdxl", "text2img", None, "StableDiffusionXLControlNetPipeline", 4),
        ("tiny-sdxl", "inpaint", "0.75", "StableDiffusionXLControlNetInpaintPipeline", 3),
    ],
)
def test_every_task_and_sdxl(capsys, model, task, strength, pipeline, steps_run):
    argv = ["bench", "--model", model, "--task", task, "--steps", "4", "--repeats", "1", "--warmup", "0"]
    argv += ["--policy", "peer:deepcache-n2-b0", "--json"] + (["--strength", strength] if strength else [])
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["task"], out["pipeline"], out["controlnets"]) == (model, task, pipeline, 1)
    # the policy is made for the steps run, and the MAC ratio counts them
    assert out["steps"] == steps_run
    if task == "text2img":
        assert "strength" not in out and "num_inference_steps" not in out
    else:
        assert out["num_inference_steps"] == 4 and out["strength"] == float(strength or 1.0)
    paper = out["macs"]["paper"]
    assert out["mac_ratio"] == pytest.approx(paper["full"] / paper["policy"]) and out["mac_ratio"] > 1
    assert out["speedup"] == pytest.approx(out["baseline_ms"] / out["policy_ms"])


def test_several_controlnets(capsys):
    argv = [
        *ARGS,
        "--condition",
        "seg,depth",
        "--task",
        "img2img",
        "--policy",
        "peer:cnwin-k1-drop",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["controlnets"], out["condition"]) == (2, "seg,depth")
    # img2img at the default strength 0.8 runs int(4 × 0.8) = 3 steps; both ControlNets dropped after step 0
    assert out["steps"] == 3 and out["strength"] == 0.8
    paper = out["macs"]["paper"]
    assert paper["policy.controlnet"] == pytest.approx(paper["full.controlnet"] / 3)
    assert out["mac_ratio"] > 1


def test_strength_needs_an_image_task(capsys):
    assert main([*ARGS, "--policy", "full", "--strength", "0.5"]) == 2
    err = capsys.readouterr().err
    assert (
        "`--strength` needs `--task img2img` or `--task inpaint`, but got --strength=0.5 with --task text2img"
        in err
    )
