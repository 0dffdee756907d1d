"""What a benchmark times: one call of the pipeline on fixed random images, for every task and for one
ControlNet or several."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hgc_tune.models._tasks import generation_inputs, pipeline_task

if TYPE_CHECKING:
    from PIL import Image

    from hgc_tune._typing import ControlNetPipeline

__all__ = ["BENCH_PROMPT", "bench_call", "bench_inputs"]

BENCH_PROMPT = "a photo of a red circle"


def _random_image(size: int, rng: np.random.Generator) -> Image.Image:
    from PIL import Image

    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def bench_inputs(
    pipe: ControlNetPipeline, *, size: int, strength: float | None = None, seed: int = 0
) -> dict[str, Any]:
    """The image arguments of a timed call of ``pipe``: the same random images for the same ``seed``.

    One ``size`` × ``size`` condition image per ControlNet (a list for several, in their order); for an
    img2img or inpainting pipeline (:func:`hgc_tune.models._tasks.pipeline_task`) also a random init image,
    the default mask (inpainting: the middle half repainted) and ``strength`` (default: diffusers' default
    of the task), as :func:`hgc_tune.models._tasks.generation_inputs` passes them.

    Args:
        pipe: A ControlNet pipeline of any task, SD1.5 or SDXL family.
        size: Image side in pixels.
        strength: img2img/inpainting denoising strength in (0, 1]; ``None`` for text2img.
        seed: Seed of the images.

    Example:
        >>> from hgc_tune.models import load_pipeline
        >>> inputs = bench_inputs(load_pipeline("tiny", condition="seg,depth", task="inpaint"), size=64)
        >>> sorted(inputs), len(inputs["control_image"]), inputs["strength"]
        (['control_image', 'image', 'mask_image', 'strength'], 2, 1.0)
    """
    rng = np.random.default_rng(seed)
    nets = getattr(pipe.controlnet, "nets", None)
    conditions = [_random_image(size, rng) for _ in range(len(nets) if nets is not None else 1)]
    condition = conditions if nets is not None else conditions[0]
    init = _random_image(size, rng) if pipeline_task(pipe) != "text2img" else None
    return generation_inputs(pipe, condition, init_image=init, strength=strength)


def bench_call(
    pipe: ControlNetPipeline,
    *,
    size: int,
    num_inference_steps: int,
    strength: float | None = None,
    guidance_scale: float | None = None,
    batch: int = 1,
    device: str = "cpu",
) -> Callable[[], Any]:
    """One generation of ``pipe`` to time, as a function of no arguments: :data:`BENCH_PROMPT` on
    :func:`bench_inputs`, ``batch`` images, latents out (the VAE decoder is not timed), a fixed seed, at
    ``guidance_scale`` (``None``: the model's recommended one, :func:`hgc_tune.models.pipeline_guidance`)."""
    inputs = bench_inputs(pipe, size=size, strength=strength)
    if guidance_scale is None:
        from hgc_tune.models import pipeline_guidance

        guidance_scale = pipeline_guidance(pipe).scale

    def call() -> Any:
        return pipe(
            BENCH_PROMPT,
            **inputs,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=batch,
            height=size,
            width=size,
            output_type="latent",
            generator=torch.Generator(device).manual_seed(0),
        )

    return call
