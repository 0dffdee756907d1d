"""What a tuned policy's figures were measured on (the weights and the guidance scale its provenance
records), and the warning when it is applied to other weights or called at another guidance scale.

Like a LoRA, neither changes the module tree: the policy fits and runs, but the losses and bounds its
provenance states were measured on other outputs. So a mismatch warns (:class:`ProvenanceMismatchWarning`,
once per pipeline, policy and values) rather than refuses. Files written before these fields existed record
neither and never warn.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from hgc_tune.errors import ProvenanceMismatchWarning

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.policy._model import Policy, Provenance

__all__ = ["check_policy_guidance", "check_policy_weights", "describe_measured_on"]

_WARNED_ATTR = "_hgc_provenance_warned"


def describe_measured_on(provenance: Provenance) -> str:
    """``weights 0123456789abcdef at guidance 3``: what the provenance records (``unrecorded settings`` when
    it records neither)."""
    parts = []
    if provenance.weights_digest is not None:
        parts.append(f"weights {provenance.weights_digest}")
    if provenance.guidance_scale is not None:
        parts.append(f"guidance {provenance.guidance_scale:g}")
    return " at ".join(parts) or "unrecorded settings"


def _warn_once(pipe: Any, message: str) -> None:
    warned = vars(pipe).setdefault(_WARNED_ATTR, set())
    if message not in warned:
        warned.add(message)
        warnings.warn(message, ProvenanceMismatchWarning, stacklevel=4)


def check_policy_weights(pipe: ControlNetPipeline, policy: Policy) -> str | None:
    """Warn (once per pipeline, policy and weights) if ``policy`` records the weights it was tuned on and
    ``pipe`` holds others; return the message, or ``None`` if they agree or none are recorded.

    The digest is :func:`hgc_tune.models._fingerprint.weights_digest`, which covers the dtype and unfused LoRA
    adapters: the same checkpoint in fp16 counts as other weights, as its outputs differ.
    """
    recorded = policy.provenance.weights_digest
    if recorded is None:
        return None
    from hgc_tune.models._fingerprint import weights_digest

    found = weights_digest(pipe)
    if found == recorded:
        return None
    message = (
        f"policy {policy.name!r} was tuned on other weights: its figures were measured on "
        f"{describe_measured_on(policy.provenance)}, but this pipeline holds weights {found} (the digest "
        "covers the dtype and LoRA adapters); they may not hold here. Profile and search on these weights "
        "for a policy whose figures do."
    )
    _warn_once(pipe, message)
    return message


def check_policy_guidance(
    pipe: ControlNetPipeline, policy: Policy, guidance_scale: float | None
) -> str | None:
    """Warn (once per pipeline, policy and scale) if ``policy`` records the guidance scale it was tuned at
    and ``guidance_scale`` (the current call's) differs; return the message, or ``None``."""
    recorded = policy.provenance.guidance_scale
    if recorded is None or guidance_scale is None:
        return None
    scale = float(guidance_scale)
    if math.isclose(scale, recorded, rel_tol=0.0, abs_tol=1e-9):
        return None
    message = (
        f"policy {policy.name!r} is called at guidance {scale:g}, but its figures were measured on "
        f"{describe_measured_on(policy.provenance)}; they may not hold at this scale. Call the pipeline with "
        f"guidance_scale={recorded:g}, or profile (--guidance-scale {scale:g}) and search for this scale."
    )
    _warn_once(pipe, message)
    return message
