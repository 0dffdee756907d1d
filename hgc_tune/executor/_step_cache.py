"""Step caching: a module computes at the steps of its compute set and reuses its output elsewhere.

This one rule implements both granularities of HGC (arXiv 2511.11031): coarse (whole U-Net / ControlNet
blocks) and fine (cross-attention modules, whose reused output carries their reused attention maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hgc_tune.executor._guard import PolicyHook
from hgc_tune.executor._tensors import copy_tensors, fit_batch, leading_batch
from hgc_tune.runtime import RunContext
from hgc_tune.runtime._context import PerThread
from hgc_tune.runtime._registry import register_hook

__all__ = ["STEP_CACHE_HOOK", "StepCacheConfig", "StepCacheState", "StepCacheHook", "apply_step_cache"]

STEP_CACHE_HOOK = "hgc_step_cache"


@dataclass(frozen=True)
class StepCacheConfig:
    """Compute set of one module: the steps at which it runs (must contain 0)."""

    compute_steps: frozenset[int]


class StepCacheState:
    """The output stored at the module's latest computed step of the current call, and how often the
    module computed and reused in it."""

    def __init__(self) -> None:
        self.output: Any = None
        self.computed_at: int | None = None
        self.computed = 0
        self.reused = 0

    def reset(self) -> None:
        self.output = None
        self.computed_at = None
        self.computed = 0
        self.reused = 0


class StepCacheHook(PolicyHook):
    """Runs the module at compute steps, returns the stored output at the others.

    The stored output is the calling thread's (:attr:`state`): two threads calling one pipeline reuse only
    what their own call computed.
    """

    # Stateful the diffusers way: HookRegistry.reset_stateful_hooks reaches it and frees what it keeps.
    _is_stateful = True

    def __init__(self, config: StepCacheConfig, context: RunContext) -> None:
        super().__init__()
        self.config = config
        self.context = context
        self._states: PerThread[StepCacheState] = PerThread(StepCacheState)

    @property
    def state(self) -> StepCacheState:
        """The state of the calling thread's pipeline call."""
        return self._states.get()

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        state = self.state
        if self.context.step not in self.config.compute_steps and state.output is not None:
            reused = fit_batch(state.output, leading_batch(args, kwargs))
            if reused is not None:
                state.reused += 1
                return reused
        output = self.fn_ref.original_forward(*args, **kwargs)
        state.output = copy_tensors(output) if self.context.copy_cached_outputs else output
        state.computed_at = self.context.step
        state.computed += 1
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


def apply_step_cache(module: torch.nn.Module, config: StepCacheConfig, context: RunContext) -> StepCacheHook:
    """Attach step caching to ``module``; remove it with ``remove_hook(module, STEP_CACHE_HOOK)``."""
    hook = StepCacheHook(config, context)
    register_hook(module, hook, STEP_CACHE_HOOK)
    return hook
