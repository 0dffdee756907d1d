"""Profiling img2img and inpainting pipelines: ``num_steps`` counts the steps run, the init images and masks
are recorded, and the references are what a plain call generates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hgc_tune.data import open_dataset
from hgc_tune.errors import ProfileError
from hgc_tune.models._tasks import generation_inputs
from hgc_tune.profile import Profile, profile_pipeline
from hgc_tune.profile._pipeline import check_profiled_pipeline

INFERENCE_STEPS, STRENGTH, RUN = 5, 0.6, 3


@pytest.fixture(scope="module")
def samples():
    return open_dataset("shapes", condition_type="seg", split="calibration", limit=1)


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_profile_records_the_steps_run(task, task_pipe, samples, tmp_path):
    pipe = task_pipe(task)
    profile = profile_pipeline(
        pipe, samples, num_steps=INFERENCE_STEPS, strength=STRENGTH, progress=False, model_name="tiny"
    )
    profile = Profile.load(profile.save(tmp_path / task))
    assert profile.num_steps == RUN and profile.num_inference_steps == INFERENCE_STEPS
    assert profile.task == task and profile.strength == STRENGTH
    assert profile.meta["pipeline_class"] == type(pipe).__name__
    assert profile.stat("mean_rel_l1", "unet.mid_block").shape == (RUN,)
    # the init image is the sample's ground truth; inpainting's default mask repaints the middle half
    assert np.array_equal(profile.init_images[0], np.asarray(samples[0].ground_truth_image()))
    if task == "inpaint":
        mask = profile.masks[0]
        assert mask[32, 32] == 255 and mask[0, 0] == 0 and mask.mean() == pytest.approx(255 / 4)
    else:
        assert profile.masks is None
    from PIL import Image

    inputs = generation_inputs(
        pipe,
        Image.fromarray(profile.condition_images[0]),
        init_image=Image.fromarray(profile.init_images[0]),
        mask_image=None if profile.masks is None else Image.fromarray(profile.masks[0]),
        strength=STRENGTH,
    )
    plain = pipe(
        profile.prompts[0],
        **inputs,
        num_inference_steps=INFERENCE_STEPS,
        generator=torch.Generator().manual_seed(profile.seeds[0]),
        output_type="np",
    ).images[0]
    assert np.array_equal((plain * 255).round().astype(np.uint8), profile.reference_images[0])


def test_a_profile_is_bound_to_its_pipeline_class(task_pipe, tiny_pipe, samples):
    profile = profile_pipeline(
        task_pipe("img2img"), samples, num_steps=2, strength=1.0, progress=False, model_name="tiny"
    )
    with pytest.raises(ProfileError, match="made with a StableDiffusionControlNetImg2ImgPipeline"):
        check_profiled_pipeline(profile, tiny_pipe)


def test_strength_is_checked(task_pipe, tiny_pipe, samples):
    with pytest.raises(ProfileError, match=r"`strength` must be in \(0, 1\], but got strength=1.5"):
        profile_pipeline(task_pipe("img2img"), samples, num_steps=2, strength=1.5, progress=False)
    with pytest.raises(ProfileError, match="`strength` is for img2img and inpainting pipelines"):
        profile_pipeline(tiny_pipe, samples, num_steps=2, strength=0.5, progress=False)


def test_the_profile_command_takes_a_task_and_a_strength(tmp_path, capsys):
    import json

    from hgc_tune.cli import main

    argv = ["profile", "--model", "tiny", "--condition", "seg", "--samples", "1", "--steps", "5"]
    out = tmp_path / "run"
    assert main([*argv, "--task", "inpaint", "--strength", "0.6", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["task"], summary["steps"], summary["num_inference_steps"]) == ("inpaint", 3, 5)
    assert Profile.load(out).masks.shape == (1, 64, 64)
    assert main([*argv, "--strength", "0.6", "--out", str(tmp_path / "other")]) == 2
    assert "`--strength` needs `--task img2img` or `--task inpaint`" in capsys.readouterr().err
