"""What the executor's hooks share, and the guard that keeps a policy to the pipeline it was applied to.

The hooks sit on the U-Net and ControlNet modules, which other pipelines can share (``from_pipe``, a pipeline
built from another's ``components``) or copy (``copy.deepcopy``). The policy's step index and CFG state come
from the pipeline it was applied to, so the guard, registered outermost on both denoisers, refuses a call
from any other pipeline before anything is computed; and the hooks refuse to be copied, since a copied hook
would still run the original modules.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import ModelHook

from hgc_tune.errors import PolicyError

__all__ = ["POLICY_GUARD_HOOK", "PolicyGuardHook", "PolicyHook", "copy_refusal"]

POLICY_GUARD_HOOK = "hgc_policy_guard"


def copy_refusal(policy_name: str | None = None) -> PolicyError:
    which = f"policy {policy_name!r}" if policy_name else "a policy"
    return PolicyError(
        f"a pipeline cannot be copied or pickled while {which} is applied to it: the policy's hooks are "
        "bound to this pipeline's modules, so a copy would run the original's. Call remove() on the handle "
        "(or leave the `with apply_policy(...)` block), copy the pipeline, then apply it to each copy."
    )


class PolicyHook(ModelHook):
    """Base of the executor's hooks: copying or pickling one is refused with a clear message."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise copy_refusal()


class PolicyGuardHook(PolicyHook):
    """Runs ``owner.check_call()`` before every forward of the module it is registered on; ``owner`` is the
    :class:`~hgc_tune.executor.PolicyHandle` of the applied policy."""

    def __init__(self, owner: Any) -> None:
        super().__init__()
        self.owner = owner

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs) -> tuple[tuple, dict]:
        self.owner.check_call()
        return args, kwargs
