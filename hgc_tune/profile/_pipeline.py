"""Loading the pipeline a profile was made with: its model, ControlNet, dtype and exact scheduler, checked
against the profile's structural fingerprint and weights digest.

Everything that reuses a profile's references (a report regenerating samples, a search scoring policies)
needs this same pipeline; a pipeline of another structure or other weights would compare its outputs with
references it did not make.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import diffusers

from hgc_tune.errors import HgcTuneError, ProfileError
from hgc_tune.models import load_pipeline, model_fingerprint
from hgc_tune.models._fingerprint import weights_digest
from hgc_tune.models._loading import SCHEDULERS
from hgc_tune.models._lora import load_lora
from hgc_tune.profile._artifact import Profile

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

__all__ = ["load_profiled_pipeline", "check_profiled_pipeline"]

# torch dtype names as the profile records them -> the names `load_pipeline` takes.
_DTYPES: dict[str, str] = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def load_profiled_pipeline(
    profile: Profile,
    *,
    model: str | None = None,
    controlnet: str | Sequence[str] | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    error: type[HgcTuneError] = ProfileError,
    lora: Sequence[tuple[str, float]] = (),
) -> ControlNetPipeline:
    """Load the pipeline ``profile`` was made with, and check that it is that pipeline.

    The model is the profile's ``model.name`` (a preset, a local directory or a hub id), with its condition
    type, dtype and task (the img2img or inpainting pipeline class for such a profile); the scheduler is the
    profiled class with the profiled configuration, so generation repeats the references exactly.

    Args:
        profile: The :class:`~hgc_tune.profile.Profile`.
        model: Load this model instead of the profile's ``model.name`` (e.g. after moving a checkpoint).
        controlnet: A ControlNet directory or hub id (a list of them for several), for a base model that
            holds none.
        dtype: ``fp32``, ``fp16`` or ``bf16`` instead of the profiled dtype.
        device: A torch device string.
        error: The exception class to raise (the caller's own, e.g. ``ReportError``).
        lora: ``(path, scale)`` of each LoRA the profile was made with (see ``models._lora.load_lora``),
            loaded before the weights digest is compared.

    Returns:
        The ready pipeline, of the profiled class.

    Raises:
        HgcTuneError: (as ``error``) the profile names no model or an unknown scheduler, or the loaded
            pipeline's structural fingerprint or weights digest differs from the profile's.

    Example:
        >>> pipe = load_profiled_pipeline(Profile.load("runs/tiny-seg"))  # doctest: +SKIP
    """
    meta = profile.meta
    name = model or profile.model_name
    if not name:
        raise error("the profile records no model name; pass the model it was made with (CLI: --model).")
    scheduler_name = str(meta.get("scheduler", ""))
    scheduler_class = getattr(diffusers, scheduler_name, None) if scheduler_name else None
    known = {class_name: key for key, class_name in SCHEDULERS.items()}
    if scheduler_name not in known and scheduler_class is None:
        raise error(
            f"the profile's scheduler {scheduler_name!r} is neither one of {sorted(SCHEDULERS.values())} nor "
            "a diffusers scheduler; profile again with a diffusers scheduler."
        )
    pipe = load_pipeline(
        name,
        controlnet=controlnet,
        condition=profile.condition_type or None,
        scheduler=known.get(scheduler_name, "unipc"),
        dtype=dtype or _DTYPES.get(str(meta["model"].get("dtype", "float32")), "fp32"),
        device=device,
        task=profile.task,
    )
    if isinstance(meta.get("scheduler_config"), dict) and scheduler_class is not None:
        # The exact scheduler the references were generated with, not merely the same family.
        pipe.scheduler = scheduler_class.from_config(meta["scheduler_config"])
    if lora:
        for path, scale in lora:
            load_lora(pipe, path, scale)
    check_profiled_pipeline(profile, pipe, name=name, error=error)
    return pipe


def check_profiled_pipeline(
    profile: Profile,
    pipe: ControlNetPipeline,
    *,
    name: str | None = None,
    error: type[HgcTuneError] = ProfileError,
) -> None:
    """Raise ``error`` unless ``pipe`` is the pipeline ``profile`` was made with: the same pipeline class
    (text2img, img2img or inpainting), structural fingerprint and, when the profile records one, weights
    digest.

    Args:
        profile: The :class:`~hgc_tune.profile.Profile`.
        pipe: The pipeline at hand.
        name: The model ``pipe`` was loaded from, for the message (default: the profile's model).
        error: The exception class to raise (the caller's own, e.g. ``SearchError``).
    """
    label = f"model {name or profile.model_name!r}"
    profiled_class = profile.meta.get("pipeline_class")
    if profiled_class is not None and profiled_class != type(pipe).__name__:
        raise error(
            f"the profile was made with a {profiled_class} (task {profile.task!r}), but the pipeline is a "
            f"{type(pipe).__name__}: load the pipeline with task={profile.task!r}."
        )
    found = model_fingerprint(pipe)
    if found != profile.fingerprint:
        raise error(
            f"{label} has fingerprint {found!r}, but the profile was made with {profile.fingerprint!r} "
            "(another model): pass the model it was profiled with (CLI: --model, --controlnet), or profile "
            "this model first."
        )
    digest = weights_digest(pipe)
    if profile.weights_digest is not None and profile.weights_digest != digest:
        raise error(
            f"{label} has weights digest {digest!r}, but the profile was made with other weights of "
            f"this architecture ({profile.weights_digest!r}): pass the checkpoint it was profiled with, or "
            "profile this model again."
        )
