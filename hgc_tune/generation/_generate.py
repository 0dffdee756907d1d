"""Running the pipeline for a batch of jobs: the call every reference and every policy output goes through."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hgc_tune.errors import HgcTuneError, OutOfMemoryError
from hgc_tune.generation._inputs import GenerationJob, GenerationSettings
from hgc_tune.generation._memory import check_batch_fits
from hgc_tune.models._tasks import _family, default_mask, generation_inputs, pipeline_task

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.policy import Policy

__all__ = [
    "GeneratedOutput",
    "batches",
    "call_arguments",
    "generate_output",
    "generate_outputs",
    "iter_outputs",
]


@dataclass(frozen=True)
class GeneratedOutput:
    """A generated sample: the uint8 ``H×W×3`` image and the final float32 latent ``[4, h, w]``."""

    image: np.ndarray
    latent: np.ndarray


def batches(jobs: Sequence[GenerationJob], size: int) -> Iterator[list[GenerationJob]]:
    """``jobs`` in consecutive batches of ``size``, in order; the last batch takes the rest.

    The batches a job lands in depend only on its position and ``size``, so a run over the same jobs with the
    same size makes the same calls.
    """
    for start in range(0, len(jobs), size):
        yield list(jobs[start : start + size])


def _is_multi_controlnet(pipe: ControlNetPipeline) -> bool:
    controlnet = getattr(pipe, "controlnet", None)
    controlnet = getattr(controlnet, "_orig_mod", controlnet)  # a torch.compile'd ControlNet
    return hasattr(controlnet, "nets")


def _batched_condition(pipe: ControlNetPipeline, jobs: Sequence[GenerationJob]) -> list[Any]:
    """The condition images of a batch as the pipeline takes them: one per sample, or for several
    ControlNets one list per sample (``[[s1_c1, s1_c2], [s2_c1, s2_c2]]``), which only diffusers' SD text2img
    ControlNet pipeline accepts."""
    conditions = [job.condition for job in jobs]
    if not _is_multi_controlnet(pipe):
        return conditions
    if _family(pipe) != ("sd", "text2img"):
        raise HgcTuneError(
            f"samples_per_call={len(jobs)} with several ControlNets needs a pipeline that takes one list of "
            f"conditions per sample, but {type(pipe).__name__} takes one batch of conditions only (diffusers "
            "refuses nested lists there); use samples_per_call=1."
        )
    return [list(condition) for condition in conditions]


def _negative_prompts(pipe: ControlNetPipeline, jobs: Sequence[GenerationJob]) -> list[str] | None:
    """The batch's negative prompts: ``None`` when no sample has one, else one string per sample.

    A sample without one gets ``""``, which the SD pipelines encode as they encode a missing negative
    prompt. SDXL pipelines with ``force_zeros_for_empty_prompt`` zero a missing one instead, so a batch that
    mixes samples with and without one cannot be generated as each alone would be there, and is refused.
    """
    negatives = [job.negative_prompt for job in jobs]
    if all(negative is None for negative in negatives):
        return None
    if None in negatives and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        raise HgcTuneError(
            f"samples_per_call={len(jobs)}: the batch mixes samples with and without a negative prompt, "
            f"which {type(pipe).__name__} (force_zeros_for_empty_prompt) encodes differently in one call; "
            "give every sample a negative prompt or use samples_per_call=1."
        )
    return ["" if negative is None else negative for negative in negatives]


def call_arguments(
    pipe: ControlNetPipeline,
    jobs: GenerationJob | Sequence[GenerationJob],
    settings: GenerationSettings,
) -> dict[str, Any]:
    """The keyword arguments of the pipeline call that generates ``jobs`` (all but the step callback).

    One job is passed as diffusers' single-sample arguments; several as lists (prompts, negative prompts,
    condition, init images and masks) with one ``torch.Generator`` per sample, seeded with the sample's
    seed, so each sample starts from its seed's noise.
    """
    # torch (and the executor below) here, not at the top: `hgc_tune.search` imports this package, and the
    # search command's argument checks (`hgc_tune.search.SearchConfig`) must run without torch.
    import torch

    batch = [jobs] if isinstance(jobs, GenerationJob) else list(jobs)
    if not batch:
        raise HgcTuneError("a pipeline call needs at least one job, but got none.")
    single = len(batch) == 1
    first = batch[0]
    kwargs: dict[str, Any] = {}
    if settings.controlnet_scale != 1.0:
        kwargs["controlnet_conditioning_scale"] = float(settings.controlnet_scale)
    condition = first.condition if single else _batched_condition(pipe, batch)
    if first.init_image is None and first.mask_image is None and settings.strength is None:
        kwargs["image"] = condition
    else:  # img2img / inpainting: the init image as `image`, the condition as `control_image`
        init: Any = first.init_image
        mask: Any = first.mask_image
        if not single:
            init = [job.init_image for job in batch]
            mask = None
            if pipeline_task(pipe) == "inpaint":  # each sample's mask, the default one made as for one call
                mask = [_mask_of(job) for job in batch]
        kwargs.update(
            generation_inputs(pipe, condition, init_image=init, mask_image=mask, strength=settings.strength)
        )
    generators = [torch.Generator().manual_seed(job.seed) for job in batch]
    return {
        "prompt": first.prompt if single else [job.prompt for job in batch],
        "negative_prompt": first.negative_prompt if single else _negative_prompts(pipe, batch),
        "height": settings.height,
        "width": settings.width,
        "num_inference_steps": settings.num_steps,
        "guidance_scale": settings.guidance_scale,
        "generator": generators[0] if single else generators,
        "output_type": "np",
        **kwargs,
    }


def _mask_of(job: GenerationJob) -> Any:
    """A job's inpainting mask: its own, or the default mask at its init image's size."""
    if job.mask_image is not None:
        return job.mask_image
    if job.init_image is None:
        raise HgcTuneError(f"an inpainting job needs an init image, but the job of seed {job.seed} has none.")
    return default_mask(*job.init_image.size)


def _is_out_of_memory(error: BaseException) -> bool:
    from hgc_tune.models._loading import _is_out_of_memory as allocator_failed

    return allocator_failed(error)


def generate_outputs(
    pipe: ControlNetPipeline,
    jobs: Sequence[GenerationJob],
    settings: GenerationSettings,
    *,
    on_step: Callable[[int], None] | None = None,
) -> list[GeneratedOutput]:
    """Generate ``jobs`` in one pipeline call with ``settings`` (whatever policy ``pipe`` has applied runs
    with it).

    Args:
        pipe: The pipeline.
        jobs: The samples of the call (one batch; :func:`iter_outputs` splits a run into batches).
        settings: How they are generated.
        on_step: Called with the step index after each denoising step (the scheduler step included).

    Returns:
        Per job, in order: the image as diffusers' ``output_type="np"`` × 255, rounded to uint8 (its own
        float -> uint8 conversion), and the final latent (the state after the last step, which the pipeline
        decodes).

    Raises:
        OutOfMemoryError: A batch of several jobs that the memory estimate says does not fit, or whose call
            ran out of memory; the message names a smaller ``samples_per_call``.
    """
    final: dict[str, Any] = {}

    def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        final["latents"] = tensors["latents"]
        if on_step is not None:
            on_step(step)
        return {}

    arguments = call_arguments(pipe, jobs if len(jobs) > 1 else jobs[0], settings)
    if len(jobs) > 1:
        check_batch_fits(pipe, settings)
    try:
        output = pipe(**arguments, callback_on_step_end=on_step_end)
    except Exception as error:
        if len(jobs) == 1 or not _is_out_of_memory(error):
            raise
        # Not retried smaller: the outputs would depend on where the retry split the batch.
        raise OutOfMemoryError(
            f"a call of {len(jobs)} samples ran out of memory ({type(error).__name__}); use "
            f"samples_per_call={max(1, len(jobs) // 2)} or fewer."
        ) from error
    latents = final["latents"].detach().float().cpu().numpy()
    return [
        GeneratedOutput(image=(np.asarray(image) * 255).round().astype(np.uint8), latent=latents[i])
        for i, image in enumerate(output.images[: len(jobs)])
    ]


def generate_output(
    pipe: ControlNetPipeline,
    job: GenerationJob,
    settings: GenerationSettings,
    *,
    on_step: Callable[[int], None] | None = None,
) -> GeneratedOutput:
    """Generate ``job`` alone in one call (see :func:`generate_outputs`)."""
    return generate_outputs(pipe, [job], settings, on_step=on_step)[0]


def iter_outputs(
    pipe: ControlNetPipeline,
    policy: Policy | None,
    jobs: Sequence[GenerationJob],
    settings: GenerationSettings,
) -> Iterator[GeneratedOutput]:
    """Generate ``jobs`` with ``policy`` applied (``None``: full compute), ``settings.samples_per_call`` per
    pipeline call (:func:`batches`), yielding the outputs one by one in job order.

    The policy is applied when the first output is requested and removed when the generator finishes or is
    closed, so a consumer that stops early leaves the pipeline as it was (and no further batch is generated).
    """
    from hgc_tune.executor import apply_policy  # imports torch: see call_arguments

    handle = apply_policy(pipe, policy) if policy is not None else None
    try:
        for batch in batches(jobs, settings.samples_per_call):
            yield from generate_outputs(pipe, batch, settings)
    finally:
        if handle is not None:
            handle.remove()
