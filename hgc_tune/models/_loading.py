"""Build a ready ControlNet pipeline (text2img, img2img or inpainting) from a preset, a local directory or
a hub id: a ``StableDiffusionControlNet…Pipeline`` for SD1.5-shaped models, a
``StableDiffusionXLControlNet…Pipeline`` for SDXL-shaped ones."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hgc_tune._json import load_json_file
from hgc_tune.errors import (
    IncompatibleControlNetError,
    ModelLoadError,
    ModelNotFoundError,
    NotAPipelineError,
    UnknownPresetError,
)
from hgc_tune.models._presets import (
    PIPELINE_CLASSES,
    PRESETS,
    SD15_SCHEDULER_CONFIG,
    build_preset_components,
    build_shape_only_components,
)

__all__ = ["SCHEDULERS", "DTYPES", "load_pipeline", "make_scheduler", "check_controlnet_fits"]

SCHEDULERS: dict[str, str] = {
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16")

# The U-Net configuration fields a ControlNet's residuals depend on; any difference means its residuals
# cannot be added to the U-Net's skip connections.
_CONTROLNET_FIT_FIELDS: tuple[str, ...] = (
    "in_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "cross_attention_dim",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def make_scheduler(name: str, config: dict[str, Any] | None = None):
    """Instantiate the scheduler ``name`` (one of :data:`SCHEDULERS`) from a scheduler config."""
    import diffusers

    if name not in SCHEDULERS:
        raise ModelLoadError(f"`scheduler` must be one of {sorted(SCHEDULERS)}, but got scheduler={name!r}.")
    cls = getattr(diffusers, SCHEDULERS[name])
    return cls.from_config(dict(config if config is not None else SD15_SCHEDULER_CONFIG))


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"`dtype` must be one of {list(DTYPES)}, but got dtype={dtype!r}.")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def check_controlnet_fits(
    unet_config: Any, controlnet_config: Any, controlnet_name: str = "controlnet", *, task: str | None = None
) -> None:
    """Raise :class:`IncompatibleControlNetError` if the ControlNet's residuals cannot feed the U-Net.

    For ``task="inpaint"`` a 9-channel U-Net (an inpainting checkpoint: latents, mask and masked-image
    latents) fits a 4-channel ControlNet, which diffusers' ControlNet inpainting pipeline feeds the latents.
    """
    diffs = []
    for field in _CONTROLNET_FIT_FIELDS:
        expected, got = unet_config.get(field), controlnet_config.get(field)
        if isinstance(expected, list | tuple) and isinstance(got, list | tuple):
            expected, got = list(expected), list(got)
        if field == "in_channels" and (expected, got) == (9, 4):
            if task == "inpaint":
                continue
            diffs.append(
                "in_channels: base U-Net has 9 (an inpainting U-Net: load it with task='inpaint'), "
                "ControlNet has 4"
            )
        elif expected != got:
            diffs.append(f"{field}: base U-Net has {expected!r}, ControlNet has {got!r}")
    if diffs:
        raise IncompatibleControlNetError(
            f"ControlNet {controlnet_name!r} does not fit the base model: " + "; ".join(diffs) + "."
        )


def _is_local(ref: str) -> bool:
    return (
        os.path.exists(ref) or ref.startswith((".", "/", "~")) or os.sep in ref.rstrip("/").split("/", 1)[0]
    )


def _resolve_local_dir(ref: str, kind: str, marker: str) -> Path:
    path = Path(ref).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"{kind} directory {ref!r} does not exist.")
    if not path.is_dir() or not (path / marker).is_file():
        raise NotAPipelineError(
            f"{kind} {ref!r} is not a diffusers {'pipeline' if marker == 'model_index.json' else 'model'} "
            f"directory: expected a {marker} in it."
        )
    return path


def _load_controlnet(ref: str, torch_dtype):
    from diffusers import ControlNetModel

    if _is_local(ref) or not _HUB_ID.match(ref):
        path = _resolve_local_dir(ref, "ControlNet", "config.json")
        config = load_json_file(path / "config.json", what="ControlNet config", error=NotAPipelineError)
        class_name = config.get("_class_name") if isinstance(config, dict) else None
        if class_name != "ControlNetModel":
            raise NotAPipelineError(
                f"ControlNet {ref!r} holds a {class_name!r}, but a 'ControlNetModel' was expected."
            )
        ref = str(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            return ControlNetModel.from_pretrained(ref, torch_dtype=torch_dtype)
    except OSError as e:
        raise ModelNotFoundError(f"could not load ControlNet {ref!r}: {e}") from e


def _pipeline_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _is_sdxl(index: Any, unet_config: Any) -> bool:
    """Whether a base model is SDXL-shaped: an SDXL pipeline index, or a U-Net with the ``text_time``
    addition embedding (pooled text embeddings and size/crop time ids)."""
    if isinstance(index, dict) and str(index.get("_class_name", "")).startswith("StableDiffusionXL"):
        return True
    return isinstance(unet_config, dict) and unet_config.get("addition_embed_type") == "text_time"


def _from_pretrained(base: str, controlnet_ref: str | list[str] | None, torch_dtype, task: str = "text2img"):
    from diffusers import UNet2DConditionModel

    index: Any = None
    unet_config: Any = None
    if _is_local(base) or not _HUB_ID.match(base):
        base = str(_resolve_local_dir(base, "base model", "model_index.json"))
        index = load_json_file(
            Path(base) / "model_index.json", what="pipeline index", error=NotAPipelineError
        )
        if not isinstance(index, dict) or "unet" not in index:
            raise NotAPipelineError(f"base model {base!r} has no U-Net in its model_index.json.")
        has_own_controlnet = "controlnet" in index
    else:
        has_own_controlnet = False
    kwargs: dict[str, Any] = {
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    if controlnet_ref is not None:
        refs = [controlnet_ref] if isinstance(controlnet_ref, str) else list(controlnet_ref)
        try:
            unet_config = UNet2DConditionModel.load_config(base, subfolder="unet")
        except OSError as e:
            raise ModelNotFoundError(f"could not read the U-Net configuration of {base!r}: {e}") from e
        controlnets = []
        for ref in refs:
            controlnets.append(_load_controlnet(ref, torch_dtype))
            check_controlnet_fits(unet_config, controlnets[-1].config, ref, task=task)
        kwargs["controlnet"] = controlnets[0]
    elif not has_own_controlnet:
        raise ModelLoadError(
            f"base model {base!r} holds no ControlNet: pass one with `controlnet=` "
            "(CLI: --controlnet DIR|ID)."
        )
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.36 renamed `torch_dtype` to `dtype`; the old name keeps older releases working.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            if _is_sdxl(index, unet_config):
                # SDXL pipelines have no safety checker; the invisible watermark would change the images.
                kwargs = {k: v for k, v in kwargs.items() if k == "controlnet"} | {"add_watermarker": False}
                cls = _pipeline_class("StableDiffusionXLControlNetPipeline")
            else:
                cls = _pipeline_class("StableDiffusionControlNetPipeline")
            pipe = cls.from_pretrained(base, torch_dtype=torch_dtype, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(f"could not load base model {base!r}: {e}") from e
    if controlnet_ref is not None and not isinstance(controlnet_ref, str):
        # Several ControlNets: the pipeline diffusers builds from a list (a MultiControlNetModel). Loading
        # takes one ControlNet, as the base model's index names a single one.
        components = {**pipe.components, "controlnet": controlnets}
        extra = (
            {"add_watermarker": False} if _is_sdxl(index, unet_config) else {"requires_safety_checker": False}
        )
        pipe = type(pipe)(**components, **extra)
    return pipe


def load_pipeline(
    model: str,
    *,
    controlnet: str | Sequence[str] | None = None,
    condition: str | None = None,
    scheduler: str = "unipc",
    dtype: str = "fp32",
    device: str = "cpu",
    seed: int = 0,
    task: str = "text2img",
    shape_only: bool = False,
):
    """Return a ready ControlNet pipeline: ``StableDiffusionControlNetPipeline``
    (``StableDiffusionXLControlNetPipeline`` for the SDXL presets and SDXL checkpoints), or for
    ``task="img2img"`` / ``"inpaint"`` the img2img / inpainting pipeline of that family over the same
    components (see :func:`~hgc_tune.models._tasks.pipeline_for_task`).

    Args:
        model: A preset name (``tiny``, ``sd15``, ``shapes``, ``tiny-sdxl``, ``sdxl``), a local diffusers
            pipeline directory, or a hub id.
        controlnet: A ControlNet directory or hub id, or a list of them for several ControlNets at once
            (diffusers' ``MultiControlNetModel``, run in the list's order). Required for a base model that
            holds none; for the ``shapes`` preset, ``condition`` picks the shipped ControlNet instead.
        condition: The condition type (``shapes`` preset: ``seg``, ``canny``, ``hed`` or ``depth``).
            Several, joined by commas (``seg,depth``), give a ``MultiControlNetModel`` with one ControlNet
            per type: the shipped ones for ``shapes``, random ones for ``tiny`` and ``sd15``.
        scheduler: One of :data:`SCHEDULERS`; UniPC by default, as in ControlNet++'s evaluation.
        dtype: ``fp32``, ``fp16`` or ``bf16``.
        device: A torch device string.
        seed: Seed of the random-weight presets.
        task: ``text2img`` (default), ``img2img`` or ``inpaint``.
        shape_only: Random-weight presets only: zero weights that take no memory (stride-0 views, see
            :func:`~hgc_tune.models._presets.build_shape_only_components`), on the CPU, in ``dtype``. The
            pipeline runs and counts MACs like the real one, but generates zeros: for MAC counting of
            models too large to hold (``sdxl`` in fp32 is ~19 GB), not for images or timing.

    Example:
        >>> pipe = load_pipeline("tiny")
        >>> type(pipe).__name__
        'StableDiffusionControlNetPipeline'
    """
    import torch

    from hgc_tune.models._tasks import _check_task, pipeline_for_task

    _check_task(task)
    torch_dtype = _torch_dtype(dtype)
    if shape_only and not (model in PRESETS and PRESETS[model].random_weights):
        raise ModelLoadError(
            f"shape_only=True builds a random-weight preset without weights, but got model={model!r} "
            f"(random-weight presets: {sorted(k for k, v in PRESETS.items() if v.random_weights)})."
        )
    if model in PRESETS and PRESETS[model].random_weights:
        if controlnet is not None:
            raise ModelLoadError(f"preset {model!r} has its own random ControlNet; do not pass controlnet=.")
        n = len(condition.split(",")) if condition else 1
        if shape_only:
            components = build_shape_only_components(model, torch_dtype, controlnets=n)
            device = "cpu"
        else:
            # Built where it will run: the 2.6 B-parameter SDXL U-Net is initialised on the GPU, not copied.
            with torch.device(device):
                components = build_preset_components(model, seed, controlnets=n)
        name = PIPELINE_CLASSES.get(model, "StableDiffusionControlNetPipeline")
        extra: dict[str, Any] = (
            {"add_watermarker": False}
            if "XL" in name
            else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        )
        pipe = _pipeline_class(name)(**components, scheduler=make_scheduler(scheduler), **extra)
    elif model == "shapes":
        from hgc_tune.models._shapes import shapes_checkpoint

        if condition is not None and "," in condition:
            checkpoints = [shapes_checkpoint(c) for c in condition.split(",")]
            base, refs = checkpoints[0][0], [str(cn) for _, cn in checkpoints]
            pipe = _from_pretrained(str(base), controlnet or refs, torch_dtype, task)
        else:
            base, controlnet_dir = shapes_checkpoint(condition)
            pipe = _from_pretrained(str(base), controlnet or str(controlnet_dir), torch_dtype, task)
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    elif model in PRESETS:  # pragma: no cover - a preset registered without a loader
        raise UnknownPresetError(f"preset {model!r} has no loader.")
    elif _is_local(model) or _HUB_ID.match(model):
        pipe = _from_pretrained(model, controlnet, torch_dtype, task)
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    else:
        raise UnknownPresetError(
            f"`model` must be a preset ({', '.join(sorted(PRESETS))}), a local directory or a hub id "
            f"(owner/name), but got model={model!r}."
        )
    if task != "text2img":
        pipe = pipeline_for_task(pipe, task)
    pipe.set_progress_bar_config(disable=True)
    _record_condition(pipe, condition)
    pipe = pipe.to(device)
    # Cast only when asked: diffusers warns on every fp32 -> fp32 `.to(dtype)` of a loaded model.
    return pipe if torch_dtype == pipe.unet.dtype else pipe.to(dtype=torch_dtype)


# The attribute ``load_pipeline`` notes the condition type(s) on (``hgc_tune.policy._target`` reads it).
LOADED_CONDITION_ATTR = "_hgc_condition_type"


def _record_condition(pipe: Any, condition: str | None) -> None:
    """Note on ``pipe`` the condition type(s) its ControlNets were built for, in their order: ``apply_policy``
    refuses a policy made for another (``seg,depth`` on a ``depth,seg`` pipeline)."""
    if condition:
        setattr(pipe, LOADED_CONDITION_ATTR, condition)
