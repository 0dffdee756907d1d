"""Regenerating a profile's samples under a policy: the pipeline the profile was made with, its seeds,
prompts, condition images, steps and guidance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hgc_tune.errors import PolicyMismatchError, ReportError

__all__ = ["generate_policy_images", "pipeline_for_profile", "sample_indices"]


def sample_indices(profile, samples: int) -> list[int]:
    """The first ``samples`` sample indices of the profile (fewer if it holds fewer).

    Raises:
        ReportError: If ``samples`` is not a non-negative integer.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ReportError(f"`samples` must be a non-negative integer, but got samples={samples!r}.")
    return list(range(min(samples, profile.num_samples)))


def pipeline_for_profile(
    profile, *, model: str | None = None, controlnet: str | None = None, device: str = "cpu"
) -> Any:
    """Load the pipeline a profile was made with (see :func:`hgc_tune.profile.load_profiled_pipeline`).

    Args:
        profile: The :class:`hgc_tune.profile.Profile`.
        model: Load this model instead of the profile's ``model.name`` (e.g. after moving a checkpoint).
        controlnet: A ControlNet directory or hub id, for a base model that holds none.
        device: A torch device string.

    Raises:
        ReportError: If the loaded pipeline's structural fingerprint or weights digest differs from the
            profile's.
    """
    from hgc_tune.profile import load_profiled_pipeline

    return load_profiled_pipeline(
        profile, model=model, controlnet=controlnet, device=device, error=ReportError
    )


def generate_policy_images(pipe, profile, policy, indices: Sequence[int]) -> np.ndarray:
    """Generate the profile's samples ``indices`` with ``policy`` applied to ``pipe``.

    Each sample is generated as the profiler generated its reference: the profile's prompt, negative
    prompt, seed, condition image, resolution, steps and guidance scale; the policy is removed afterwards,
    even on error. With an all-compute policy the images equal the profile's reference images.

    Returns:
        uint8 ``[len(indices), H, W, 3]``.

    Raises:
        ReportError: If the policy does not fit the pipeline or its step count differs from the profile's.
    """
    import torch
    from PIL import Image

    from hgc_tune.executor import apply_policy
    from hgc_tune.profile._profiler import condition_input

    if not indices:
        height, width = profile.resolution
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    meta = profile.meta
    steps = int(meta.get("num_inference_steps", profile.num_steps))
    height, width = profile.resolution
    conditions, inits, masks = profile.condition_images, profile.init_images, profile.masks
    try:
        handle = apply_policy(pipe, policy)
    except PolicyMismatchError as e:
        raise ReportError(f"cannot generate the policy's samples: {e}") from e
    images = []
    try:
        for i in indices:
            inputs: dict = {"image": condition_input(conditions[i])}
            if profile.task != "text2img":  # img2img / inpainting: the profiled init images and masks
                from hgc_tune.models._tasks import generation_inputs

                inputs = generation_inputs(
                    pipe,
                    inputs["image"],
                    init_image=Image.fromarray(inits[i]),
                    mask_image=Image.fromarray(masks[i]) if masks is not None else None,
                    strength=profile.strength,
                )
            output = pipe(
                prompt=profile.prompts[i],
                negative_prompt=profile.negative_prompts[i],
                **inputs,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=profile.guidance_scale,
                generator=torch.Generator().manual_seed(profile.seeds[i]),
                output_type="np",
            )
            # The profiler's float -> uint8 conversion, so equal computations give equal bytes.
            images.append((np.asarray(output.images[0]) * 255).round().astype(np.uint8))
    finally:
        handle.remove()
    return np.stack(images)
