"""ControlNet windows: the whole ControlNet runs at the steps of its window; elsewhere its residuals are
reused from the latest computed step (``reuse``) or are zeros and nothing is computed (``drop``).

Independently of any window, a call with ``conditioning_scale == 0`` (what diffusers does outside
``control_guidance_start/end``) is dropped too: diffusers would run the ControlNet and multiply by zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from hgc_tune.executor._guard import PolicyHook
from hgc_tune.executor._tensors import copy_tensors, fit_batch, leading_batch
from hgc_tune.runtime import RunContext
from hgc_tune.runtime._context import PerThread
from hgc_tune.runtime._registry import register_hook

if TYPE_CHECKING:
    from diffusers.models.controlnets.controlnet import ControlNetModel

__all__ = [
    "CONTROLNET_WINDOW_HOOK",
    "ControlNetWindowConfig",
    "ControlNetWindowState",
    "ControlNetWindowHook",
    "apply_controlnet_window",
    "zero_controlnet_residuals",
]

CONTROLNET_WINDOW_HOOK = "hgc_controlnet_window"


@dataclass(frozen=True)
class ControlNetWindowConfig:
    """Where the ControlNet runs (``steps``, ``None`` = every step) and what it does elsewhere (``mode``).

    ``private_outputs``: keep a copy of the computed residuals and hand out a copy when reusing them, for a
    ControlNet whose caller changes its residuals in place (diffusers' ``MultiControlNetModel`` sums the nets'
    mid residuals into the first net's).
    """

    steps: frozenset[int] | None = None
    mode: str = "reuse"
    private_outputs: bool = False


class ControlNetWindowState:
    """The residuals of the ControlNet's latest computed step of the current call, and how often it
    computed, reused and dropped in it."""

    def __init__(self) -> None:
        self.residuals: Any = None
        self.computed = 0
        self.dropped = 0
        self.reused = 0

    def reset(self) -> None:
        self.residuals = None
        self.computed = 0
        self.dropped = 0
        self.reused = 0


def _is_zero_scale(scale: Any) -> bool:
    # Only Python numbers are inspected: a tensor scale would need a host sync to read.
    if isinstance(scale, int | float):
        return scale == 0
    if isinstance(scale, list | tuple) and scale:
        return all(isinstance(s, int | float) and s == 0 for s in scale)
    return False


def zero_controlnet_residuals(controlnet: ControlNetModel, sample: torch.Tensor, return_dict: bool = False):
    """Zero residuals of the shapes ``controlnet`` would return for ``sample``, computing nothing.

    Shapes follow ``ControlNetModel``: one residual for ``conv_in``, one per resnet layer of each down block,
    one per downsampler (which halves the resolution, rounding up), and one for the mid block.
    """
    # Here, not at the top: the ControlNet module adds ~300 modules to importing the executor.
    from diffusers.models.controlnets.controlnet import ControlNetOutput

    batch, _, height, width = sample.shape
    sizes = [(height, width)]
    # Annotated for the type checker: a ModuleList's items are plain Modules to it.
    blocks: Iterable[Any] = controlnet.down_blocks
    for block in blocks:
        sizes += [(height, width)] * len(block.resnets)
        if getattr(block, "downsamplers", None):
            height, width = (height + 1) // 2, (width + 1) // 2
            sizes.append((height, width))
    convs: list[Any] = list(controlnet.controlnet_down_blocks)
    if len(convs) != len(sizes):
        raise RuntimeError(f"ControlNet layout: {len(convs)} residual convs for {len(sizes)} residual sizes")

    def zeros(channels: int, hw: tuple[int, int]) -> torch.Tensor:
        return torch.zeros(batch, channels, *hw, device=sample.device, dtype=sample.dtype)

    down = tuple(zeros(conv.out_channels, hw) for conv, hw in zip(convs, sizes))
    mid = zeros(controlnet.controlnet_mid_block.out_channels, (height, width))
    if return_dict:
        # diffusers annotates the residuals tuple[Tensor] (one element); it holds one per residual conv.
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)  # type: ignore[arg-type]
    return down, mid


class ControlNetWindowHook(PolicyHook):
    """Reuses or drops the whole ControlNet outside its window and whenever its scale is zero."""

    # Stateful the diffusers way: HookRegistry.reset_stateful_hooks reaches it and frees what it keeps.
    _is_stateful = True

    def __init__(self, config: ControlNetWindowConfig, context: RunContext) -> None:
        super().__init__()
        self.config = config
        self.context = context
        self._states: PerThread[ControlNetWindowState] = PerThread(ControlNetWindowState)

    @property
    def state(self) -> ControlNetWindowState:
        """The state of the calling thread's pipeline call (each thread reuses its own residuals)."""
        return self._states.get()

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        sample = args[0] if args else kwargs["sample"]
        return_dict = kwargs.get("return_dict", True)
        state = self.state
        in_window = self.config.steps is None or self.context.step in self.config.steps
        if _is_zero_scale(kwargs.get("conditioning_scale", 1.0)) or (
            not in_window and self.config.mode == "drop"
        ):
            state.dropped += 1
            # The hook sits on a whole ControlNet (apply_controlnet_window).
            return zero_controlnet_residuals(cast("ControlNetModel", module), sample, return_dict=return_dict)
        if not in_window and state.residuals is not None:
            reused = fit_batch(state.residuals, leading_batch(args, kwargs))
            if reused is not None:
                state.reused += 1
                return copy_tensors(reused) if self.config.private_outputs else reused
        output = self.fn_ref.original_forward(*args, **kwargs)
        copy = self.context.copy_cached_outputs or self.config.private_outputs
        state.residuals = copy_tensors(output) if copy else output
        state.computed += 1
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


def apply_controlnet_window(
    controlnet: torch.nn.Module, config: ControlNetWindowConfig, context: RunContext
) -> ControlNetWindowHook:
    """Attach a ControlNet window; remove with ``remove_hook(controlnet, CONTROLNET_WINDOW_HOOK)``."""
    hook = ControlNetWindowHook(config, context)
    register_hook(controlnet, hook, CONTROLNET_WINDOW_HOOK)
    return hook
