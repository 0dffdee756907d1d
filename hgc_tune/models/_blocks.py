"""Registered model knowledge: which modules of which class are cacheable blocks.

Looked up by exact class (a subclass may change ``forward`` and the block structure with it). A model class
that is not registered raises :class:`~hgc_tune.errors.UnregisteredModelError`; users with a compatible
custom class can register it with :func:`register_block_layout` (the data escape hatch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hgc_tune.errors import UnregisteredModelError

__all__ = [
    "register_block_layout",
    "block_paths",
    "cross_attention_paths",
    "cacheable_module_keys",
    "COMPONENTS",
]

# Pipeline components hgc-tune hooks, in execution order within a step.
COMPONENTS: tuple[str, ...] = ("controlnet", "unet")

_LAYOUTS: dict[str, Callable[[torch.nn.Module], list[str]]] = {}


def _unet_like_blocks(model: torch.nn.Module) -> list[str]:
    paths = [f"down_blocks.{i}" for i in range(len(model.down_blocks))]
    if getattr(model, "mid_block", None) is not None:
        paths.append("mid_block")
    paths += [f"up_blocks.{i}" for i in range(len(getattr(model, "up_blocks", ())))]
    return paths


def register_block_layout(class_name: str, layout: Callable[[torch.nn.Module], list[str]]) -> None:
    """Register the cacheable block paths of a model class (by its exact ``__name__``).

    Args:
        class_name: The model class's ``__name__``.
        layout: Returns the dotted paths, relative to the model, of the blocks that may be cached. The empty
            path ``""`` means the whole model.
    """
    _LAYOUTS[class_name] = layout


register_block_layout("UNet2DConditionModel", _unet_like_blocks)
# The whole ControlNet ("") is cacheable as one unit too: its residuals are reused or dropped by window.
register_block_layout("ControlNetModel", lambda m: ["", *_unet_like_blocks(m)])


def block_paths(model: torch.nn.Module) -> list[str]:
    """The cacheable block paths of ``model`` (relative, ``""`` = the whole model)."""
    name = type(model).__name__
    if name not in _LAYOUTS:
        raise UnregisteredModelError(
            f"model class {name!r} has no registered block layout (known: {sorted(_LAYOUTS)}); register one "
            "with hgc_tune.models.register_block_layout."
        )
    return _LAYOUTS[name](model)


def cross_attention_paths(model: torch.nn.Module) -> list[str]:
    """Dotted paths of every cross-attention (``attn2``) module of ``model``, in module order."""
    return [name for name, _ in model.named_modules() if name.endswith(".attn2")]


def cacheable_module_keys(pipe) -> dict[str, torch.nn.Module]:
    """Every cacheable module of a pipeline by module key (``component.dotted.path``).

    Blocks of the U-Net and the ControlNet and every ``attn2`` module; ``controlnet`` is the whole ControlNet.
    """
    keys: dict[str, torch.nn.Module] = {}
    for component in COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for path in block_paths(model):
            keys[f"{component}.{path}" if path else component] = model.get_submodule(path)
        for path in cross_attention_paths(model):
            keys[f"{component}.{path}"] = model.get_submodule(path)
    return keys
