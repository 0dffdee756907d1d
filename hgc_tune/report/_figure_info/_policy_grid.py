"""The policy as a module × step grid over the profile's step-to-step change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from hgc_tune.report._figure_info._heatmaps import _component_separators, _max
from hgc_tune.report._grid import COND_ONLY, PolicyGrid
from hgc_tune.report._labels import module_label, natural_order

if TYPE_CHECKING:
    from hgc_tune.profile import Profile

# (module kind, profile statistic of its heatmap, colour bar label)
_SECTIONS = (
    ("blocks", "mean_rel_l1", "blocks: relative L1 change vs s−1 (%)"),
    ("attention", "mean_map_rel_l1", "attn2: map rel. L1 change vs s−1 (%)"),
)


class _GridSection(NamedTuple):
    """One heatmap of the grid: the blocks (and whole ControlNets), or the ``attn2`` modules.

    Attributes:
        keys: The module keys, in natural order.
        rows: Their row labels, each ending with how many steps the module runs (``(3/4)``).
        label: The colour bar's label.
        values: The profile's step-to-step change in percent, ``[rows, steps]``.
        states: What each module does at each step (:mod:`hgc_tune.report._grid` codes), ``[rows, steps]``.
        vmax: The top of the colour range.
        separators: Row indices where the U-Net rows end and the ControlNet rows begin.
    """

    keys: list[str]
    rows: list[str]
    label: str
    values: np.ndarray
    states: np.ndarray
    vmax: float
    separators: list[int]


class _PolicyGridInfo(NamedTuple):
    """The sections to draw (none: no module of the grid is in the profile).

    Attributes:
        sections: The blocks' heatmap, then the ``attn2`` modules', each only where it has rows.
        num_steps: Steps of the grid.
        policy_name: The policy's name.
        cfg_until: The guidance window's first conditional-only step, for a marker line; ``None`` when the
            policy keeps CFG to the end.
    """

    sections: list[_GridSection]
    num_steps: int
    policy_name: str
    cfg_until: int | None


def _get_policy_grid_info(
    profile: Profile, grid: PolicyGrid, *, policy_name: str = "policy", cfg_until: int | None = None
) -> _PolicyGridInfo:
    """The grid's modules that the profile measured, split into blocks and ``attn2`` modules, with their
    step-to-step change and what the policy does with each at each step."""
    members = {
        "blocks": [k for k in grid.keys if k in profile.block_keys],
        "attention": [k for k in grid.keys if k in profile.attention_keys],
    }
    sections = []
    for kind, stat, label in _SECTIONS:
        keys = natural_order(members[kind])
        if not keys:
            continue
        values = profile.stat_matrix(stat, list(keys)) * 100
        sections.append(
            _GridSection(
                keys=keys,
                rows=_grid_rows(keys, grid),
                label=label,
                values=values,
                states=np.stack([grid.row(k) for k in keys]),
                vmax=_max(values, 1e-6),
                separators=_component_separators(keys),
            )
        )
    shown = cfg_until if cfg_until is not None and cfg_until < grid.num_steps else None
    return _PolicyGridInfo(sections, grid.num_steps, policy_name, shown)


def _grid_rows(keys: Sequence[str], grid: PolicyGrid) -> list[str]:
    labels = []
    for key in keys:
        row = grid.row(key)
        runs = int(((row == 0) | (row == COND_ONLY)).sum())
        labels.append(f"{module_label(key)}  ({runs}/{grid.num_steps})")
    return labels
