"""The HGC executor: applies a policy's block, cross-attention, ControlNet and guidance entries to a
diffusers pipeline through removable hooks (diffusers' ``HookRegistry``)."""

from __future__ import annotations

from hgc_tune.executor._apply import PolicyHandle, apply_policy, check_policy_fits, policy_handle
from hgc_tune.executor._controlnet_window import (
    CONTROLNET_WINDOW_HOOK,
    ControlNetWindowConfig,
    ControlNetWindowHook,
    apply_controlnet_window,
    zero_controlnet_residuals,
)
from hgc_tune.executor._guidance import (
    GUIDANCE_HOOK,
    GuidanceTruncationConfig,
    GuidanceTruncationHook,
    apply_guidance_truncation,
)
from hgc_tune.executor._step_cache import STEP_CACHE_HOOK, StepCacheConfig, StepCacheHook, apply_step_cache

__all__ = [
    "CONTROLNET_WINDOW_HOOK",
    "GUIDANCE_HOOK",
    "STEP_CACHE_HOOK",
    "ControlNetWindowConfig",
    "ControlNetWindowHook",
    "GuidanceTruncationConfig",
    "GuidanceTruncationHook",
    "PolicyHandle",
    "StepCacheConfig",
    "StepCacheHook",
    "apply_controlnet_window",
    "apply_guidance_truncation",
    "apply_policy",
    "apply_step_cache",
    "check_policy_fits",
    "policy_handle",
    "zero_controlnet_residuals",
]
