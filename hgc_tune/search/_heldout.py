"""Full-compute references of the held-out samples, generated once and cached beside the profile.

The cache file ``<profile>/heldout/<key>.safetensors`` holds the uint8 images and float32 final latents; its
key is a digest of everything the outputs depend on (model fingerprint, scheduler and its configuration,
steps, guidance scale, resolution, and each sample's prompt, negative prompt, seed and condition pixels), and
is stored in the file's metadata too, so a changed setting never reads a stale file. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from hgc_tune._atomic import atomic_write
from hgc_tune.generation import GeneratedOutput, GenerationJob, GenerationSettings, iter_outputs
from hgc_tune.models import model_fingerprint
from hgc_tune.models._fingerprint import weights_digest

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

__all__ = ["HELDOUT_DIR", "heldout_key", "heldout_references"]

HELDOUT_DIR = "heldout"
_FORMAT = "hgc-tune-heldout-references"


def heldout_key(pipe: ControlNetPipeline, jobs: Sequence[GenerationJob], settings: GenerationSettings) -> str:
    """The digest that identifies the full-compute outputs of ``jobs`` under ``settings`` on ``pipe``."""
    digest = hashlib.sha256()
    head: dict[str, Any] = {
        "format": _FORMAT,
        "fingerprint": model_fingerprint(pipe),
        "weights": weights_digest(pipe),
        "dtype": str(pipe.unet.dtype),
        "scheduler": type(pipe.scheduler).__name__,
        # `_`-keys are bookkeeping (diffusers adds `_class_name`, `_diffusers_version` when a pipeline is
        # saved), not settings: they must not invalidate the cached references.
        "scheduler_config": {
            k: repr(v) for k, v in sorted(dict(pipe.scheduler.config).items()) if not k.startswith("_")
        },
        "settings": [settings.num_steps, settings.guidance_scale, settings.height, settings.width],
    }
    if settings.strength is not None:  # img2img / inpainting (text2img keys stay as they were)
        head["pipeline_class"] = type(pipe).__name__
        head["strength"] = settings.strength
    if settings.samples_per_call != 1:  # a sample's output depends on its batch (keys of 1 stay as they were)
        head["samples_per_call"] = settings.samples_per_call
    digest.update(json.dumps(head, sort_keys=True).encode())
    for job in jobs:
        # Several ControlNets: one condition image each.
        conditions = job.condition if isinstance(job.condition, list) else [job.condition]
        digest.update(
            json.dumps(
                [job.prompt, job.negative_prompt, job.seed, *(list(c.size) for c in conditions)]
            ).encode()
        )
        for condition in conditions:
            digest.update(np.asarray(condition, dtype=np.uint8).tobytes())
        for image in (job.init_image, job.mask_image):
            if image is not None:
                digest.update(json.dumps(list(image.size)).encode())
                digest.update(np.asarray(image, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def _load(path: Path, key: str, n: int) -> list[GeneratedOutput] | None:
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        if meta.get("format") != _FORMAT or meta.get("key") != key:
            return None
        tensors = load_file(str(path))
    except Exception:  # an unreadable or truncated cache file is regenerated, never trusted
        return None
    images, latents = tensors.get("images"), tensors.get("latents")
    if images is None or latents is None or len(images) != n or len(latents) != n:
        return None
    return [GeneratedOutput(image=images[i], latent=latents[i]) for i in range(n)]


def heldout_references(
    pipe: ControlNetPipeline,
    jobs: Sequence[GenerationJob],
    settings: GenerationSettings,
    *,
    cache_dir: str | os.PathLike[str] | None,
    on_output: Callable[[int], None] | None = None,
) -> tuple[list[GeneratedOutput], bool]:
    """Full-compute outputs of ``jobs``, from the cache when present, else generated (and cached).

    Args:
        pipe: The pipeline (no policy applied).
        jobs: The held-out samples.
        settings: The generation settings (the profile's).
        cache_dir: The profile folder (the cache goes to ``cache_dir/heldout/``); ``None``: no caching.
        on_output: Called with the sample index after each generated output.

    Returns:
        ``(outputs, from_cache)``.
    """
    key = heldout_key(pipe, jobs, settings)
    path: Path | None = None
    if cache_dir is not None:
        path = Path(cache_dir) / HELDOUT_DIR / f"{key[:24]}.safetensors"
        if path.is_file() and (cached := _load(path, key, len(jobs))) is not None:
            return cached, True
    outputs = []
    for i, output in enumerate(iter_outputs(pipe, None, jobs, settings)):
        outputs.append(output)
        if on_output is not None:
            on_output(i)
    if path is not None:
        tensors = {
            "images": np.ascontiguousarray(np.stack([o.image for o in outputs])),
            "latents": np.ascontiguousarray(np.stack([o.latent for o in outputs]).astype(np.float32)),
        }
        metadata = {"format": _FORMAT, "key": key, "samples": str(len(jobs))}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return outputs, False
