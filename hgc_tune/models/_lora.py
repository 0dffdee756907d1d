"""LoRA adapters on a pipeline: loading one (diffusers' ``load_lora_weights``, unfused, at a scale) and
reading which a pipeline carries, from its modules (peft's tuner layers), so an adapter loaded by hand counts
as much as one loaded with ``--lora``."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hgc_tune.errors import ModelLoadError, ModelNotFoundError
from hgc_tune.models._loading import _HUB_ID, _is_local

if TYPE_CHECKING:
    import torch

    from hgc_tune._typing import ControlNetPipeline

__all__ = ["adapter_scales", "check_lora_source", "fused_adapters", "load_lora", "lora_adapters"]

# The components whose LoRA layers change a pipeline's outputs (diffusers loads LoRAs into these).
_COMPONENTS: tuple[str, ...] = ("unet", "controlnet", "text_encoder", "text_encoder_2")


def check_lora_source(path: str) -> Path:
    """Raise unless ``path`` is an existing LoRA file or folder (or a hub id); return it as a path.

    Checked before anything is loaded, so a typo costs no model load.
    """
    local = Path(path).expanduser()
    if not local.exists() and (_is_local(path) or not _HUB_ID.match(path)):
        raise ModelNotFoundError(f"LoRA {path!r} does not exist: give a .safetensors file or its folder.")
    if local.exists() and not (local.is_file() or local.is_dir()):
        raise ModelLoadError(f"LoRA {path!r} is not a regular file or folder.")
    return local


def load_lora(pipe: ControlNetPipeline, path: str, scale: float = 1.0) -> str:
    """Load a LoRA into ``pipe`` as an unfused adapter at ``scale`` (diffusers' ``load_lora_weights``, then
    ``set_adapters`` with every adapter the pipeline carries); return the adapter's name.

    The adapter is named after the file (``style.safetensors`` -> ``style``; a second one of that name gets
    ``style_2``), and the adapters loaded before keep their scales. Needs ``peft``.

    Args:
        pipe: The pipeline (a diffusers pipeline with ``load_lora_weights``).
        path: A LoRA file (``.safetensors``), a folder holding ``pytorch_lora_weights.safetensors``, or a hub
            id.
        scale: The adapter's weight, a finite number (1.0: as trained; 0: off).

    Raises:
        ModelNotFoundError: ``path`` does not exist (and is no hub id).
        ModelLoadError: peft is missing, the pipeline takes no LoRA, ``scale`` is not finite, or the file is
            not a LoRA of this pipeline's model.
    """
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ModelLoadError(f"a LoRA's scale must be a finite number, but got scale={scale!r} for {path!r}.")
    local = check_lora_source(path)
    # diffusers' LoRA loader methods are no ControlNetPipeline members: read from a pipeline that has them.
    loader: Any = pipe
    if not callable(getattr(loader, "load_lora_weights", None)):
        raise ModelLoadError(f"a {type(pipe).__name__} takes no LoRA (it has no load_lora_weights).")
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise ModelLoadError(f"loading LoRA {path!r} needs peft: pip install peft.") from e
    import diffusers

    taken = set(loader.get_list_adapters().get("unet", [])) if hasattr(loader, "get_list_adapters") else set()
    stem = (local.stem if local.is_file() else local.name or "lora").replace(".", "_") or "lora"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}"
    # The adapters active now keep their scales; set_adapters below would reset them otherwise.
    scales = adapter_scales(pipe)
    level = diffusers.utils.logging.get_verbosity()
    # diffusers logs a warning for each component the LoRA leaves alone (most touch the U-Net only).
    diffusers.utils.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            # peft's note that a model now holds several adapters: that is what a second --lora asks for.
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config`", category=UserWarning)
            loader.load_lora_weights(str(local) if local.exists() else path, adapter_name=name)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ModelLoadError(
            f"could not load LoRA {path!r} into the {type(pipe).__name__}: {str(e).splitlines()[0]}"
        ) from e
    finally:
        diffusers.utils.logging.set_verbosity(level)
    scales[name] = float(scale)
    loader.set_adapters(list(scales), adapter_weights=list(scales.values()))
    return name


def _tuner_layers(pipe: ControlNetPipeline) -> Iterator[tuple[str, Any]]:
    """peft's tuner layers of the pipeline's adapted components by key (each an ``nn.Module`` and a peft
    ``BaseTunerLayer``)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # without peft, diffusers loads no LoRA adapters
        return
    for component in _COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None or not hasattr(model, "named_modules"):
            continue
        for name, module in model.named_modules():
            if isinstance(module, BaseTunerLayer):
                yield f"{component}.{name}", module


def _scale(module: torch.nn.Module, adapter: str) -> float:
    """The scale the adapter was set to (``set_adapters``' weight): peft keeps ``alpha / r`` times it."""
    scaling = getattr(module, "scaling", {}).get(adapter)
    alpha, rank = getattr(module, "lora_alpha", {}).get(adapter), getattr(module, "r", {}).get(adapter)
    if scaling is None or not alpha or not rank:
        return 1.0
    base = alpha / math.sqrt(rank) if getattr(module, "use_rslora", {}).get(adapter) else alpha / rank
    return round(float(scaling) / base, 6)


def adapter_scales(pipe: ControlNetPipeline) -> dict[str, float]:
    """The scale of each LoRA adapter active on ``pipe``, by name."""
    scales: dict[str, float] = {}
    for _, module in _tuner_layers(pipe):
        for adapter in getattr(module, "active_adapters", ()):
            scales.setdefault(adapter, _scale(module, adapter))
    return dict(sorted(scales.items()))


def lora_adapters(pipe: ControlNetPipeline) -> list[tuple[str, str, float]]:
    """``(name, digest, scale)`` of each LoRA adapter active on ``pipe`` (U-Net, ControlNet, text encoders),
    sorted by name; empty without peft or adapters.

    The digest (16 hex digits) covers the adapter's own low-rank weights with its name left out, so the same
    file loaded under another name has the same digest.
    """
    import torch

    digests: dict[str, hashlib._Hash] = {}
    for key, module in _tuner_layers(pipe):
        for adapter in getattr(module, "active_adapters", ()):
            digest = digests.setdefault(adapter, hashlib.sha256())
            for pname, param in module.named_parameters():
                parts = pname.split(".")
                if parts[0] == "base_layer" or adapter not in parts:
                    continue
                generic = ".".join("*" if p == adapter else p for p in parts)
                digest.update(f"{key}.{generic}:{tuple(param.shape)};".encode())
                digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    scales = adapter_scales(pipe)
    return [(name, digests[name].hexdigest()[:16], scales[name]) for name in sorted(digests)]


def fused_adapters(pipe: ControlNetPipeline) -> set[str]:
    """The adapters of ``pipe`` merged into its weights (``fuse_lora``): they add no computation of their
    own, where an unfused adapter runs its low-rank products beside each layer it adapts."""
    return {a for _, module in _tuner_layers(pipe) for a in getattr(module, "merged_adapters", ())}
