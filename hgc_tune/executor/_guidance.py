"""Truncated classifier-free guidance: from step ``cfg_until`` on, a denoiser runs only the conditional half
of its [uncond, cond] batch and that result stands for both halves (so the pipeline's guidance formula
``u + g·(c − u)`` yields ``c``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hgc_tune.executor._guard import PolicyHook
from hgc_tune.executor._tensors import cond_half, leading_batch, repeat_halves
from hgc_tune.runtime import RunContext
from hgc_tune.runtime._context import PerThread
from hgc_tune.runtime._registry import register_hook

__all__ = [
    "GUIDANCE_HOOK",
    "GuidanceTruncationConfig",
    "GuidanceTruncationHook",
    "GuidanceTruncationState",
    "apply_guidance_truncation",
]

GUIDANCE_HOOK = "hgc_guidance_truncation"


@dataclass(frozen=True)
class GuidanceTruncationConfig:
    """Full CFG for steps ``< cfg_until``; conditional half only from then on."""

    cfg_until: int


class GuidanceTruncationState:
    """How often the denoiser ran the conditional half only in the current call."""

    def __init__(self) -> None:
        self.truncated = 0

    def reset(self) -> None:
        self.truncated = 0


class GuidanceTruncationHook(PolicyHook):
    """Slices inputs to the cond half and repeats the output, at steps ``>= cfg_until`` of a CFG call."""

    def __init__(self, config: GuidanceTruncationConfig, context: RunContext) -> None:
        super().__init__()
        self.config = config
        self.context = context
        self._states: PerThread[GuidanceTruncationState] = PerThread(GuidanceTruncationState)

    @property
    def state(self) -> GuidanceTruncationState:
        """The state of the calling thread's pipeline call."""
        return self._states.get()

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        batch = leading_batch(args, kwargs, names=("sample",))
        # guess mode: diffusers already feeds the ControlNet the cond half only.
        if (
            not self.context.cfg
            or self.context.step < self.config.cfg_until
            or kwargs.get("guess_mode", False)
            or batch is None
            or batch % 2
        ):
            return self.fn_ref.original_forward(*args, **kwargs)
        self.state.truncated += 1
        output = self.fn_ref.original_forward(*cond_half(args, batch), **cond_half(kwargs, batch))
        return repeat_halves(output)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


def apply_guidance_truncation(
    denoiser: torch.nn.Module, config: GuidanceTruncationConfig, context: RunContext
) -> GuidanceTruncationHook:
    """Attach truncated CFG to a U-Net or ControlNet; remove with ``remove_hook(denoiser, GUIDANCE_HOOK)``."""
    hook = GuidanceTruncationHook(config, context)
    register_hook(denoiser, hook, GUIDANCE_HOOK)
    return hook
