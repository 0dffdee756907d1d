"""The one place where hgc-tune changes a module's ``forward``: diffusers' ``HookRegistry``.

Every compute-skipping hook is a ``diffusers.hooks.ModelHook`` registered under a name from this package;
:func:`remove_hook` unwinds them. Observation (the profiler) uses plain ``register_forward_hook`` handles.

Other hooks may sit on the same modules (diffusers' caches, offloading). diffusers' own
``HookRegistry.remove_hook`` mis-links a chain when the removed hook is not the last one and the hook after it
replaces ``forward`` (it rewires that hook's ``forward`` rather than its ``original_forward``, so the later
hook stops running and a removed one comes back). :func:`remove_hook` and :func:`repair_hook` relink around
it, using the registry's chain (``module._diffusers_hook``, its ``_hook_order``, ``_fn_refs`` and
``_module_ref``): diffusers has no public API for it, so pyproject.toml pins diffusers to the tested minor
release and ``tests/runtime/test_runtime_registry.py`` pins the fields and the behaviour this relies on.

:func:`register_hook` also replaces the ``forward`` diffusers installs (a closure) with the same chain link
held in objects, so a module carrying our hooks can be deep-copied and pickled with them (the copy runs its
own hooks on itself).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from diffusers.hooks import HookRegistry, ModelHook

if TYPE_CHECKING:
    from diffusers.hooks.hooks import HookFunctionReference

__all__ = ["register_hook", "remove_hook", "repair_hook", "has_hook", "foreign_hooks", "unhooked_view"]


class ForwardLink(Protocol):
    """diffusers' ``HookFunctionReference`` once ``HookRegistry.register_hook`` has filled it in.

    diffusers declares each of its callables ``None`` (their value before registration); for the type
    checker only, the hooks and chain links here read them through this type. ``original_forward`` is set
    for a hook with a ``new_forward`` (``None`` otherwise, and then not read).
    """

    pre_forward: Callable[..., Any]
    post_forward: Callable[..., Any]
    forward: Callable[..., Any]
    original_forward: Callable[..., Any]


class _ChainedForward:
    """What diffusers' ``HookRegistry`` installs as a hooked module's ``forward`` (``pre_forward``, the inner
    forward, ``post_forward`` of one hook), held as attributes rather than in diffusers' closure.

    ``copy.deepcopy`` copies a closure by reference, so a copied module would run the original's hooks and
    modules, and ``pickle`` refuses one; an object with attributes is copied along with its module.
    """

    def __init__(self, fn_ref: HookFunctionReference) -> None:
        self.fn_ref = cast(ForwardLink, fn_ref)

    def __call__(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        args, kwargs = self.fn_ref.pre_forward(module, *args, **kwargs)
        output = self.fn_ref.forward(*args, **kwargs)
        return self.fn_ref.post_forward(module, output)


class _ClassForward:
    """``type(module).forward`` bound to ``module``, for the innermost link of a hook chain.

    A bound method is pickled as ``getattr(module, "forward")``, which on loading finds the hooked ``forward``
    again when the module is already restored, and the chain would call itself.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        functools.update_wrapper(self, type(module).forward)
        self.__signature__ = inspect.signature(module.forward)

    def __call__(self, *args, **kwargs) -> Any:
        return type(self.module).forward(self.module, *args, **kwargs)


def register_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register ``hook`` on ``module`` under ``name`` (raises ``ValueError`` if the name is taken)."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    if name in registry.hooks:
        raise ValueError(f"a hook named {name!r} is already registered on this module; remove it first.")
    if "forward" not in vars(module):
        module.forward = _ClassForward(module)
    inner = module.forward
    registry.register_hook(hook, name)
    # The same chain link diffusers installed, in a form that copies with the module (see _ChainedForward).
    module.forward = functools.update_wrapper(
        functools.partial(_ChainedForward(registry._fn_refs[-1]), registry._module_ref), inner
    )


def _runs_its_own_forward(hook: ModelHook) -> bool:
    forward = hook.fn_ref.forward
    return isinstance(forward, functools.partial) and forward.func == hook.new_forward


def repair_hook(module: torch.nn.Module, name: str) -> None:
    """Relink hook ``name`` if diffusers' removal of a hook below it bypassed it (a no-op otherwise).

    That removal sets this hook's ``forward`` (its ``new_forward``) to the removed hook's inner forward, which
    belongs in ``original_forward``.
    """
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return
    hook = registry.get_hook(name)
    if hook is None or not hasattr(hook, "new_forward") or _runs_its_own_forward(hook):
        return
    hook.fn_ref.original_forward = hook.fn_ref.forward
    hook.fn_ref.forward = functools.update_wrapper(
        functools.partial(hook.new_forward, registry._module_ref), hook.new_forward
    )


def remove_hook(module: torch.nn.Module, name: str) -> None:
    """Remove the hook ``name`` from ``module`` only (not its children); a no-op if absent.

    The hooks registered before and after it keep running, in order.
    """
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or registry.get_hook(name) is None:
        return
    repair_hook(module, name)
    index = registry._hook_order.index(name)
    after = registry._fn_refs[index + 1] if index + 1 < len(registry._fn_refs) else None
    after_forward = after.forward if after is not None else None
    registry.remove_hook(name, recurse=False)
    if isinstance(vars(module).get("forward"), _ClassForward):
        del module.forward
    if after is not None and after.original_forward is not None and after.forward is not after_forward:
        # diffusers put our inner forward where the next hook's new_forward was: move it to original_forward.
        after.original_forward, after.forward = after.forward, after_forward


def has_hook(module: torch.nn.Module, name: str) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(name) is not None


def foreign_hooks(
    root: torch.nn.Module, prefix: str, ours: str = "hgc_"
) -> Iterator[tuple[str, str, ModelHook]]:
    """``(module key, hook name, hook)`` of every hook registered under ``root`` whose name does not start
    with ``ours``; module keys start with ``prefix``."""
    for path, module in root.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name, hook in getattr(registry, "hooks", {}).items():
            if not name.startswith(ours):
                yield (f"{prefix}.{path}" if path else prefix), name, hook


# The per-instance hook tables of torch.nn.Module; a view gets empty ones.
_TORCH_HOOK_TABLES: tuple[str, ...] = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def unhooked_view(module: torch.nn.Module) -> torch.nn.Module:
    """A twin of ``module``'s tree that runs the modules' own ``forward`` with no hook at all.

    Every module of the twin is a shallow copy: it shares the original's parameters, buffers and other
    attributes (nothing is copied on the device), but has no hook registry, no ``forward`` installed by one
    (ours or diffusers'), and no PyTorch hooks. Tracing the twin measures what the modules compute
    unhooked, while the original keeps its policy and its per-call state untouched. The original is not
    changed.
    """
    twin = copy.copy(module)
    state = vars(twin)
    state.pop("_diffusers_hook", None)
    state.pop("forward", None)
    for table in _TORCH_HOOK_TABLES:
        if table in state:
            state[table] = type(state[table])()
    state["_parameters"] = dict(module._parameters)
    state["_buffers"] = dict(module._buffers)
    state["_modules"] = {
        name: None if child is None else unhooked_view(child) for name, child in module._modules.items()
    }
    return twin
