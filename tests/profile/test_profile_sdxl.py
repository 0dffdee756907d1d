"""Profiling ``StableDiffusionXLControlNetPipeline`` (the tiny-sdxl preset): every block and cross-attention
of its three-block U-Net and ControlNet is recorded, with its MAC table, and the images are unchanged."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.profile import profile_pipeline
from hgc_tune.profile._artifact import BLOCK_STATS

STEPS = 3


@dataclass
class Sample:
    prompt: str
    image_seed: int
    seed: int | None = None
    negative_prompt: str | None = None

    def condition_image(self) -> Image.Image:
        rng = np.random.RandomState(self.image_seed)
        return Image.fromarray(rng.randint(0, 256, size=(64, 64, 3), dtype=np.uint8))


def test_profile_sdxl_pipeline(tiny_sdxl_pipe):
    pipe = tiny_sdxl_pipe
    samples = [Sample("a red square", 1), Sample("a blue circle", 2, seed=5, negative_prompt="blurry")]
    profile = profile_pipeline(
        pipe, samples, num_steps=STEPS, seed=10, progress=False, model_name="tiny-sdxl", dataset="stand-in"
    )
    keys = list(cacheable_module_keys(pipe))
    assert profile.block_keys == [k for k in keys if not k.endswith(".attn2")]
    assert "unet.up_blocks.2" in profile.block_keys and "unet.up_blocks.3" not in profile.block_keys
    assert profile.attention_keys == [k for k in keys if k.endswith(".attn2")]
    for key in profile.block_keys:
        for name in BLOCK_STATS:
            values = profile.stat(name, key)
            assert values.shape == (STEPS,) and math.isnan(values[0]) and np.isfinite(values[1:]).all()
    assert profile.mac_table.macs("unet.add_embedding") > 0
    assert profile.mac_table.macs("text_encoder_2") > 0
    # SDXL's recommended guidance is its pipeline's default, 5
    assert profile.guidance_scale == 5.0
    # observation only: the reference images are the plain pipeline's
    plain = pipe(
        prompt="a blue circle",
        negative_prompt="blurry",
        image=samples[1].condition_image(),
        height=64,
        width=64,
        num_inference_steps=STEPS,
        guidance_scale=profile.guidance_scale,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    ).images[0]
    assert np.array_equal(profile.reference_images[1], (plain * 255).round().astype(np.uint8))
