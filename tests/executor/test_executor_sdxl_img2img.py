"""The executor on ``StableDiffusionXLControlNetImg2ImgPipeline``, built from the tiny-sdxl components, at
``strength=1.0``: every step runs (with ``strength < 1`` the pipeline runs only the last steps of the
schedule, a matter of step counting common to all img2img pipelines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hgc_tune.errors import PolicyMismatchError
from hgc_tune.executor import apply_policy, policy_handle
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.policy import full_compute_policy, peer_policy, target_for_pipeline

STEPS = 4


@pytest.fixture(scope="module")
def img2img(tiny_sdxl_pipe):
    from diffusers import StableDiffusionXLControlNetImg2ImgPipeline

    pipe = StableDiffusionXLControlNetImg2ImgPipeline(**tiny_sdxl_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, condition_image) -> np.ndarray:
    return pipe(
        "a red square",
        image=Image.new("RGB", (64, 64), (40, 120, 200)),
        control_image=condition_image,
        strength=1.0,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


def test_policies_on_sdxl_img2img(img2img, tiny_sdxl_pipe, condition_image):
    baseline = _generate(img2img, condition_image)
    target = target_for_pipeline(img2img, num_steps=STEPS, model="tiny-sdxl")
    assert target.pipeline_class == "StableDiffusionXLControlNetImg2ImgPipeline"
    with apply_policy(img2img, full_compute_policy(target)):
        assert np.array_equal(_generate(img2img, condition_image), baseline)
    keys = cacheable_module_keys(img2img)
    for name in ("deepcache-n2-b0", "tgate-g2-cfg", "cnwin-k2-reuse"):
        with apply_policy(img2img, peer_policy(name, target, keys)):
            cached = _generate(img2img, condition_image)
        assert np.isfinite(cached).all() and not np.array_equal(cached, baseline), name
    assert np.array_equal(_generate(img2img, condition_image), baseline)
    # a policy made for the text-to-image pipeline is refused: the pipeline class differs
    text2img = target_for_pipeline(tiny_sdxl_pipe, num_steps=STEPS)
    with pytest.raises(
        PolicyMismatchError, match="pipeline_class: policy has 'StableDiffusionXLControlNetPipeline'"
    ):
        apply_policy(img2img, peer_policy("deepcache-n2-b0", text2img, keys))
    assert policy_handle(img2img) is None
