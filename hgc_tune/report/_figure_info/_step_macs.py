"""MACs per denoising step under a policy against full compute."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

_UNITS = {0: "MACs", 3: "K MACs (10³)", 6: "M MACs (10⁶)", 9: "G MACs (10⁹)", 12: "T MACs (10¹²)"}


class _StepMacsInfo(NamedTuple):
    """The bars and the full-compute line, in :attr:`unit`.

    Attributes:
        unet: The policy's U-Net MACs per step.
        controlnet: The policy's ControlNet MACs per step (stacked on the U-Net's).
        full: Full compute's MACs per step (U-Net and ControlNet).
        unit: The unit of the three (``G MACs (10⁹)``): a power of 10³ that keeps the largest below 1000.
        saved: The fraction of all MACs the policy saves.
        convention: The MAC convention, for the axis label.
        policy_name: The policy's name.
    """

    unet: np.ndarray
    controlnet: np.ndarray
    full: np.ndarray
    unit: str
    saved: float
    convention: str
    policy_name: str


def _get_step_macs_info(
    steps_policy: Sequence[dict[str, int]],
    steps_full: Sequence[dict[str, int]],
    *,
    convention: str,
    policy_name: str = "policy",
) -> _StepMacsInfo:
    """Per-step MACs (:func:`hgc_tune.policy._macs.policy_step_macs`) of the policy and of full compute,
    scaled to one unit, and the fraction saved overall."""
    n = len(steps_full)
    full = np.array([s["unet"] + s["controlnet"] for s in steps_full], dtype=float)
    unet = np.array([s["unet"] for s in steps_policy], dtype=float)
    control = np.array([s["controlnet"] for s in steps_policy], dtype=float)
    top = max(float(full.max()) if n else 1.0, 1.0)
    exponent = 3 * int(math.floor(math.log10(top) / 3)) if top >= 1000 else 0
    scale = 10.0**exponent
    saved = 1 - (unet.sum() + control.sum()) / full.sum() if full.sum() else 0.0
    return _StepMacsInfo(
        unet=unet / scale,
        controlnet=control / scale,
        full=full / scale,
        unit=_UNITS.get(exponent, f"10^{exponent} MACs"),
        saved=float(saved),
        convention=convention,
        policy_name=policy_name,
    )
