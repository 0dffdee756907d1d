"""Running the pipeline for one job: the call every reference and every policy output goes through."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hgc_tune.generation._inputs import GenerationJob, GenerationSettings
from hgc_tune.models._tasks import generation_inputs

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.policy import Policy

__all__ = ["GeneratedOutput", "call_arguments", "generate_output", "iter_outputs"]


@dataclass(frozen=True)
class GeneratedOutput:
    """A generated sample: the uint8 ``H×W×3`` image and the final float32 latent ``[4, h, w]``."""

    image: np.ndarray
    latent: np.ndarray


def call_arguments(
    pipe: ControlNetPipeline, job: GenerationJob, settings: GenerationSettings
) -> dict[str, Any]:
    """The keyword arguments of the pipeline call that generates ``job`` (all but the step callback)."""
    # torch (and the executor below) here, not at the top: `hgc_tune.search` imports this package, and the
    # search command's argument checks (`hgc_tune.search.SearchConfig`) must run without torch.
    import torch

    kwargs: dict[str, Any] = {}
    if settings.controlnet_scale != 1.0:
        kwargs["controlnet_conditioning_scale"] = float(settings.controlnet_scale)
    if job.init_image is None and job.mask_image is None and settings.strength is None:
        kwargs["image"] = job.condition
    else:  # img2img / inpainting: the init image as `image`, the condition as `control_image`
        kwargs.update(
            generation_inputs(
                pipe,
                job.condition,
                init_image=job.init_image,
                mask_image=job.mask_image,
                strength=settings.strength,
            )
        )
    return {
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "height": settings.height,
        "width": settings.width,
        "num_inference_steps": settings.num_steps,
        "guidance_scale": settings.guidance_scale,
        "generator": torch.Generator().manual_seed(job.seed),
        "output_type": "np",
        **kwargs,
    }


def generate_output(
    pipe: ControlNetPipeline,
    job: GenerationJob,
    settings: GenerationSettings,
    *,
    on_step: Callable[[int], None] | None = None,
) -> GeneratedOutput:
    """Generate ``job`` once with ``settings`` (whatever policy ``pipe`` has applied runs with it).

    Args:
        pipe: The pipeline.
        job: The sample.
        settings: How it is generated.
        on_step: Called with the step index after each denoising step (the scheduler step included).

    Returns:
        The image as diffusers' ``output_type="np"`` × 255, rounded to uint8 (its own float -> uint8
        conversion), and the final latent (the state after the last step, which the pipeline decodes).
    """
    final: dict[str, Any] = {}

    def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        final["latents"] = tensors["latents"]
        if on_step is not None:
            on_step(step)
        return {}

    output = pipe(**call_arguments(pipe, job, settings), callback_on_step_end=on_step_end)
    image = (np.asarray(output.images[0]) * 255).round().astype(np.uint8)
    latent = final["latents"][0].detach().float().cpu().numpy()
    return GeneratedOutput(image=image, latent=latent)


def iter_outputs(
    pipe: ControlNetPipeline,
    policy: Policy | None,
    jobs: Sequence[GenerationJob],
    settings: GenerationSettings,
) -> Iterator[GeneratedOutput]:
    """Generate ``jobs`` one by one with ``policy`` applied (``None``: full compute).

    The policy is applied when the first output is requested and removed when the generator finishes or is
    closed, so a consumer that stops early leaves the pipeline as it was.
    """
    from hgc_tune.executor import apply_policy  # imports torch: see call_arguments

    handle = apply_policy(pipe, policy) if policy is not None else None
    try:
        for job in jobs:
            yield generate_output(pipe, job, settings)
    finally:
        if handle is not None:
            handle.remove()
