"""Regenerating a profile's samples under a policy: the pipeline the profile was made with, its seeds,
prompts, condition images, steps and guidance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hgc_tune.errors import PolicyMismatchError, ReportError

__all__ = ["generate_policy_images", "pipeline_for_profile", "sample_indices"]

_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


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
    """Load the pipeline a profile was made with, with the profile's scheduler configuration.

    Args:
        profile: The :class:`hgc_tune.profile.Profile`.
        model: Load this model instead of the profile's ``model.name`` (e.g. after moving a checkpoint).
        controlnet: A ControlNet directory or hub id, for a base model that holds none.
        device: A torch device string.

    Raises:
        ReportError: If the loaded pipeline's structural fingerprint differs from the profile's.
    """
    import diffusers

    from hgc_tune.models import load_pipeline, model_fingerprint

    meta = profile.meta
    name = model or profile.model_name
    if not name:
        raise ReportError(
            "the profile records no model name; pass the model it was made with (CLI: --model)."
        )
    pipe = load_pipeline(
        name,
        controlnet=controlnet,
        condition=profile.condition_type or None,
        dtype=_DTYPES.get(meta["model"].get("dtype", "float32"), "fp32"),
        device=device,
    )
    scheduler_class = getattr(diffusers, str(meta.get("scheduler", "")), None)
    if scheduler_class is not None and isinstance(meta.get("scheduler_config"), dict):
        # The exact scheduler the references were generated with, not merely the same family.
        pipe.scheduler = scheduler_class.from_config(meta["scheduler_config"])
    found = model_fingerprint(pipe)
    if found != profile.fingerprint:
        raise ReportError(
            f"model {name!r} has fingerprint {found!r}, but the profile was made with "
            f"{profile.fingerprint!r}: "
            "pass the model it was profiled with (CLI: --model, --controlnet)."
        )
    return pipe


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

    if not indices:
        height, width = profile.resolution
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    meta = profile.meta
    steps = int(meta.get("num_inference_steps", profile.num_steps))
    height, width = profile.resolution
    conditions = profile.condition_images
    try:
        handle = apply_policy(pipe, policy)
    except PolicyMismatchError as e:
        raise ReportError(f"cannot generate the policy's samples: {e}") from e
    images = []
    try:
        for i in indices:
            output = pipe(
                prompt=profile.prompts[i],
                negative_prompt=profile.negative_prompts[i],
                image=Image.fromarray(conditions[i]),
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
