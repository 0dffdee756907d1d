"""The :class:`PolicyTarget` of a loaded pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hgc_tune.models import model_fingerprint
from hgc_tune.models._fingerprint import controlnet_fingerprints
from hgc_tune.models._loading import LOADED_CONDITION_ATTR
from hgc_tune.policy._model import ControlNetSpec, Policy, PolicyTarget

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

__all__ = [
    "loaded_condition_type",
    "policy_profile_mismatches",
    "target_for_pipeline",
]


def target_for_pipeline(
    pipe: ControlNetPipeline, *, num_steps: int, condition_type: str | None = None, model: str | None = None
) -> PolicyTarget:
    """Describe ``pipe`` as a policy target: class names, structural fingerprint, scheduler, steps.

    Args:
        pipe: A diffusers ControlNet pipeline.
        num_steps: Denoising steps per generation the policy is made for.
        condition_type: The condition the policy is for (``seg``, ``canny``, …), ``None`` for any. With
            several ControlNets, their condition types in order, joined by commas (``seg,depth``).
        model: A human label for the model (a preset name or checkpoint id).

    Example:
        >>> from hgc_tune.models import load_pipeline
        >>> target_for_pipeline(load_pipeline("tiny"), num_steps=20, model="tiny").scheduler
        'UniPCMultistepScheduler'
    """
    controlnet = getattr(pipe, "controlnet", None)
    # Each ControlNet is listed for several (a MultiControlNetModel); one is described by the class and
    # fingerprint fields alone, as in version-1 files.
    several = hasattr(controlnet, "nets")
    nets = controlnet_fingerprints(pipe) if several else []
    types: list[str | None] = [None] * len(nets)
    if condition_type is not None and len(condition_type.split(",")) == len(nets):
        # Condition types that do not count the ControlNets stay on the target alone, and the comparison
        # with a policy's target says what differs.
        types = [*condition_type.split(",")]
    return PolicyTarget(
        pipeline_class=type(pipe).__name__,
        unet_class=type(pipe.unet).__name__,
        # Empty for a pipeline without a ControlNet; every shipped pipeline has one.
        controlnet_class=type(controlnet).__name__ if controlnet is not None else "",
        fingerprint=model_fingerprint(pipe),
        num_steps=num_steps,
        scheduler=type(pipe.scheduler).__name__,
        condition_type=condition_type,
        model=model,
        controlnets=tuple(ControlNetSpec(c, f, t) for (c, f), t in zip(nets, types)),
    )


def loaded_condition_type(pipe: ControlNetPipeline) -> str | None:
    """The condition type ``load_pipeline`` built ``pipe`` for (``seg``; ``seg,depth`` for several
    ControlNets, in their order), or ``None`` if it did not record one (another loader, ``from_pipe``)."""
    value = getattr(pipe, LOADED_CONDITION_ATTR, None)
    return value if isinstance(value, str) and value else None


def policy_profile_mismatches(policy: Policy, meta: Mapping[str, Any]) -> list[str]:
    """What differs between a policy's target and a profile's metadata (``Profile.meta``): the scheduler and,
    when both name one, the condition type; each as ``"field: policy has …, profile has …"``.

    A policy drawn over a profile of another scheduler would show reuse against similarities its steps never
    had (another scheduler visits other timesteps at the same step index).
    """
    diffs = []
    scheduler = meta.get("scheduler")
    if scheduler and scheduler != policy.target.scheduler:
        diffs.append(f"scheduler: policy has {policy.target.scheduler!r}, profile has {scheduler!r}")
    made_for, profiled = policy.target.condition_type, meta.get("condition_type") or None
    if made_for is not None and profiled is not None and made_for != profiled:
        diffs.append(f"condition_type: policy has {made_for!r}, profile has {profiled!r}")
    return diffs
