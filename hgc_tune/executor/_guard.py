"""What the executor's hooks share, and the guard that keeps a policy to the pipeline it was applied to.

The hooks sit on the U-Net and ControlNet modules, which other pipelines can share (``from_pipe``, a pipeline
built from another's ``components``). The policy's step index and CFG state come from the pipeline it was
applied to, so the guard, registered outermost on both denoisers, refuses a call from any other pipeline
before anything is computed. A copy of the pipeline (``copy.deepcopy``, ``pickle``) is not another pipeline
sharing the modules: every hook, the handle and the run context are plain objects, so the copy carries its
own policy, bound to its own modules and scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from diffusers.hooks import ModelHook

if TYPE_CHECKING:
    from hgc_tune.runtime._registry import ForwardLink

__all__ = ["POLICY_GUARD_HOOK", "PolicyGuardHook", "PolicyHook"]

POLICY_GUARD_HOOK = "hgc_policy_guard"


class PolicyHook(ModelHook):
    """Base of the executor's hooks. Their references (config, state, run context, owner) are attributes,
    never closures, so copying a pipeline copies its policy with it."""

    # An annotation only (no class attribute): diffusers types the link's callables None until it registers
    # the hook, and the hooks call them only once registered.
    fn_ref: ForwardLink  # type: ignore[assignment]


class PolicyGuardHook(PolicyHook):
    """Runs ``owner.check_call()`` and ``owner.check_steps()`` before every forward of the module it is
    registered on; ``owner`` is the :class:`~hgc_tune.executor.PolicyHandle` of the applied policy.

    On the U-Net (``counts_steps``) it also tells the owner that a denoising step runs (``note_step()``),
    for the call's summary: the U-Net runs once per step, and the guard is the first to see it.
    """

    def __init__(self, owner: Any, counts_steps: bool = False) -> None:
        super().__init__()
        self.owner = owner
        self.counts_steps = counts_steps

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs) -> tuple[tuple, dict]:
        self.owner.check_call()
        self.owner.check_steps()
        if self.counts_steps:
            self.owner.note_step()
        return args, kwargs
