"""The executor on the tiny SDXL ControlNet img2img pipeline at strength < 1: only the steps run count."""

from __future__ import annotations

import pytest
import torch

from hgc_tune.errors import PolicyMismatchError, StepCountMismatchError
from hgc_tune.executor import apply_policy
from hgc_tune.models import load_pipeline
from hgc_tune.policy import full_compute_policy, target_for_pipeline

STEPS, STRENGTH = 10, 0.7  # 7 steps run


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny-sdxl", task="img2img")


def _generate(pipe, *, steps=STEPS):
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 40, 40))
    return pipe(
        prompt="a red circle",
        image=image,
        control_image=image,
        strength=STRENGTH,
        num_inference_steps=steps,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


def test_sdxl_img2img_all_compute_is_bit_identical_and_removal_restores(pipe):
    assert type(pipe).__name__ == "StableDiffusionXLControlNetImg2ImgPipeline"
    plain = _generate(pipe)
    policy = full_compute_policy(target_for_pipeline(pipe, num_steps=7))
    with apply_policy(pipe, policy):
        assert (_generate(pipe) == plain).all()
    assert (_generate(pipe) == plain).all()


def test_sdxl_img2img_refuses_a_policy_for_the_scheduled_steps(pipe):
    policy = full_compute_policy(target_for_pipeline(pipe, num_steps=STEPS))
    with apply_policy(pipe, policy):
        with pytest.raises(
            StepCountMismatchError, match=r"made for 10 denoising steps, but this call runs 7"
        ):
            _generate(pipe)


def test_an_sd15_img2img_policy_is_refused_on_sdxl(pipe):
    sd15 = load_pipeline("tiny", task="img2img")
    policy = full_compute_policy(target_for_pipeline(sd15, num_steps=7))
    with pytest.raises(PolicyMismatchError, match="pipeline_class"):
        apply_policy(pipe, policy)
