"""The ControlNet residuals' change across steps, with the steps a policy's window reuses or drops."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from hgc_tune.models._blocks import is_whole_model_key
from hgc_tune.report._figure_info._heatmaps import _relative_label
from hgc_tune.report._labels import module_label, natural_order

if TYPE_CHECKING:
    from hgc_tune.policy import Policy
    from hgc_tune.profile import Profile

# (profile statistic without its mean_/std_ prefix, scale): relative L1 change in percent, cosine similarity.
_METRICS = (("rel_l1", 100.0), ("cos", 1.0))


class _ResidualPanel(NamedTuple):
    """One metric of one ControlNet over the steps.

    Attributes:
        metric: ``rel_l1`` (in percent) or ``cos``.
        mean: Mean over samples of all its residuals together, per step.
        std: Their standard deviation over samples, per step.
        blocks: ``(label, mean per step)`` of each of its blocks.
    """

    metric: str
    mean: np.ndarray
    std: np.ndarray
    blocks: list[tuple[str, np.ndarray]]


class _NetResiduals(NamedTuple):
    """One ControlNet.

    Attributes:
        key: Its key (``controlnet``, ``controlnet.nets.1``).
        kind: Its condition type, where the profile names one per ControlNet, else ``""``.
        panels: Its relative-change and cosine panels, in that order.
        policy_steps: The steps the policy's window for it reuses or drops it (none without a window).
        policy_mode: That window's ``reuse`` or ``drop``; ``None`` without a window.
    """

    key: str
    kind: str
    panels: tuple[_ResidualPanel, ...]
    policy_steps: list[int]
    policy_mode: str | None


class _ControlNetResidualsInfo(NamedTuple):
    """Every ControlNet of a profile (none: the profile has no ControlNet).

    Attributes:
        nets: One entry per ControlNet.
        several: Whether they are several ControlNets of a ``MultiControlNetModel`` (one row each).
        num_steps: Steps of the profile.
        num_samples: Samples the means are over.
    """

    nets: list[_NetResiduals]
    several: bool
    num_steps: int
    num_samples: int


def _get_controlnet_residuals_info(
    profile: Profile, policy: Policy | None = None
) -> _ControlNetResidualsInfo:
    """The residual change of the ControlNet (or of each of several), of all its residuals together and of
    each of its blocks; with ``policy``, the steps its window reuses or drops it.

    Block labels: the module label (``controlnet.down.0``) for one ControlNet, the label within the net
    (``down.0``) for several.
    """
    wholes = [k for k in profile.block_keys if is_whole_model_key(k)]
    several = len(wholes) > 1
    if not several:
        wholes = ["controlnet"] if "controlnet" in profile.block_keys else []
    types = str(profile.condition_type or "").split(",")
    nets = []
    for row, whole in enumerate(wholes):
        blocks = natural_order([k for k in profile.block_keys if k.startswith(whole + ".")])
        panels = tuple(
            _ResidualPanel(
                metric,
                profile.stat(f"mean_{metric}", whole) * scale,
                profile.stat(f"std_{metric}", whole) * scale,
                [
                    (
                        _relative_label(key, whole) if several else module_label(key),
                        profile.stat(f"mean_{metric}", key) * scale,
                    )
                    for key in blocks
                ],
            )
            for metric, scale in _METRICS
        )
        steps, mode = _outside_window(policy, whole)
        kind = types[row] if several and len(types) == len(wholes) else ""
        nets.append(_NetResiduals(whole, kind, panels, steps, mode))
    return _ControlNetResidualsInfo(nets, several, profile.num_steps, profile.num_samples)


def _outside_window(policy: Policy | None, key: str) -> tuple[list[int], str | None]:
    """The steps outside the window of ControlNet ``key`` (where it is reused or dropped), and its mode."""
    window = policy.controlnet_windows.get(key) if policy is not None else None
    if policy is None or window is None:
        return [], None
    return [s for s in range(policy.num_steps) if s not in window.steps], window.mode
