"""The one place where hgc-tune changes a module's ``forward``: diffusers' ``HookRegistry``.

Every compute-skipping hook is a ``diffusers.hooks.ModelHook`` registered under a name from this package;
:func:`remove_hooks` unwinds them. Observation (the profiler) uses plain ``register_forward_hook`` handles.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook

__all__ = ["register_hook", "remove_hook", "has_hook"]


def register_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register ``hook`` on ``module`` under ``name`` (raises ``ValueError`` if the name is taken)."""
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def remove_hook(module: torch.nn.Module, name: str) -> None:
    """Remove the hook ``name`` from ``module`` only (not its children); a no-op if absent."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None:
        registry.remove_hook(name, recurse=False)


def has_hook(module: torch.nn.Module, name: str) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(name) is not None
