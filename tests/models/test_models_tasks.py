"""Tasks: the img2img and inpainting pipelines over a loaded pipeline's components, their call arguments,
and the steps a call runs at a strength."""

from __future__ import annotations

import math

import pytest

from hgc_tune.errors import IncompatibleControlNetError, ModelLoadError, ProfileError
from hgc_tune.models import load_pipeline
from hgc_tune.models._loading import check_controlnet_fits
from hgc_tune.models._tasks import (
    check_strength,
    generation_inputs,
    inference_steps_for,
    native_size,
    pipeline_for_task,
    pipeline_task,
    steps_run,
    task_and_strength,
)


def test_task_pipelines_share_the_components(tiny_pipe):
    for task, name in (
        ("img2img", "StableDiffusionControlNetImg2ImgPipeline"),
        ("inpaint", "StableDiffusionControlNetInpaintPipeline"),
    ):
        pipe = pipeline_for_task(tiny_pipe, task)
        assert type(pipe).__name__ == name and pipeline_task(pipe) == task
        for component in ("unet", "controlnet", "vae", "text_encoder", "scheduler", "tokenizer"):
            assert getattr(pipe, component) is getattr(tiny_pipe, component)
    assert pipeline_for_task(tiny_pipe, "text2img") is tiny_pipe and pipeline_task(tiny_pipe) == "text2img"
    with pytest.raises(ModelLoadError, match=r"`task` must be one of \['text2img', 'img2img', 'inpaint'\]"):
        load_pipeline("tiny", task="depth2img")


def test_steps_run_at_a_strength():
    assert steps_run(20, 0.7) == 14 and steps_run(20, 1.0) == 20 and steps_run(20) == 20
    assert steps_run(5, 0.6) == 3 and steps_run(3, 0.1) == 0
    assert inference_steps_for(14, 0.7) == 20 and inference_steps_for(20, 0.7) == 29
    assert inference_steps_for(20, 1.0) == 20 and inference_steps_for(3, 0.0) is None


def test_generation_inputs(tiny_pipe, task_pipe, condition_image, init_image):
    assert generation_inputs(tiny_pipe, condition_image) == {"image": condition_image}
    with pytest.raises(ModelLoadError, match="takes no init_image, strength"):
        generation_inputs(tiny_pipe, condition_image, init_image=init_image, strength=0.5)
    img2img = generation_inputs(task_pipe("img2img"), condition_image, init_image=init_image)
    assert img2img == {"image": init_image, "control_image": condition_image, "strength": 0.8}
    with pytest.raises(ModelLoadError, match="needs an init image"):
        generation_inputs(task_pipe("img2img"), condition_image)
    with pytest.raises(ModelLoadError, match=r"`strength` must be in \(0, 1\], but got strength=0"):
        generation_inputs(task_pipe("img2img"), condition_image, init_image=init_image, strength=0)
    inpaint = generation_inputs(task_pipe("inpaint"), condition_image, init_image=init_image)
    assert inpaint["strength"] == 1.0 and inpaint["mask_image"].getpixel((32, 32)) == 255
    assert inpaint["mask_image"].getpixel((0, 0)) == 0


def test_a_9_channel_inpainting_unet_fits_a_4_channel_controlnet_for_inpainting_only(tiny_pipe):
    unet = {**tiny_pipe.unet.config, "in_channels": 9}
    check_controlnet_fits(unet, tiny_pipe.controlnet.config, task="inpaint")
    with pytest.raises(IncompatibleControlNetError, match="an inpainting U-Net: load it with task='inpaint'"):
        check_controlnet_fits(unet, tiny_pipe.controlnet.config)


def test_one_strength_rule():
    assert check_strength(0.5) == 0.5 and check_strength(1) == 1.0 and isinstance(check_strength(1), float)
    for bad in (0, 1.5, -0.1, math.nan, math.inf, True, "0.5", None):
        with pytest.raises(ModelLoadError, match=r"`strength` must be in \(0, 1\], but got strength="):
            check_strength(bad)
    # a command-line flag shows the text as typed
    with pytest.raises(ProfileError, match=r"^`--strength` must be in \(0, 1\], but got --strength=abc\.$"):
        check_strength(math.nan, error=ProfileError, flag="--strength", given="abc")


def test_task_and_strength(tiny_pipe):
    assert task_and_strength(tiny_pipe, None) == ("text2img", None)
    with pytest.raises(ProfileError, match="`strength` is for img2img and inpainting pipelines"):
        task_and_strength(tiny_pipe, 0.5, error=ProfileError)
    # diffusers' default of each task, or the strength given
    assert task_and_strength(pipeline_for_task(tiny_pipe, "img2img"), None) == ("img2img", 0.8)
    assert task_and_strength(pipeline_for_task(tiny_pipe, "inpaint"), None) == ("inpaint", 1.0)
    assert task_and_strength(pipeline_for_task(tiny_pipe, "inpaint"), 0.5) == ("inpaint", 0.5)
    with pytest.raises(ModelLoadError, match=r"but got strength=2"):
        task_and_strength(pipeline_for_task(tiny_pipe, "img2img"), 2)


def test_native_size(tiny_pipe):
    assert native_size(tiny_pipe) == tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
