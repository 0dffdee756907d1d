"""``profile_pipeline``: full-compute generation with observation hooks, aggregated over samples."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from hgc_tune.errors import ProfileError
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

__all__ = ["profile_pipeline", "condition_input"]

# What the statistics mean, recorded in every profile.json so a reader need not find this source.
_STATISTICS_NOTE: dict[str, str] = {
    "cos": "cosine similarity of the module's output at step s and at step s-1 (flattened, whole batch)",
    "rel_l1": "||x_s - x_{s-1}||_1 / ||x_{s-1}||_1 of the module's output (flattened, whole batch)",
    "js": (
        "Jensen-Shannon divergence (natural log) of the head-averaged cross-attention map at s vs s-1, per "
        "query distribution over keys, averaged over queries and batch"
    ),
    "map_rel_l1": (
        "relative L1 change of the head-averaged cross-attention map (softmax probabilities); the "
        "denominator ||A_{s-1}||_1 is the number of query rows (batch x queries), each row summing to 1"
    ),
    "out_rel_l1": "relative L1 change of the cross-attention module's output",
    "step_0": "NaN: step 0 has no previous step",
    "outputs": (
        "blocks: the main output (down blocks: hidden_states, not the residual tuple); controlnet: all "
        "down residuals and the mid residual concatenated (as scaled by conditioning_scale)"
    ),
    "batch": "with classifier-free guidance the batch is [uncond, cond]; statistics cover the whole batch",
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


def _check_full_compute(pipe: Any) -> None:
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


def _sample_fields(sample: Any, index: int, seed: int) -> tuple[str, str | None, int, Any]:
    for field in ("prompt", "condition_image"):
        if not hasattr(sample, field):
            raise ProfileError(
                f"sample {index} must have `.prompt` and `.condition_image()`, but it has no `{field}` "
                f"({type(sample).__name__})."
            )
    prompt = sample.prompt
    if not isinstance(prompt, str):
        raise ProfileError(f"sample {index}: `prompt` must be a string, but got prompt={prompt!r}.")
    negative = getattr(sample, "negative_prompt", None)
    own_seed = getattr(sample, "seed", None)
    sample_seed = int(own_seed) if own_seed is not None else seed + index
    image = sample.condition_image()
    # Several ControlNets (MultiControlNetModel): one condition image each, in their order.
    images = image if isinstance(image, list | tuple) else [image]
    for one in images:
        if not hasattr(one, "convert") or not hasattr(one, "size"):
            raise ProfileError(
                f"sample {index}: `condition_image()` must return a PIL image (or a list of them, one per "
                f"ControlNet), but returned {type(one).__name__}."
            )
    converted = [one.convert("RGB") for one in images]
    return prompt, negative, sample_seed, converted if isinstance(image, list | tuple) else converted[0]


def _dataset_digest(rows: list[tuple[str, str | None, int, Any]], *task_arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for prompt, negative, sample_seed, image in rows:
        images = image if isinstance(image, list) else [image]
        digest.update(json.dumps([prompt, negative, sample_seed, *(list(i.size) for i in images)]).encode())
        for one in images:
            digest.update(np.asarray(one, dtype=np.uint8).tobytes())
    # img2img / inpainting: the init images and masks (absent for text2img, whose digest is unchanged)
    for arrays in task_arrays:
        for array in arrays:
            digest.update(array.tobytes())
    return digest.hexdigest()


def _condition_array(image: Any, height: int, width: int) -> np.ndarray:
    """The condition at the generation size, uint8 ``[H, W, 3]`` (``[k, H, W, 3]`` for k ControlNets)."""
    from PIL import Image

    if isinstance(image, list):
        return np.stack([_condition_array(one, height, width) for one in image])

    if image.size != (width, height):
        # Nearest keeps label colours intact (a resampled segmentation map would blend classes). The
        # pipeline receives this same array, so the stored conditions reproduce the references exactly.
        image = image.resize((width, height), Image.NEAREST)
    return np.asarray(image, dtype=np.uint8)


def condition_input(array: np.ndarray) -> Any:
    """What the pipeline takes: a PIL image, or a list of them for several ControlNets (``[k, H, W, 3]``)."""
    from PIL import Image

    if array.ndim == 4:
        return [Image.fromarray(one) for one in array]
    return Image.fromarray(array)


def _task(pipe: Any) -> str:
    from hgc_tune.errors import ModelLoadError
    from hgc_tune.models._tasks import pipeline_task

    try:
        return pipeline_task(pipe)
    except ModelLoadError:  # another ControlNet pipeline class: called the text2img way
        return "text2img"


def _init_array(image: Any, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if image.size != (width, height):
        image = image.resize((width, height), Image.BICUBIC)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _mask_array(mask: Any, height: int, width: int) -> np.ndarray:
    from PIL import Image

    from hgc_tune.models._tasks import default_mask

    mask = default_mask(width, height) if mask is None else mask.convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.NEAREST)
    return np.asarray(mask, dtype=np.uint8)


def _count_macs(pipe: Any, height: int, width: int, model_name: str) -> Any:
    from hgc_tune.macs import count_pipeline_macs

    table = count_pipeline_macs(pipe, height=height, width=width, model_name=model_name)
    data = table.to_json()
    return json.loads(data) if isinstance(data, str) else _jsonable(data)


def profile_pipeline(
    pipe: Any,
    samples: Iterable[Any],
    *,
    num_steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    progress: bool = True,
    model_name: str = "",
    condition_type: str | None = None,
    dataset: str | None = None,
    mac_table: Any = None,
    strength: float | None = None,
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
        guidance_scale: Classifier-free guidance scale (``> 1`` enables CFG).
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

    Returns:
        The :class:`Profile`; save it with ``profile.save("runs/NAME")``.

    Raises:
        ProfileError: Bad arguments, no samples, a malformed sample, or a policy applied to ``pipe``.

    Example:
        >>> from hgc_tune.models import load_pipeline
        >>> from hgc_tune.data import open_dataset
        >>> pipe = load_pipeline("tiny")
        >>> samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=2)
        >>> profile = profile_pipeline(pipe, samples, num_steps=4, progress=False, model_name="tiny")
        >>> profile.stat("mean_rel_l1", "unet.mid_block").shape
        (4,)
    """
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    import hgc_tune
    from hgc_tune.models import model_fingerprint
    from hgc_tune.models._fingerprint import model_structure, weights_digest
    from hgc_tune.models._tasks import sample_task_images
    from hgc_tune.runtime import attach_run_context, release_run_context

    if condition_type is None:
        condition_type = str(getattr(samples, "condition_type", "") or "")
    if dataset is None:
        dataset = str(getattr(samples, "name", "") or "")
    # A hgc_tune.data.Dataset hashes its own rows and files; a search can reopen it and compare.
    content_hash = samples.content_hash() if callable(getattr(samples, "content_hash", None)) else None
    default_size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    height = default_size if height is None else height
    width = height if width is None else width
    _check_arguments(num_steps, guidance_scale, height, width)
    task = _task(pipe)
    if task == "text2img" and strength is not None:
        raise ProfileError(
            f"`strength` is for img2img and inpainting pipelines, but got strength={strength!r} for a "
            f"{type(pipe).__name__}; load the pipeline with task='img2img' or task='inpaint'."
        )
    if strength is not None and (
        not isinstance(strength, int | float) or isinstance(strength, bool) or not 0 < strength <= 1
    ):
        raise ProfileError(f"`strength` must be in (0, 1], but got strength={strength!r}.")
    rows, task_images = [], []
    for i, sample in enumerate(samples):
        rows.append(_sample_fields(sample, i, seed))
        task_images.append(
            sample_task_images(sample, rows[-1][3], task, where=f"sample {i}: ", error=ProfileError)
        )
    if not rows:
        raise ProfileError("`samples` must hold at least one sample, but it is empty.")
    init_arrays = [_init_array(init, height, width) for init, _ in task_images if init is not None]
    mask_arrays = [_mask_array(mask, height, width) for _, mask in task_images] if task == "inpaint" else []
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

    per_sample: list[dict[tuple[str, str], np.ndarray]] = []
    latents_out: list[np.ndarray] = []
    images_out: list[np.ndarray] = []

    from hgc_tune.models._tasks import generation_inputs

    steps_seen: set[int] = set()
    cfg_seen: set[bool] = set()
    used_strength: float | None = None
    context = attach_run_context(pipe)
    observer = ProfileObserver(pipe, context)
    bar = tqdm(total=len(rows) * num_steps, unit="step", desc="profile", disable=not progress)
    try:
        observer.attach()
        for index, (prompt, negative, sample_seed, image) in enumerate(rows):
            bar.set_postfix_str(f"sample {index + 1}/{len(rows)}", refresh=False)
            final: dict[str, Any] = {}

            def on_step_end(pipeline, i, t, tensors, final=final):
                # Called after the scheduler step: `latents` is the state after step i; the last one is
                # exactly what the pipeline decodes.
                final["latents"] = tensors["latents"]
                if bar.total != len(rows) * context.num_steps:
                    bar.total = len(rows) * context.num_steps
                bar.update(1)
                return {}

            inputs = generation_inputs(
                pipe,
                condition_input(_condition_array(image, height, width)),
                init_image=Image.fromarray(init_arrays[index]) if init_arrays else None,
                mask_image=Image.fromarray(mask_arrays[index]) if mask_arrays else None,
                strength=strength,
            )
            used_strength = inputs.get("strength")
            output = pipe(
                prompt=prompt,
                negative_prompt=negative,
                **inputs,
                height=height,
                width=width,
                num_inference_steps=num_steps,
                guidance_scale=guidance_scale,
                generator=torch.Generator().manual_seed(sample_seed),
                output_type="np",
                callback_on_step_end=on_step_end,
            )
            steps_seen.add(context.num_steps)
            cfg_seen.add(context.cfg)
            per_sample.append(observer.collect())
            latents_out.append(final["latents"][0].detach().float().cpu().numpy())
            # diffusers' own float -> uint8 conversion (numpy_to_pil): x * 255, rounded.
            images_out.append((np.asarray(output.images[0]) * 255).round().astype(np.uint8))
    finally:
        bar.close()
        observer.remove()
        release_run_context(pipe)

    if len(steps_seen) != 1:
        raise ProfileError(f"the samples ran with different numbers of denoising steps {sorted(steps_seen)}.")
    steps = steps_seen.pop()
    tensors: dict[str, np.ndarray] = {}
    for metric, key in observer.series_keys:
        values = np.stack([series[(metric, key)] for series in per_sample]).astype(np.float64)
        # Plain mean/std (not nan-): step 0 stays NaN, and so does any step a module did not run.
        aggregated = {"mean": values.mean(axis=0), "std": values.std(axis=0)}
        for aggregate in AGGREGATES:
            tensors[f"{stat_name(aggregate, metric)}/{key}"] = aggregated[aggregate].astype(np.float32)
    tensors[REFERENCE_LATENTS] = np.stack(latents_out).astype(np.float32)
    tensors[REFERENCE_IMAGES] = np.stack(images_out)
    tensors[REFERENCE_CONDITIONS] = np.stack([_condition_array(row[3], height, width) for row in rows])
    if init_arrays:
        tensors[REFERENCE_INIT_IMAGES] = np.stack(init_arrays)
    if mask_arrays:
        tensors[REFERENCE_MASKS] = np.stack(mask_arrays)

    import diffusers

    meta: dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "hgc_tune_version": hgc_tune.__version__,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "model": {
            "name": model_name,
            "fingerprint": model_fingerprint(pipe),
            "weights_digest": weights_digest(pipe),
            "structure": _jsonable(model_structure(pipe)),
            "dtype": str(pipe.unet.dtype).removeprefix("torch."),
            "device": str(pipe.device),
        },
        "dataset": {
            "name": dataset,
            "sha256": _dataset_digest(rows, init_arrays, mask_arrays),
            "content_hash": content_hash,
            "num_samples": len(rows),
        },
        "condition_type": condition_type,
        "task": task,
        "pipeline_class": type(pipe).__name__,
        "strength": used_strength,
        # Several ControlNets: how many condition images each sample has (absent: one).
        **({"conditions_per_sample": len(rows[0][3])} if isinstance(rows[0][3], list) else {}),
        "steps": steps,
        "num_inference_steps": num_steps,
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": _jsonable(dict(pipe.scheduler.config)),
        "resolution": {"height": height, "width": width},
        "guidance_scale": float(guidance_scale),
        "cfg": cfg_seen.pop(),
        "seeds": [row[2] for row in rows],
        "prompts": [row[0] for row in rows],
        "negative_prompts": [row[1] for row in rows],
        "statistics": {
            "block": list(BLOCK_METRICS),
            "attention": list(ATTENTION_METRICS),
            "aggregates": list(AGGREGATES),
            "notes": _STATISTICS_NOTE,
        },
        "block_keys": list(observer.blocks),
        "attention_keys": list(observer.attentions),
        "mac_table": mac_json,
    }
    return Profile(meta, tensors)
