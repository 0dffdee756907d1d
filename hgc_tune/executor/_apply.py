"""``apply_policy``: attach a policy's hooks to a pipeline and get a handle that removes them."""

from __future__ import annotations

from typing import Any

import torch

from hgc_tune.errors import (
    PolicyAlreadyAppliedError,
    PolicyError,
    PolicyMismatchError,
    StepCountMismatchError,
)
from hgc_tune.executor._controlnet_window import (
    CONTROLNET_WINDOW_HOOK,
    ControlNetWindowConfig,
    ControlNetWindowHook,
    apply_controlnet_window,
)
from hgc_tune.executor._guidance import GUIDANCE_HOOK, GuidanceTruncationConfig, apply_guidance_truncation
from hgc_tune.executor._step_cache import STEP_CACHE_HOOK, StepCacheConfig, StepCacheHook, apply_step_cache
from hgc_tune.models import cacheable_module_keys
from hgc_tune.policy import Policy, PolicyFile
from hgc_tune.runtime import RunContext, attach_run_context, release_run_context, remove_hook

__all__ = ["PolicyHandle", "apply_policy", "check_policy_fits"]

_HANDLE_ATTR = "_hgc_policy_handle"


def check_policy_fits(
    pipe: Any, policy: Policy, condition_type: str | None = None, *, check_fingerprint: bool = True
) -> dict[str, torch.nn.Module]:
    """Raise :class:`PolicyMismatchError` if ``policy`` does not fit ``pipe``; return its cacheable modules
    by key.

    The one comparison of a policy with a pipeline (the executor and ``hgc-tune macs`` use it): pipeline,
    U-Net and ControlNet classes, scheduler, structural fingerprint, the condition type (when
    ``condition_type`` is given), and then every module key the policy names. The error names each field
    that differs with both values.

    Args:
        pipe: The pipeline.
        policy: The policy.
        condition_type: The condition the pipeline generates for (``None``: not checked).
        check_fingerprint: Also compare the structural fingerprint.
    """
    from hgc_tune.policy import target_for_pipeline

    found = target_for_pipeline(pipe, num_steps=policy.num_steps, condition_type=condition_type)
    diffs = policy.target.mismatches(found, check_fingerprint=check_fingerprint)
    if diffs:
        raise PolicyMismatchError(
            f"policy {policy.name!r} does not fit this pipeline: " + "; ".join(diffs) + "."
        )
    modules = cacheable_module_keys(pipe)
    for kind, keys in (("blocks", policy.blocks), ("attention", policy.attention)):
        for key in keys:
            if key not in modules:
                raise PolicyMismatchError(
                    f"policy {policy.name!r}: {kind}[{key!r}] names no cacheable module of this pipeline "
                    f"(cacheable blocks are e.g. {[k for k in modules if not k.endswith('attn2')][:6]})."
                )
    return modules


class PolicyHandle:
    """The hooks of one applied policy. ``remove()`` restores the pipeline's exact prior behaviour.

    Usable as a context manager; ``remove()`` is idempotent.
    """

    def __init__(self, pipe: Any, policy: Policy, context: RunContext) -> None:
        self.pipe = pipe
        self.policy = policy
        self.context = context
        self.step_hooks: dict[str, StepCacheHook] = {}
        self.controlnet_hook: ControlNetWindowHook | None = None
        self._attached: list[tuple[torch.nn.Module, str]] = []
        self._scheduler = pipe.scheduler
        self._guard = pipe.unet.register_forward_pre_hook(self._check_scheduler)
        self._removed = False

    @property
    def active(self) -> bool:
        return not self._removed

    def _begin_call(self, context: RunContext) -> None:
        if context.num_steps != self.policy.num_steps:
            raise StepCountMismatchError(
                f"policy {self.policy.name!r} was made for {self.policy.num_steps} steps, but the pipeline "
                f"was called with {context.num_steps} steps (num_inference_steps={context.num_steps})."
            )
        for hook in self.step_hooks.values():
            hook.state.reset()
        if self.controlnet_hook is not None:
            self.controlnet_hook.state.reset()

    def _check_scheduler(self, module: torch.nn.Module, args: tuple) -> None:
        # The step index comes from the scheduler the policy was applied with; a replaced scheduler would
        # leave it stale and silently reuse the wrong outputs.
        if self.pipe.scheduler is not self._scheduler:
            raise PolicyError(
                f"the pipeline's scheduler was replaced after policy {self.policy.name!r} was applied; "
                "remove the policy and apply it again after changing the scheduler."
            )

    def remove(self) -> None:
        """Detach every hook of this policy (idempotent)."""
        if self._removed:
            return
        self._removed = True
        self._guard.remove()
        for module, name in reversed(self._attached):
            remove_hook(module, name)
        self._attached.clear()
        self.step_hooks.clear()
        self.controlnet_hook = None
        self.context.remove_begin_listener(self._begin_call)
        release_run_context(self.pipe)
        if getattr(self.pipe, _HANDLE_ATTR, None) is self:
            delattr(self.pipe, _HANDLE_ATTR)

    def __enter__(self) -> PolicyHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"PolicyHandle(policy={self.policy.name!r}, active={self.active})"


def apply_policy(
    pipe: Any,
    policy: Policy | PolicyFile,
    condition_type: str | None = None,
    *,
    check_fingerprint: bool = True,
) -> PolicyHandle:
    """Apply a caching policy to a ``StableDiffusionControlNetPipeline``.

    Every cached module key gets a step-cache hook; the ControlNet gets a window hook (which also skips
    the compute diffusers wastes at ``conditioning_scale == 0``); with a guidance window, the U-Net and the
    ControlNet get truncated-CFG hooks. Nothing is attached if the policy does not fit.

    Args:
        pipe: The pipeline (its ``unet``, ``controlnet`` and ``scheduler`` are hooked in place).
        policy: A :class:`Policy`, or a :class:`PolicyFile` from which ``condition_type`` picks one.
        condition_type: The condition the pipeline generates for: it picks the policy of a multi-policy
            file, and a policy made for another condition type is refused.
        check_fingerprint: Refuse a policy made for another U-Net/ControlNet configuration.

    Returns:
        A :class:`PolicyHandle`; call ``remove()`` (or use it as a context manager) to detach.

    Raises:
        PolicyAlreadyAppliedError: The pipeline already has a policy applied.
        PolicyMismatchError: The policy's target or module keys do not fit the pipeline.
        StepCountMismatchError: At call time, if the pipeline runs a different number of steps.

    Example:
        >>> from PIL import Image
        >>> from hgc_tune import apply_policy, load_pipeline, load_policy
        >>> pipe = load_pipeline("tiny")
        >>> policy = load_policy("policies/tiny-deepcache-n3-b0.json")
        >>> condition = Image.new("RGB", (64, 64))
        >>> with apply_policy(pipe, policy):
        ...     image = pipe("a red circle", image=condition, num_inference_steps=20).images[0]
    """
    if isinstance(policy, PolicyFile):
        policy = policy.select(condition_type)
    existing = getattr(pipe, _HANDLE_ATTR, None)
    if existing is not None and existing.active:
        raise PolicyAlreadyAppliedError(
            f"a policy ({existing.policy.name!r}) is already applied to this pipeline; call .remove() on its "
            "handle before applying another."
        )
    modules = check_policy_fits(pipe, policy, condition_type, check_fingerprint=check_fingerprint)

    context = attach_run_context(pipe)
    handle = PolicyHandle(pipe, policy, context)
    try:
        for key, steps in policy.compute_sets().items():
            if key == "controlnet":
                continue
            hook = apply_step_cache(modules[key], StepCacheConfig(frozenset(steps)), context)
            handle._attached.append((modules[key], STEP_CACHE_HOOK))
            handle.step_hooks[key] = hook
        window = policy.controlnet
        config = (
            ControlNetWindowConfig(frozenset(window.steps), window.mode)
            if window
            else ControlNetWindowConfig()
        )
        handle.controlnet_hook = apply_controlnet_window(pipe.controlnet, config, context)
        handle._attached.append((pipe.controlnet, CONTROLNET_WINDOW_HOOK))
        if policy.guidance is not None:
            # Registered last, so it wraps outside the window hook and reuse sees the truncated batch.
            for denoiser in (pipe.controlnet, pipe.unet):
                apply_guidance_truncation(
                    denoiser, GuidanceTruncationConfig(policy.guidance.cfg_until), context
                )
                handle._attached.append((denoiser, GUIDANCE_HOOK))
        context.add_begin_listener(handle._begin_call)
    except BaseException:
        handle.remove()
        raise
    setattr(pipe, _HANDLE_ATTR, handle)
    return handle
