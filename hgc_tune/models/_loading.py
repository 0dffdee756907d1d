"""Build a ready ControlNet pipeline (text2img, img2img or inpainting) from a preset, a local directory or
a hub id: a ``StableDiffusionControlNet…Pipeline`` for SD1.5-shaped models, a
``StableDiffusionXLControlNet…Pipeline`` for SDXL-shaped ones."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hgc_tune._json import load_json_file
from hgc_tune.errors import (
    IncompatibleControlNetError,
    ModelLoadError,
    ModelNotFoundError,
    NotAPipelineError,
    OutOfMemoryError,
    UnknownPresetError,
)
from hgc_tune.models._guidance import recommended_guidance, record_guidance
from hgc_tune.models._presets import (
    PIPELINE_CLASSES,
    PRESETS,
    SD15_SCHEDULER_CONFIG,
    build_preset_components,
    build_shape_only_components,
)

if TYPE_CHECKING:
    import torch

    from hgc_tune._typing import ControlNetPipeline

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


def _from_pretrained(
    base: str, controlnet_ref: str | Sequence[str] | None, torch_dtype: torch.dtype, task: str = "text2img"
):
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


def _check_device(device: str) -> None:
    """Refuse a device string torch does not parse, or a device this machine does not have."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(
            f"`device` must be a torch device (cpu, cuda, cuda:1, mps), but got device={device!r}."
        ) from None
    if parsed.type == "meta":
        raise ModelLoadError(
            f"`device` must hold data (cpu, cuda, mps), but got device={device!r}: the meta device holds "
            "shapes only (for MACs without weights, use shape_only=True)."
        )
    backend = getattr(torch, parsed.type, None) if parsed.type != "cpu" else None
    if parsed.type == "mps":
        backend = torch.backends.mps
    if backend is None or not hasattr(backend, "is_available"):
        return
    if not backend.is_available():
        why = (
            f"this torch build ({torch.__version__}) has no CUDA"
            if parsed.type == "cuda" and torch.version.cuda is None
            else f"no {parsed.type} device is available"
        )
        raise ModelLoadError(f"`device` {device!r} cannot be used: {why}; pass --device cpu.")
    count = getattr(backend, "device_count", None)
    if parsed.index is not None and count is not None and parsed.index >= count():
        raise ModelLoadError(
            f"`device` {device!r} does not exist: this machine has {count()} {parsed.type} device(s)."
        )


def _check_condition(condition: str | None) -> None:
    if condition is None:
        return
    names = condition.split(",") if isinstance(condition, str) else None
    if not names or any(not n.strip() for n in names) or len(set(names)) != len(names):
        raise ModelLoadError(
            "`condition` must name condition types joined by commas, each once and none empty (e.g. "
            f"'seg,depth'), but got condition={condition!r}."
        )


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Loading prints nothing: diffusers' and transformers' loading bars and notices (e.g. that torchvision
    is absent, which changes nothing here) are held back while the pipeline is built, then restored."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    bars = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


def _is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator's failure: Python's, torch's CPU allocator's, or a GPU's."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
    )


def _weights_bytes(model: str, condition: str | None, torch_dtype) -> int | None:
    """About how many bytes the weights of ``model`` take in ``torch_dtype``: counted on the meta device for
    a random-weight preset (nothing allocated), the weight files' sizes for a local folder, else ``None``."""
    import torch

    if model in PRESETS and PRESETS[model].random_weights:
        nets = len(condition.split(",")) if condition else 1
        with torch.device("meta"):
            components = build_preset_components(model, controlnets=nets)
        size = torch.empty((), dtype=torch_dtype, device="meta").element_size()
        modules = [m for c in components.values() for m in (c if isinstance(c, list) else [c])]
        return size * sum(
            p.numel() for m in modules if isinstance(m, torch.nn.Module) for p in m.parameters()
        )
    if _is_local(model) and Path(model).is_dir():
        return sum(f.stat().st_size for f in Path(model).rglob("*") if f.suffix in (".safetensors", ".bin"))
    return None


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

    The pipeline carries its model's recommended guidance scale (:func:`~hgc_tune.models.pipeline_guidance`:
    measured for ``shapes``, the pipeline class's default for the others), the scale the command line
    generates at unless given ``--guidance-scale``.

    Raises:
        ModelLoadError: A bad argument (the subclasses name which: an unknown preset, a missing folder, a
            ControlNet that does not fit), a device torch does not know or this machine lacks, or a
            ``condition`` list with an empty or repeated entry.
        OutOfMemoryError: The pipeline does not fit in the memory this process can get (the message says
            about how much its weights need).

    Example:
        >>> pipe = load_pipeline("tiny")
        >>> type(pipe).__name__
        'StableDiffusionControlNetPipeline'
    """
    from hgc_tune.models._tasks import _check_task

    _check_task(task)
    torch_dtype = _torch_dtype(dtype)
    _check_device(device)
    _check_condition(condition)
    try:
        with _quiet_loading():
            return _load(model, controlnet, condition, scheduler, torch_dtype, device, seed, task, shape_only)
    except (MemoryError, RuntimeError) as e:
        if not _is_out_of_memory(e):
            raise
    # Outside the handler: the failed attempt's frames (and what they hold) are gone before counting.
    needed = _weights_bytes(model, condition, torch_dtype)
    about = f"its {dtype} weights alone need about {needed / 2**30:.1f} GiB" if needed else "it needs more"
    raise OutOfMemoryError(
        f"not enough memory to load model {model!r} on {device!r}: {about}; free memory, load it in fp16 or "
        "bf16 (dtype, --dtype), or use a machine with more memory."
    )


def _load(
    model: str,
    controlnet: str | Sequence[str] | None,
    condition: str | None,
    scheduler: str,
    torch_dtype: torch.dtype,
    device: str,
    seed: int,
    task: str,
    shape_only: bool,
):
    """:func:`load_pipeline` after its arguments are checked."""
    import torch

    from hgc_tune.models._tasks import pipeline_for_task

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
    record_guidance(pipe, recommended_guidance(model, pipeline_class=type(pipe)))
    pipe = pipe.to(device)
    # Cast only when asked: diffusers warns on every fp32 -> fp32 `.to(dtype)` of a loaded model.
    return pipe if torch_dtype == pipe.unet.dtype else pipe.to(dtype=torch_dtype)


# The attribute ``load_pipeline`` notes the condition type(s) on (``hgc_tune.policy._target`` reads it).
LOADED_CONDITION_ATTR = "_hgc_condition_type"


def _record_condition(pipe: ControlNetPipeline, condition: str | None) -> None:
    """Note on ``pipe`` the condition type(s) its ControlNets were built for, in their order: ``apply_policy``
    refuses a policy made for another (``seg,depth`` on a ``depth,seg`` pipeline)."""
    if condition:
        setattr(pipe, LOADED_CONDITION_ATTR, condition)
