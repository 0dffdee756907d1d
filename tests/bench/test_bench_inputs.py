"""The inputs a benchmark times: one condition image per ControlNet, an init image and mask for img2img and
inpainting, the same images for the same seed, and a call that runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hgc_tune.bench._inputs import bench_call, bench_inputs
from hgc_tune.errors import ModelLoadError
from hgc_tune.models import load_pipeline, pipeline_for_task


def test_text2img_one_condition_image(tiny_pipe):
    inputs = bench_inputs(tiny_pipe, size=32)
    assert list(inputs) == ["image"] and inputs["image"].size == (32, 32)
    again = bench_inputs(tiny_pipe, size=32)["image"]
    assert np.array_equal(np.asarray(inputs["image"]), np.asarray(again))
    other = bench_inputs(tiny_pipe, size=32, seed=1)["image"]
    assert not np.array_equal(np.asarray(inputs["image"]), np.asarray(other))


def test_img2img_and_inpainting_add_an_init_image_mask_and_strength(tiny_pipe):
    img2img = bench_inputs(pipeline_for_task(tiny_pipe, "img2img"), size=32, strength=0.6)
    assert sorted(img2img) == ["control_image", "image", "strength"] and img2img["strength"] == 0.6
    # the init image is drawn after the condition: a different picture
    assert not np.array_equal(np.asarray(img2img["image"]), np.asarray(img2img["control_image"]))
    inpaint = bench_inputs(pipeline_for_task(tiny_pipe, "inpaint"), size=32)
    # diffusers' default strength of inpainting, and the default mask: the middle half repainted
    assert inpaint["strength"] == 1.0
    mask = np.asarray(inpaint["mask_image"])
    assert mask.shape == (32, 32) and mask[8:24, 8:24].min() == 255 and mask[:8].max() == 0


def test_strength_is_refused_for_text2img(tiny_pipe):
    with pytest.raises(ModelLoadError, match="takes no strength"):
        bench_inputs(tiny_pipe, size=32, strength=0.5)


def test_several_controlnets_one_image_each():
    pipe = load_pipeline("tiny", condition="seg,depth")
    inputs = bench_inputs(pipe, size=32)
    assert isinstance(inputs["image"], list) and len(inputs["image"]) == 2
    first, second = (np.asarray(image) for image in inputs["image"])
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("task", ["text2img", "inpaint"])
def test_the_call_runs_the_steps_of_the_task(tiny_sdxl_pipe, task):
    pipe = pipeline_for_task(tiny_sdxl_pipe, task)
    # 4 steps at strength 0.5 run 2 (inpainting); text2img runs all 4
    strength = 0.5 if task == "inpaint" else None
    call = bench_call(pipe, size=64, num_inference_steps=4, strength=strength, batch=2)
    steps = []
    handle = pipe.unet.register_forward_hook(lambda module, args, output: steps.append(args[0].shape[0]))
    try:
        latents = call().images
    finally:
        handle.remove()
    # one U-Net call per step, on both CFG halves of the 2 images
    assert steps == [4] * (2 if task == "inpaint" else 4)
    assert latents.shape[0] == 2 and torch.isfinite(latents).all()
