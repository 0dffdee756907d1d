"""The report's summary: the numbers a user checks before trusting a policy, as JSON-ready data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hgc_tune.policy import Policy, policy_macs
from hgc_tune.policy._macs import MAC_CONVENTIONS, mac_savings_by_mechanism
from hgc_tune.search._pareto import ParetoData, ParetoPoint

if TYPE_CHECKING:
    from hgc_tune.profile import Profile

__all__ = [
    "FIDELITY_SPLITS",
    "fidelity_by_split",
    "profile_cfg",
    "report_summary",
    "savings_by_mechanism",
]

# Split names recognised in provenance fidelity keys (``heldout.miou_loss``, ``loss_calibration``, …).
FIDELITY_SPLITS: tuple[str, ...] = ("calibration", "heldout", "held_out", "held-out", "validation", "test")
_SEPARATORS = ("/", ".", ":", "_", "-")


def profile_cfg(profile: Profile) -> bool:
    """Whether the profile's generations used classifier-free guidance."""
    meta = profile.meta
    return bool(meta.get("cfg", profile.guidance_scale > 1.0))


def fidelity_by_split(fidelity: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Group a provenance ``fidelity`` mapping by split.

    A key that starts or ends with a split name and a separator (``heldout.miou_loss``,
    ``miou_loss/calibration``) goes to that split under the rest of its name; any other key goes to the
    split ``""``. Values are kept as given.

    Example:
        >>> fidelity_by_split({"calibration.loss": 0.01, "heldout.loss": 0.012, "metric": "miou"})
        {'calibration': {'loss': 0.01}, 'heldout': {'loss': 0.012}, '': {'metric': 'miou'}}
    """
    out: dict[str, dict[str, Any]] = {}
    for key, value in fidelity.items():
        split, name = "", key
        for candidate in FIDELITY_SPLITS:
            for sep in _SEPARATORS:
                if key.startswith(candidate + sep) and len(key) > len(candidate) + 1:
                    split, name = candidate, key[len(candidate) + 1 :]
                elif key.endswith(sep + candidate) and len(key) > len(candidate) + 1:
                    split, name = candidate, key[: -len(candidate) - 1]
                if split:
                    break
            if split:
                break
        out.setdefault(split, {})[name] = value
    return out


def _macs(profile: Profile, policy: Policy | None) -> dict[str, dict[str, float]]:
    table, cfg = profile.mac_table, profile_cfg(profile)
    out: dict[str, dict[str, float]] = {}
    for convention in MAC_CONVENTIONS:
        if policy is not None:
            m = policy_macs(policy, table, cfg=cfg, convention=convention)
            out[convention] = {k: float(m[k]) for k in ("full", "policy", "reduction", "ratio")}
        else:
            full = table.generation_macs(profile.num_steps, cfg=cfg, convention=convention)["total"]
            out[convention] = {"full": float(full)}
    return out


def savings_by_mechanism(profile: Profile, policy: Policy) -> dict[str, dict[str, Any]]:
    """Per convention, what ``policy`` saves split among its mechanisms, guidance window first, each
    skipped MAC counted once (:func:`hgc_tune.policy._macs.mac_savings_by_mechanism`: the parts add up to the
    reduction)."""
    table, cfg = profile.mac_table, profile_cfg(profile)
    return {
        c: mac_savings_by_mechanism(policy, table, cfg=cfg, convention=c).to_json() for c in MAC_CONVENTIONS
    }


def report_summary(
    profile: Profile,
    *,
    policy: Policy | None = None,
    pareto: ParetoData | None = None,
    grid_counts: Mapping[str, int] | None = None,
    sample_indices: Sequence[int] = (),
    psnr_db: Sequence[float] | None = None,
    profile_source: str | None = None,
) -> dict[str, Any]:
    """The summary table's content as JSON-ready data.

    Keys: ``model`` (name, fingerprint, condition type, steps, scheduler, resolution, guidance, samples,
    dataset), ``macs`` (per convention: ``full``, and with a policy ``policy``, ``reduction``, ``ratio``;
    computed from the profile's MAC table), ``savings_by_mechanism`` (with a policy: per convention, its
    reduction split among guidance window, ControlNet window, ControlNet blocks, U-Net blocks and
    cross-attention reuse, in that order of attribution; else ``None``), ``policy`` (name, source, study,
    trial, budget, metric, ``fidelity`` grouped by split from its provenance, ``provenance_macs`` as
    recorded, ``cells`` per grid state, ``prompt``: what guarded the
    prompt during the search, the weights digest and guidance scale its figures were measured on
    (``None``: not recorded)) or ``None``, ``samples`` (indices, seeds, prompts, negative
    prompts, and the PSNR of the policy's images against full compute, measured here), and ``pareto``
    (trial counts, budget, chosen point) or ``None``.
    """
    meta = profile.meta
    height, width = profile.resolution
    summary: dict[str, Any] = {
        "profile": profile_source,
        "model": {
            "name": profile.model_name,
            "fingerprint": profile.fingerprint,
            "condition_type": profile.condition_type,
            "steps": profile.num_steps,
            # img2img / inpainting: `steps` counts the steps run, fewer than num_inference_steps when
            # strength < 1
            "task": profile.task,
            "num_inference_steps": profile.num_inference_steps,
            "strength": profile.strength,
            "scheduler": meta.get("scheduler"),
            "resolution": [height, width],
            "guidance_scale": profile.guidance_scale,
            "cfg": profile_cfg(profile),
            "samples": profile.num_samples,
            "dataset": (meta.get("dataset") or {}).get("name"),
            "dtype": meta["model"].get("dtype"),
        },
        "macs": _macs(profile, policy),
        "savings_by_mechanism": None if policy is None else savings_by_mechanism(profile, policy),
        "policy": None,
        "samples": {
            "indices": list(sample_indices),
            "seeds": [profile.seeds[i] for i in sample_indices],
            "prompts": [profile.prompts[i] for i in sample_indices],
            "negative_prompts": [profile.negative_prompts[i] for i in sample_indices],
            "psnr_db": list(psnr_db) if psnr_db is not None else None,
        },
        "pareto": None,
    }
    if psnr_db:
        summary["samples"]["mean_psnr_db"] = float(sum(psnr_db) / len(psnr_db))
    if policy is not None:
        p = policy.provenance
        summary["policy"] = {
            "name": policy.name,
            "source": p.source,
            "study": p.study,
            "trial": p.trial,
            "budget": p.budget,
            "metric": p.metric,
            "confidence": p.confidence,
            "weights_digest": p.weights_digest,
            "guidance_scale": p.guidance_scale,
            "fidelity": fidelity_by_split(dict(p.fidelity)),
            # every constraint's budget and bounds, c and k (None: an older policy, one constraint)
            "constraints": None if p.constraints is None else dict(p.constraints),
            # SSIM and PSNR of the policy's pictures to the full-compute ones, per split
            "picture_fidelity": dict(p.picture_fidelity),
            "provenance_macs": {c: dict(v) for c, v in p.macs.items()},
            "controlnet": None
            if policy.controlnet is None
            else {"steps": list(policy.controlnet.steps), "mode": policy.controlnet.mode},
            "controlnets": {
                key: {"steps": list(w.steps), "mode": w.mode} for key, w in policy.controlnets.items()
            },
            "cfg_until": None if policy.guidance is None else policy.guidance.cfg_until,
            "prompt": None if p.prompt is None else dict(p.prompt),
            "cells": dict(grid_counts) if grid_counts is not None else None,
        }
    if pareto is not None:
        summary["pareto"] = _pareto_summary(pareto)
    return summary


def _pareto_summary(pareto: ParetoData) -> dict[str, Any]:
    def point(p: ParetoPoint) -> dict[str, Any]:
        return {
            "number": p.number,
            "reduction": p.reduction("paper"),
            "loss": p.loss,
            "loss_upper": p.loss_upper,
            "feasible": p.feasible,
            "heldout_loss": p.heldout_loss,
            "heldout_loss_upper": p.heldout_loss_upper,
            "constraints": [dict(c) for c in p.constraints],
            "picture": dict(p.picture),
        }

    chosen = pareto.chosen
    return {
        "source": pareto.source,
        "study": pareto.study,
        "metric": pareto.metric,
        "budget": pareto.budget,
        "confidence": pareto.confidence,
        "constraints": None if pareto.constraints is None else dict(pareto.constraints),
        "trials": len(pareto.points),
        "feasible": sum(p.feasible and p.scored for p in pareto.points),
        "failed": sum(p.loss is None for p in pareto.points),
        "front": [p.number for p in pareto.front],
        "peers": {p.peer: point(p) for p in pareto.peers},
        "chosen": None if chosen is None else point(chosen),
        "validated": pareto.validated,
        "message": pareto.message,
    }
