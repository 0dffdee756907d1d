"""Registered model knowledge: the module layout of each denoiser class.

A :class:`ModuleLayout` says, for one model class, which modules are cacheable blocks and in which order,
which blocks are "deep" for a skip branch (DeepCache's rule), which modules are cross-attention, whether the
whole model is cacheable as one unit (the ControlNet) and what that unit outputs, and the order of the
model's top-level children in its forward. Everything in hgc-tune that needs this asks the layout: the
profiler and the executor for the modules of a loaded pipeline, the peers, the search space and the policy
for the deep blocks and cross-attention modules among a pipeline's module keys, the MAC table for the order
of its breakdown.

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

    from hgc_tune._typing import ControlNetPipeline

__all__ = [
    "COMPONENTS",
    "MODULE_KEY_PATTERN",
    "ModuleLayout",
    "register_module_layout",
    "module_layout",
    "is_attention_key",
    "is_whole_model_key",
    "block_containers",
    "forward_order",
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
        outputs: With ``whole``: the fields of the model's output, in order (the ControlNet's
            ``down_block_res_samples``, a sequence of tensors, and ``mid_block_res_sample``); a tuple output
            holds them at the same positions.
        forward_order: The model's top-level children in the order its breakdown by block reads (children
            not listed follow by name).
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
    outputs: tuple[str, ...] = ()
    forward_order: tuple[str, ...] = ()
    nets: str | None = None
    net_class: str | None = None

    def _nets(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        if self.nets is None:
            return []
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

    def output_tensors(self, output: Any) -> list[torch.Tensor]:
        """The tensors of a whole-model ``output`` (a tuple or a diffusers output object), in
        :attr:`outputs` order, sequences flattened.

        Raises:
            UnregisteredModelError: The layout names no outputs.
        """
        if not self.outputs:
            raise UnregisteredModelError(
                "this module layout names no `outputs` of the whole model; register the layout with "
                "outputs=(field names of the model's output, in order)."
            )
        tensors: list[torch.Tensor] = []
        for i, name in enumerate(self.outputs):
            value = output[i] if isinstance(output, tuple) else getattr(output, name)
            tensors += list(value) if isinstance(value, list | tuple) else [value]
        return tensors

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


_EMBEDDINGS = (
    "conv_in",
    "time_proj",
    "time_embedding",
    "class_embedding",
    "add_time_proj",
    "add_embedding",
    "encoder_hid_proj",
)
register_module_layout(
    "UNet2DConditionModel",
    ModuleLayout(
        forward_order=(
            *_EMBEDDINGS,
            "down_blocks",
            "mid_block",
            "up_blocks",
            "conv_norm_out",
            "conv_act",
            "conv_out",
        )
    ),
)
register_module_layout(
    "ControlNetModel",
    ModuleLayout(
        up=None,
        whole=True,
        outputs=("down_block_res_samples", "mid_block_res_sample"),
        forward_order=(
            *_EMBEDDINGS,
            "controlnet_cond_embedding",
            "down_blocks",
            "mid_block",
            "controlnet_down_blocks",
            "controlnet_mid_block",
        ),
    ),
)
# diffusers' several-ControlNets wrapper: its nets run one after the other and their residuals are summed.
register_module_layout("MultiControlNetModel", ModuleLayout(nets="nets", net_class="ControlNetModel"))


def module_layout(model_or_class: object) -> ModuleLayout:
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


def forward_order() -> tuple[str, ...]:
    """The top-level children of every registered layout in one order that keeps each layout's
    :attr:`~ModuleLayout.forward_order` (where two layouts leave the order open, by name).

    For a table of MACs by module key, which records no model classes: the children of one model sort the
    same in this order as in its layout's own.

    Example:
        >>> order = forward_order()
        >>> order.index("controlnet_cond_embedding") < order.index("down_blocks") < order.index("up_blocks")
        True
    """
    after: dict[str, set[str]] = {}
    before_count: dict[str, int] = {}
    for layout in _LAYOUTS.values():
        for child in layout.forward_order:
            after.setdefault(child, set())
            before_count.setdefault(child, 0)
        for first, then in zip(layout.forward_order, layout.forward_order[1:]):
            if then not in after[first]:
                after[first].add(then)
                before_count[then] += 1
    ready = sorted(child for child, n in before_count.items() if n == 0)
    order: list[str] = []
    while ready:
        child = ready.pop(0)
        order.append(child)
        for then in after[child]:
            before_count[then] -= 1
            if before_count[then] == 0:
                ready.append(then)
        ready.sort()
    if len(order) != len(after):
        raise UnregisteredModelError(
            f"the registered layouts order their children in contradicting ways: "
            f"{sorted(set(after) - set(order))} cannot be placed."
        )
    return tuple(order)


def is_attention_key(key: str, classes: Mapping[str, str | None]) -> bool:
    """Whether the module key ``key`` names a cross-attention module.

    Args:
        key: A module key (``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2``).
        classes: Component -> model class name (``PolicyTarget.component_classes``).

    The layout of the key's component's class decides. A class that is not registered in this process falls
    back on every registered layout: a policy names its classes, and a policy file can be read, checked and
    shown where its model's layout was never registered (applying it needs the layout).
    """
    name = classes.get(key.partition(".")[0])
    if name is not None and name in _LAYOUTS:
        return _LAYOUTS[name].is_attention(key)
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


def module_groups(pipe: ControlNetPipeline) -> tuple[dict[str, torch.nn.Module], dict[str, torch.nn.Module]]:
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


def cacheable_module_keys(pipe: ControlNetPipeline) -> dict[str, torch.nn.Module]:
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
        class_name = classes.get(component)
        if not paths or class_name is None:
            continue
        deep += [_key(component, p) for p in module_layout(class_name).deep_paths(paths, branch)]
    return deep


def max_branch(module_keys: Iterable[str], unet_class: str) -> int:
    """The deepest skip branch of the U-Net, ``min(#down, #up) - 1`` (``-1``: no down or up blocks)."""
    n_down, _, n_up = module_layout(unet_class).block_counts(_component_paths(module_keys, "unet"))
    return min(n_down, n_up) - 1
