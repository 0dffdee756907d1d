"""The HGC executor: applies a policy's block, cross-attention, ControlNet and guidance entries to a
diffusers pipeline through removable hooks (diffusers' ``HookRegistry``).

:func:`apply_policy` applies a whole policy and returns a :class:`PolicyHandle`; each technique can also be
applied on its own with its frozen config (``apply_step_cache``, ``apply_controlnet_window``,
``apply_guidance_truncation``). ``PolicyHandle.summary()`` returns a :class:`CallSummary` of the last call
(per module computed/reused counts, guidance steps, and with ``count_macs=True`` the MACs executed). The hook
classes and their names stay in the private modules.
"""

from __future__ import annotations

from hgc_tune.executor._apply import PolicyHandle, apply_policy, check_policy_fits, policy_handle
from hgc_tune.executor._controlnet_window import ControlNetWindowConfig, apply_controlnet_window
from hgc_tune.executor._guidance import GuidanceTruncationConfig, apply_guidance_truncation
from hgc_tune.executor._step_cache import StepCacheConfig, apply_step_cache
from hgc_tune.executor._summary import CallMacs, CallSummary, ModuleCounts

__all__ = [
    "CallMacs",
    "CallSummary",
    "ControlNetWindowConfig",
    "GuidanceTruncationConfig",
    "ModuleCounts",
    "PolicyHandle",
    "StepCacheConfig",
    "apply_controlnet_window",
    "apply_guidance_truncation",
    "apply_policy",
    "apply_step_cache",
    "check_policy_fits",
    "policy_handle",
]
