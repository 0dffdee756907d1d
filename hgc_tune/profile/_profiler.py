"""``profile_pipeline``: full-compute generation with observation hooks, aggregated over samples."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import diffusers
import numpy as np
import torch
from tqdm.auto import tqdm

import hgc_tune
from hgc_tune._progress import PROFILE, ProgressCallback
from hgc_tune.errors import HgcTuneError, ProfileError
from hgc_tune.generation import (
    GenerationJob,
    GenerationSettings,
    batches,
    generate_outputs,
    jobs_from_samples,
)
from hgc_tune.generation._inputs import (
    condition_array,
    generation_size,
    init_array,
    job_from_arrays,
    mask_array,
)
from hgc_tune.generation._memory import check_batch_fits
from hgc_tune.macs import count_pipeline_macs
from hgc_tune.models import model_fingerprint
from hgc_tune.models._fingerprint import model_structure, weights_digest
from hgc_tune.models._tasks import task_and_strength
from hgc_tune.profile._artifact import (
    AGGREGATES,
    FORMAT,
    REFERENCE_CONDITIONS,
    REFERENCE_IMAGES,
    REFERENCE_INIT_IMAGES,
    REFERENCE_LATENTS,
    REFERENCE_MASKS,
    SCHEMA_VERSION,
    Profile,
    stat_name,
)
from hgc_tune.profile._observer import ATTENTION_METRICS, BLOCK_METRICS, ProfileObserver
from hgc_tune.runtime import attach_run_context, release_run_context

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.macs import MacTable

__all__ = ["profile_pipeline"]

# What the statistics mean, recorded in every profile.json so a reader need not find this source.
_STATISTICS_NOTE: dict[str, str] = {
    "cos": "cosine similarity of the module's output at step s and at step s-1 (flattened, per sample)",
    "rel_l1": "||x_s - x_{s-1}||_1 / ||x_{s-1}||_1 of the module's output (flattened, per sample)",
    "js": (
        "Jensen-Shannon divergence (natural log) of the head-averaged cross-attention map at s vs s-1, per "
        "query distribution over keys, averaged over the sample's queries (and CFG halves)"
    ),
    "map_rel_l1": (
        "relative L1 change of the head-averaged cross-attention map (softmax probabilities); the "
        "denominator ||A_{s-1}||_1 is the sample's number of query rows (CFG halves x queries), each row "
        "summing to 1"
    ),
    "out_rel_l1": "relative L1 change of the cross-attention module's output",
    "step_0": "NaN: step 0 has no previous step",
    "outputs": (
        "blocks: the main output (down blocks: hidden_states, not the residual tuple); controlnet: all "
        "down residuals and the mid residual concatenated (as scaled by conditioning_scale)"
    ),
    "batch": (
        "samples_per_call samples per pipeline call; with classifier-free guidance the batch is "
        "[uncond_1..B, cond_1..B] and each sample's statistics cover its uncond and cond rows"
    ),
    "aggregates": "mean and std (population, ddof=0) over samples, per step",
    "references": (
        "reference/latents: final latents before the VAE's scaling; reference/images: the pipeline's "
        "output_type='np' images x 255, rounded, uint8; reference/conditions: condition images at the "
        "generation resolution (nearest-neighbour resize where they differed), uint8; img2img and "
        "inpainting: reference/init_images (bicubic resize) and, inpainting, reference/masks (uint8, 255 = "
        "repainted, nearest-neighbour resize), as the pipeline received them"
    ),
    "steps": (
        "steps: the denoising steps each sample ran; img2img and inpainting with strength < 1 run fewer "
        "than num_inference_steps (diffusers skips the first timesteps), and only the steps run count"
    ),
}


def _check_full_compute(pipe: ControlNetPipeline) -> None:
    # A compute-skipping policy applied to the pipeline would make the profile observe cached outputs and
    # record them as the full-compute reference.
    for component in ("unet", "controlnet"):
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for name, module in model.named_modules():
            registry = getattr(module, "_diffusers_hook", None)
            hooks = [h for h in getattr(registry, "hooks", {}) if str(h).startswith("hgc")]
            if hooks:
                where = f"{component}.{name}" if name else component
                raise ProfileError(
                    f"the pipeline has hgc-tune hooks {hooks} on {where!r}: profiling needs full compute; "
                    "remove the applied policy (handle.remove()) first."
                )


def _check_arguments(num_steps: int, guidance_scale: float, height: int, width: int) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ProfileError(f"`num_steps` must be a positive integer, but got num_steps={num_steps!r}.")
    if not isinstance(guidance_scale, int | float) or not math.isfinite(guidance_scale):
        raise ProfileError(
            f"`guidance_scale` must be a finite number, but got guidance_scale={guidance_scale!r}."
        )
    for name, value in (("height", height), ("width", width)):
        # The same rule as the pipeline's own check, made before minutes of MAC counting and generation.
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % 8:
            raise ProfileError(f"`{name}` must be a positive multiple of 8, but got {name}={value!r}.")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _dataset_digest(jobs: list[GenerationJob], *task_arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for job in jobs:
        images = job.condition if isinstance(job.condition, list) else [job.condition]
        digest.update(
            json.dumps([job.prompt, job.negative_prompt, job.seed, *(list(i.size) for i in images)]).encode()
        )
        for one in images:
            digest.update(np.asarray(one, dtype=np.uint8).tobytes())
    # img2img / inpainting: the init images and masks (absent for text2img, whose digest is unchanged)
    for arrays in task_arrays:
        for array in arrays:
            digest.update(array.tobytes())
    return digest.hexdigest()


def _count_macs(pipe: ControlNetPipeline, height: int, width: int, model_name: str) -> Any:
    table = count_pipeline_macs(pipe, height=height, width=width, model_name=model_name)
    data = table.to_json()
    return json.loads(data) if isinstance(data, str) else _jsonable(data)


@dataclass(frozen=True)
class _ProfiledInputs:
    """The samples' inputs at the generation size, as the profile stores them, and the jobs made of exactly
    those arrays (so a profile's saved inputs regenerate its references)."""

    jobs: list[GenerationJob]
    conditions: list[np.ndarray]
    inits: list[np.ndarray]
    masks: list[np.ndarray]

    @classmethod
    def of(cls, sampled: list[GenerationJob], task: str, height: int, width: int) -> _ProfiledInputs:
        """The inputs of the jobs made from the dataset samples (``sampled``), at ``height`` × ``width``."""
        conditions = [condition_array(job.condition, height, width) for job in sampled]
        inits = [init_array(job.init_image, height, width) for job in sampled if job.init_image is not None]
        masks = [mask_array(job.mask_image, height, width) for job in sampled] if task == "inpaint" else []
        jobs = [
            job_from_arrays(
                job.prompt,
                job.negative_prompt,
                job.seed,
                conditions[i],
                inits[i] if inits else None,
                masks[i] if masks else None,
            )
            for i, job in enumerate(sampled)
        ]
        return cls(jobs, conditions, inits, masks)


@dataclass
class _ObservedRun:
    """What the observed full-compute generation of every sample recorded."""

    series_keys: list[tuple[str, str]]
    blocks: list[str]
    attentions: list[str]
    per_sample: list[dict[tuple[str, str], np.ndarray]] = field(default_factory=list)
    latents: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    steps: set[int] = field(default_factory=set)
    cfg: set[bool] = field(default_factory=set)

    def tensors(self) -> dict[str, np.ndarray]:
        """The aggregated statistics and the reference outputs."""
        tensors: dict[str, np.ndarray] = {}
        for metric, key in self.series_keys:
            values = np.stack([series[(metric, key)] for series in self.per_sample]).astype(np.float64)
            # Plain mean/std (not nan-): step 0 stays NaN, and so does any step a module did not run.
            aggregated = {"mean": values.mean(axis=0), "std": values.std(axis=0)}
            for aggregate in AGGREGATES:
                tensors[f"{stat_name(aggregate, metric)}/{key}"] = aggregated[aggregate].astype(np.float32)
        tensors[REFERENCE_LATENTS] = np.stack(self.latents).astype(np.float32)
        tensors[REFERENCE_IMAGES] = np.stack(self.images)
        return tensors


def _observe(
    pipe: ControlNetPipeline,
    jobs: list[GenerationJob],
    settings: GenerationSettings,
    progress: bool,
    on_progress: ProgressCallback | None = None,
) -> _ObservedRun:
    """Generate every job at full compute with the observation hooks attached."""
    context = attach_run_context(pipe)
    observer = ProfileObserver(pipe, context)
    run = _ObservedRun(observer.series_keys, list(observer.blocks), list(observer.attentions))
    total = len(jobs) * settings.num_steps
    bar = tqdm(total=total, unit="step", desc="profile", disable=not progress)
    done = 0

    try:
        observer.attach()
        if on_progress is not None:
            on_progress(PROFILE, 0, len(jobs))
        for batch in batches(jobs, settings.samples_per_call):

            def on_step(step: int, size: int = len(batch)) -> None:
                # a step of a call advances every sample of it
                if bar.total != len(jobs) * context.num_steps:
                    bar.total = len(jobs) * context.num_steps
                bar.update(size)

            bar.set_postfix_str(f"sample {done + len(batch)}/{len(jobs)}", refresh=False)
            observer.samples_per_call = len(batch)
            outputs = generate_outputs(pipe, batch, settings, on_step=on_step)
            done += len(batch)
            run.steps.add(context.num_steps)
            run.cfg.add(context.cfg)
            run.per_sample.extend(observer.collect())
            run.latents.extend(output.latent for output in outputs)
            run.images.extend(output.image for output in outputs)
            if on_progress is not None:
                on_progress(PROFILE, done, len(jobs))
    finally:
        bar.close()
        observer.remove()
        release_run_context(pipe)
    if len(run.steps) != 1:
        raise ProfileError(f"the samples ran with different numbers of denoising steps {sorted(run.steps)}.")
    return run


def profile_pipeline(
    pipe: ControlNetPipeline,
    samples: Iterable[Any],
    *,
    num_steps: int = 20,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    progress: bool = True,
    model_name: str = "",
    condition_type: str | None = None,
    dataset: str | None = None,
    mac_table: MacTable | None = None,
    strength: float | None = None,
    samples_per_call: int = 1,
    on_progress: ProgressCallback | None = None,
) -> Profile:
    """Profile a pipeline: run every sample at full compute and record per-step statistics.

    For every cacheable block of the U-Net and the ControlNet (and the whole ControlNet, key ``controlnet``)
    the cosine similarity and relative L1 change of its output against the previous step; for every
    cross-attention (``attn2``) module the drift of its head-averaged attention map (relative L1,
    Jensen-Shannon divergence) and the relative change of its output. Each is averaged over samples per step
    (mean and population std). The profile also holds the per-module MAC table and the reference outputs
    (final latents, uint8 images, condition images) with their seeds, so a search can measure fidelity
    against full compute without recomputing it. See HGC, https://arxiv.org/abs/2511.11031.

    Observation only: the hooks never change what a module computes, so the images equal those of an
    unprofiled pipeline for the same seeds.

    An img2img or inpainting pipeline (``load_pipeline(..., task="img2img" | "inpaint")``) is called with
    each sample's init image (its ``init_image()``, else its ``ground_truth_image()``, else its condition
    image) and, for inpainting, its ``mask_image()`` (default: the middle half of the image repainted), at
    ``strength``; the profile records them, and its ``num_steps`` counts the steps actually run (20 steps at
    strength 0.7 run 14).

    Args:
        pipe: A ControlNet pipeline (text2img, img2img or inpainting; e.g. from
            :func:`hgc_tune.models.load_pipeline`) with no policy applied.
        samples: Objects with ``.prompt``, ``.condition_image()`` (PIL), ``.negative_prompt`` and ``.seed``
            (``None``: ``seed + index``), e.g. an :func:`hgc_tune.data.open_dataset` dataset.
        num_steps: ``num_inference_steps`` of every call (img2img and inpainting run fewer when
            ``strength < 1``).
        guidance_scale: Classifier-free guidance scale (``> 1`` enables CFG); ``None``: the model's
            recommended one (:func:`hgc_tune.models.pipeline_guidance`), which the profile records.
        height: Image height; default the U-Net's sample size × the VAE scale factor.
        width: Image width; default as ``height``.
        seed: Base seed for samples without their own.
        progress: Show a tqdm bar over samples × steps (on stderr).
        model_name: Recorded model name (e.g. the preset).
        condition_type: Recorded condition type; default the samples' ``condition_type`` attribute, if any.
        dataset: Recorded dataset label; default the samples' ``name`` attribute, if any. The profile also
            records a sha256 over the samples used (prompts, negative prompts, seeds, condition pixels) and,
            for an :class:`hgc_tune.data.Dataset`, its ``content_hash()``.
        mac_table: A :class:`hgc_tune.macs.MacTable` already counted for this pipeline at this resolution
            (e.g. when profiling several condition types of one model); default: count it.
        strength: img2img and inpainting only: the denoising strength in (0, 1] (default: diffusers' default,
            0.8 for img2img, 1.0 for inpainting).
        samples_per_call: How many samples one pipeline call generates (in sample order; the last call takes
            the rest). A sample's reference depends on its batch, so the profile records this and a search
            generates its trials batched alike; the statistics are per sample whatever the batching.
        on_progress: Called as ``on_progress("profile", done, total)`` before the first sample and after each
            (see :mod:`hgc_tune._progress`), e.g. for a status line.

    Returns:
        The :class:`Profile`; save it with ``profile.save("runs/NAME")``.

    Raises:
        ProfileError: Bad arguments, no samples, a malformed sample, or a policy applied to ``pipe``.
        OutOfMemoryError: ``samples_per_call`` samples do not fit in memory (the message names a size that
            does).

    Example:
        >>> from hgc_tune.models import load_pipeline
        >>> from hgc_tune.data import open_dataset
        >>> pipe = load_pipeline("tiny")
        >>> samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=2)
        >>> profile = profile_pipeline(pipe, samples, num_steps=4, progress=False, model_name="tiny")
        >>> profile.stat("mean_rel_l1", "unet.mid_block").shape
        (4,)
    """
    if condition_type is None:
        condition_type = str(getattr(samples, "condition_type", "") or "")
    if dataset is None:
        dataset = str(getattr(samples, "name", "") or "")
    # A hgc_tune.data.Dataset hashes its own rows and files; a search can reopen it and compare.
    hash_of = getattr(samples, "content_hash", None)
    content_hash = hash_of() if callable(hash_of) else None
    height, width = generation_size(pipe, height, width)
    if guidance_scale is None:
        from hgc_tune.models import pipeline_guidance

        guidance_scale = pipeline_guidance(pipe).scale
    _check_arguments(num_steps, guidance_scale, height, width)
    task, strength = task_and_strength(pipe, strength, error=ProfileError)
    try:
        settings = GenerationSettings(
            num_steps, guidance_scale, height, width, strength=strength, samples_per_call=samples_per_call
        )
    except HgcTuneError as e:
        raise ProfileError(str(e)) from e
    check_batch_fits(pipe, settings)  # before minutes of MAC counting
    jobs = jobs_from_samples(samples, seed=seed, task=task, error=ProfileError)
    if not jobs:
        raise ProfileError("`samples` must hold at least one sample, but it is empty.")
    inputs = _ProfiledInputs.of(jobs, task, height, width)
    _check_full_compute(pipe)
    if mac_table is None:
        mac_json = _count_macs(pipe, height, width, model_name)
    elif (mac_table.height, mac_table.width) != (height, width):
        raise ProfileError(
            f"`mac_table` must be counted at the profiled resolution {height}x{width}, but it was counted at "
            f"{mac_table.height}x{mac_table.width}."
        )
    else:
        mac_json = _jsonable(mac_table.to_json())
    run = _observe(pipe, inputs.jobs, settings, progress, on_progress)
    tensors = run.tensors()
    tensors[REFERENCE_CONDITIONS] = np.stack(inputs.conditions)
    if inputs.inits:
        tensors[REFERENCE_INIT_IMAGES] = np.stack(inputs.inits)
    if inputs.masks:
        tensors[REFERENCE_MASKS] = np.stack(inputs.masks)
    dataset_meta = {
        "name": dataset,
        "sha256": _dataset_digest(jobs, inputs.inits, inputs.masks),
        "content_hash": content_hash,
        "num_samples": len(jobs),
    }
    recorded = {"model_name": model_name, "condition_type": condition_type, "task": task}
    return Profile(_meta(pipe, jobs, settings, run, recorded, dataset_meta, mac_json), tensors)


def _meta(
    pipe: ControlNetPipeline,
    jobs: list[GenerationJob],
    settings: GenerationSettings,
    run: _ObservedRun,
    recorded: dict[str, str],
    dataset: dict[str, Any],
    mac_json: Any,
) -> dict[str, Any]:
    """``profile.json``'s content but the statistics' and references' tensors."""
    first = jobs[0].condition
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "hgc_tune_version": hgc_tune.__version__,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "model": {
            "name": recorded["model_name"],
            "fingerprint": model_fingerprint(pipe),
            "weights_digest": weights_digest(pipe),
            "structure": _jsonable(model_structure(pipe)),
            "dtype": str(pipe.unet.dtype).removeprefix("torch."),
            "device": str(pipe.device),
        },
        "dataset": dataset,
        "condition_type": recorded["condition_type"],
        "task": recorded["task"],
        "pipeline_class": type(pipe).__name__,
        "strength": settings.strength,
        # Several ControlNets: how many condition images each sample has (absent: one).
        **({"conditions_per_sample": len(first)} if isinstance(first, list) else {}),
        "steps": next(iter(run.steps)),
        "num_inference_steps": settings.num_steps,
        "samples_per_call": settings.samples_per_call,
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": _jsonable(dict(pipe.scheduler.config)),
        "resolution": {"height": settings.height, "width": settings.width},
        "guidance_scale": float(settings.guidance_scale),
        "cfg": next(iter(run.cfg)),
        "seeds": [job.seed for job in jobs],
        "prompts": [job.prompt for job in jobs],
        "negative_prompts": [job.negative_prompt for job in jobs],
        "statistics": {
            "block": list(BLOCK_METRICS),
            "attention": list(ATTENTION_METRICS),
            "aggregates": list(AGGREGATES),
            "notes": _STATISTICS_NOTE,
        },
        "block_keys": run.blocks,
        "attention_keys": run.attentions,
        "mac_table": mac_json,
    }
