"""Registered model knowledge: the module layout of each denoiser class.

A :class:`ModuleLayout` says, for one model class, which modules are cacheable blocks and in which order,
which blocks are "deep" for a skip branch (DeepCache's rule), which modules are cross-attention and whether
the whole model is cacheable as one unit (the ControlNet). Everything in hgc-tune that needs this asks the
layout: the profiler and the executor for the modules of a loaded pipeline, the peers and the search space
for the deep blocks among a pipeline's module keys.

Layouts are looked up by exact class name (a subclass may change ``forward`` and the block structure with
it). A class that is not registered raises :class:`~hgc_tune.errors.UnregisteredModelError`; users with a
compatible custom class register it with :func:`register_module_layout` (the data escape hatch).

Module keys name a module of a pipeline as ``<component>.<dotted path>`` (``unet.down_blocks.1``); the
empty path, key ``controlnet``, is the whole ControlNet. A container of models (diffusers'
``MultiControlNetModel``, several ControlNets at once) keeps them in a numbered list (``nets``); each is laid
out by its own class's layout under ``<list>.<i>``: ``controlnet.nets.0`` is the whole first ControlNet,
``controlnet.nets.1.down_blocks.2`` a block of the second.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hgc_tune.errors import PolicyError, UnregisteredModelError

if TYPE_CHECKING:
    import torch

__all__ = [
    "COMPONENTS",
    "MODULE_KEY_PATTERN",
    "ModuleLayout",
    "register_module_layout",
    "module_layout",
    "is_attention_key",
    "is_whole_model_key",
    "block_containers",
    "block_paths",
    "cross_attention_paths",
    "module_groups",
    "cacheable_module_keys",
    "deep_block_keys",
    "max_branch",
]

# Pipeline components hgc-tune hooks, in execution order within a step.
COMPONENTS: tuple[str, ...] = ("controlnet", "unet")
# A cached module's key: a denoiser component, then a dotted path (``unet.up_blocks.1.attentions.0…``).
# The shipped policy schema states the same pattern (a test pins that they agree).
MODULE_KEY_PATTERN = rf"^({'|'.join(sorted(COMPONENTS, reverse=True))})(\.[A-Za-z0-9_]+)+$"


@dataclass(frozen=True)
class ModuleLayout:
    """The module layout of one denoiser class.

    Attributes:
        down: Attribute of the container of the numbered down blocks (``down_blocks``).
        mid: Attribute of the mid block (``mid_block``; absent on a model is fine).
        up: Attribute of the container of the numbered up blocks, or ``None`` (the ControlNet has none).
        attention: Name of the cross-attention modules (``attn2``): every module of that name is cacheable.
        whole: Whether the whole model (path ``""``) is cacheable as one unit (the ControlNet's residuals are
            reused or dropped by window).
        nets: For a container of models (``MultiControlNetModel``): the attribute of its numbered list of
            models, each laid out by its own registered layout under ``<nets>.<i>``; ``None`` otherwise.
        net_class: The class whose layout the contained models have where only module keys are known (no
            loaded model): the search space and the peers reason on keys.
    """

    down: str = "down_blocks"
    mid: str = "mid_block"
    up: str | None = "up_blocks"
    attention: str = "attn2"
    whole: bool = False
    nets: str | None = None
    net_class: str | None = None

    def _nets(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return [(f"{self.nets}.{i}", net) for i, net in enumerate(getattr(model, self.nets))]

    def net_prefixes(self, paths: Iterable[str]) -> list[str]:
        """The contained models' relative paths (``nets.0``, ``nets.1``) among ``paths``, in order."""
        if self.nets is None:
            return []
        pattern = re.compile(rf"^{re.escape(self.nets)}\.(\d+)(\.|$)")
        indices = sorted({int(m.group(1)) for p in paths if (m := pattern.match(p))})
        return [f"{self.nets}.{i}" for i in indices]

    def _pattern(self) -> re.Pattern[str]:
        containers = "|".join(re.escape(c) for c in (self.down, self.up) if c)
        return re.compile(rf"^({containers})\.(\d+)$")

    # -- a loaded model ------------------------------------------------------------------------------------
    def block_paths(self, model: torch.nn.Module) -> list[str]:
        """The cacheable block paths of ``model`` in forward order (``""`` first: the whole model)."""
        if self.nets is not None:
            return [
                _join(prefix, p)
                for prefix, net in self._nets(model)
                for p in module_layout(net).block_paths(net)
            ]
        paths = [""] if self.whole else []
        paths += [f"{self.down}.{i}" for i in range(len(getattr(model, self.down)))]
        if getattr(model, self.mid, None) is not None:
            paths.append(self.mid)
        if self.up is not None:
            paths += [f"{self.up}.{i}" for i in range(len(getattr(model, self.up, ())))]
        return paths

    def attention_paths(self, model: torch.nn.Module) -> list[str]:
        """Dotted paths of every cross-attention module of ``model``, in module order."""
        if self.nets is not None:
            return [
                _join(prefix, p)
                for prefix, net in self._nets(model)
                for p in module_layout(net).attention_paths(net)
            ]
        return [name for name, _ in model.named_modules() if self.is_attention(name)]

    # -- paths (no model needed) ---------------------------------------------------------------------------
    def is_attention(self, path: str) -> bool:
        """Whether ``path`` names a cross-attention module."""
        return path.rsplit(".", 1)[-1] == self.attention and "." in path

    def block_counts(self, paths: Iterable[str]) -> tuple[int, bool, int]:
        """``(#down blocks, has a mid block, #up blocks)`` among the relative ``paths``.

        Raises:
            PolicyError: The numbered blocks of a container are not ``0..n-1``.
        """
        pattern = self._pattern()
        found: dict[str, set[int]] = {self.down: set(), self.up or "": set()}
        mid = False
        for path in paths:
            if path == self.mid:
                mid = True
            elif m := pattern.match(path):
                found[m.group(1)].add(int(m.group(2)))
        for container, indices in found.items():
            if indices != set(range(len(indices))):
                raise PolicyError(
                    f"{container} indices must be 0..n-1, but the module keys have {sorted(indices)}."
                )
        return len(found[self.down]), mid, len(found[self.up or ""])

    def deep_paths(self, paths: Iterable[str], branch: int) -> list[str]:
        """The blocks deeper than skip branch ``branch`` (DeepCache's cached part, Ma et al.,
        https://arxiv.org/abs/2312.00858).

        ``down.(b+1)…``, ``mid`` and ``up.0…(L-2-b)``: the up blocks whose output feeds the shallow branch
        (``L`` up blocks). Without up blocks (the ControlNet) only the down blocks and the mid block. For a
        container of models, the deep blocks of each contained model (by ``net_class``'s layout).
        """
        if self.nets is not None:
            paths = list(paths)
            net_layout = module_layout(self.net_class)
            return [
                _join(prefix, p)
                for prefix in self.net_prefixes(paths)
                for p in net_layout.deep_paths(_under(paths, prefix), branch)
            ]
        n_down, mid, n_up = self.block_counts(paths)
        deep = [f"{self.down}.{i}" for i in range(branch + 1, n_down)]
        deep += [self.mid] if mid else []
        deep += [f"{self.up}.{i}" for i in range(n_up - 1 - branch)]
        return deep


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if path else prefix


def _under(paths: Iterable[str], prefix: str) -> list[str]:
    """The paths below ``prefix``, relative to it (``prefix`` itself as ``""``)."""
    return [
        p[len(prefix) + 1 :] if p != prefix else ""
        for p in paths
        if p == prefix or p.startswith(prefix + ".")
    ]


_LAYOUTS: dict[str, ModuleLayout] = {}


def register_module_layout(class_name: str, layout: ModuleLayout) -> None:
    """Register the module layout of a model class (by its exact ``__name__``).

    Example:
        >>> register_module_layout("MyUNet", ModuleLayout())
        >>> module_layout("MyUNet").deep_paths(["down_blocks.0", "down_blocks.1", "up_blocks.0",
        ...                                     "up_blocks.1"], 0)
        ['down_blocks.1', 'up_blocks.0']
        >>> del _LAYOUTS["MyUNet"]
    """
    _LAYOUTS[class_name] = layout


register_module_layout("UNet2DConditionModel", ModuleLayout())
register_module_layout("ControlNetModel", ModuleLayout(up=None, whole=True))
# diffusers' several-ControlNets wrapper: its nets run one after the other and their residuals are summed.
register_module_layout("MultiControlNetModel", ModuleLayout(nets="nets", net_class="ControlNetModel"))


def module_layout(model_or_class: Any) -> ModuleLayout:
    """The registered layout of a model, a model class or a class name (exact class, no subclasses)."""
    if isinstance(model_or_class, str):
        name = model_or_class
    else:
        name = (model_or_class if isinstance(model_or_class, type) else type(model_or_class)).__name__
    if name not in _LAYOUTS:
        raise UnregisteredModelError(
            f"model class {name!r} has no registered block layout (known: {sorted(_LAYOUTS)}); register one "
            "with hgc_tune.models.register_module_layout."
        )
    return _LAYOUTS[name]


def block_containers() -> frozenset[str]:
    """The attributes that hold numbered blocks in some registered layout (``down_blocks``, ``up_blocks``)."""
    return frozenset(c for layout in _LAYOUTS.values() for c in (layout.down, layout.up) if c)


def is_attention_key(key: str) -> bool:
    """Whether the module key ``key`` names a cross-attention module of some registered layout."""
    return any(layout.is_attention(key) for layout in {*_LAYOUTS.values()})


def is_whole_model_key(key: str) -> bool:
    """Whether ``key`` names a whole ControlNet: ``controlnet`` or a contained one (``controlnet.nets.1``).

    Such a model is cached as one unit by a window (reuse or drop), never as a block.
    """
    component, _, path = key.partition(".")
    if component != "controlnet":
        return False
    if not path:
        return True
    containers = {layout.nets for layout in _LAYOUTS.values() if layout.nets}
    head, _, index = path.partition(".")
    return head in containers and index.isdigit()


def block_paths(model: torch.nn.Module) -> list[str]:
    """The cacheable block paths of ``model`` (relative, ``""`` = the whole model)."""
    return module_layout(model).block_paths(model)


def cross_attention_paths(model: torch.nn.Module) -> list[str]:
    """Dotted paths of every cross-attention module of ``model``, in module order."""
    return module_layout(model).attention_paths(model)


def _key(component: str, path: str) -> str:
    return f"{component}.{path}" if path else component


def module_groups(pipe: Any) -> tuple[dict[str, torch.nn.Module], dict[str, torch.nn.Module]]:
    """The pipeline's cacheable blocks and cross-attention modules, by module key, in execution order.

    Returns:
        ``(blocks, attentions)``. ``blocks`` holds the U-Net and ControlNet blocks and ``controlnet`` (the
        whole ControlNet); ``attentions`` every cross-attention module.
    """
    blocks: dict[str, torch.nn.Module] = {}
    attentions: dict[str, torch.nn.Module] = {}
    for component in COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        layout = module_layout(model)
        for path in layout.block_paths(model):
            blocks[_key(component, path)] = model.get_submodule(path)
        for path in layout.attention_paths(model):
            attentions[_key(component, path)] = model.get_submodule(path)
    return blocks, attentions


def cacheable_module_keys(pipe: Any) -> dict[str, torch.nn.Module]:
    """Every cacheable module of a pipeline by module key (``component.dotted.path``).

    Blocks of the U-Net and the ControlNet and every cross-attention module; ``controlnet`` is the whole
    ControlNet.
    """
    blocks, attentions = module_groups(pipe)
    return {**blocks, **attentions}


def _component_paths(module_keys: Iterable[str], component: str) -> list[str]:
    prefix = component + "."
    return [k[len(prefix) :] for k in module_keys if k.startswith(prefix)]


def deep_block_keys(module_keys: Iterable[str], branch: int, classes: Mapping[str, str | None]) -> list[str]:
    """The blocks deeper than skip branch ``branch`` among a pipeline's module keys, U-Net first.

    Args:
        module_keys: The pipeline's cacheable module keys.
        branch: The skip branch ``b >= 0``.
        classes: Component -> model class name (``{"unet": …, "controlnet": …}``, ``None`` = absent).

    Example:
        >>> keys = ["unet.down_blocks.0", "unet.down_blocks.1", "unet.mid_block", "unet.up_blocks.0",
        ...         "unet.up_blocks.1", "controlnet", "controlnet.down_blocks.0", "controlnet.mid_block"]
        >>> deep_block_keys(keys, 0, {"unet": "UNet2DConditionModel", "controlnet": "ControlNetModel"})
        ['unet.down_blocks.1', 'unet.mid_block', 'unet.up_blocks.0', 'controlnet.mid_block']
    """
    keys = list(module_keys)
    deep: list[str] = []
    for component in ("unet", "controlnet"):
        paths = _component_paths(keys, component)
        if not paths or classes.get(component) is None:
            continue
        deep += [_key(component, p) for p in module_layout(classes[component]).deep_paths(paths, branch)]
    return deep


def max_branch(module_keys: Iterable[str], unet_class: str) -> int:
    """The deepest skip branch of the U-Net, ``min(#down, #up) - 1`` (``-1``: no down or up blocks)."""
    n_down, _, n_up = module_layout(unet_class).block_counts(_component_paths(module_keys, "unet"))
    return min(n_down, n_up) - 1
