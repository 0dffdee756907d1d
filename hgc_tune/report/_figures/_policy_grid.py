"""The policy as a module × step grid drawn over the profile's step-to-step change."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import matplotlib as mpl
import numpy as np
from matplotlib import patheffects
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from hgc_tune.report._figure_info._policy_grid import _get_policy_grid_info, _GridSection
from hgc_tune.report._figures._base import (
    CELL_H,
    CELL_W,
    NAN_COLOUR,
    draw_separators,
    new_figure,
    show_message,
    step_ticks,
    style,
)
from hgc_tune.report._grid import COND_ONLY, DROPPED, INSIDE_REUSED, REUSE, PolicyGrid

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from hgc_tune.profile import Profile

_HATCHES = {REUSE: "////", INSIDE_REUSED: "..", DROPPED: "xxx"}


def plot_policy_grid(
    profile: Profile, grid: PolicyGrid, *, policy_name: str = "policy", cfg_until: int | None = None
) -> Figure:
    """The policy as a module × step grid drawn over the profile's step-to-step change.

    Blocks (and the whole ControlNet) over their relative L1 change, ``attn2`` modules over their
    attention-map relative L1 change. Hatched ``////``: the module reuses its cached output; dotted: it sits
    inside a module that reuses (so it does not run either); ``xxx``: the ControlNet is dropped; a dot: the
    module runs on the conditional half only (guidance window). Row labels end with how many steps the
    module runs.

    Args:
        profile: The profile the heatmaps come from.
        grid: :func:`~hgc_tune.report._grid.policy_grid` of the policy over the profile's keys.
        policy_name: Shown in the title.
        cfg_until: The guidance window's first conditional-only step, for a marker line.
    """
    info = _get_policy_grid_info(profile, grid, policy_name=policy_name, cfg_until=cfg_until)
    sections = info.sections
    n_rows = sum(len(s.keys) for s in sections)
    label_chars = max((len(label) for s in sections for label in s.rows), default=10)
    # At least wide enough for the title and a two-row legend.
    width = max(info.num_steps * CELL_W + 0.075 * label_chars + 2.2, 10.0)
    height = n_rows * CELL_H + 1.2 * len(sections) + 1.4
    with style():
        fig = new_figure(width, height)
        if not sections:
            return show_message(fig, "no modules to draw")
        axes = fig.subplots(
            len(sections),
            1,
            gridspec_kw={"height_ratios": [len(s.keys) + 2 for s in sections]},
            squeeze=False,
        )[:, 0]
        for ax, section in zip(axes, sections):
            _draw_section(ax, section, info.num_steps, info.cfg_until)
        legend = _legend(info.cfg_until)
        fig.legend(
            handles=legend,
            loc="outside lower center",
            ncols=min(len(legend), 3 if width < 13 else 6),
            fontsize=8,
            frameon=False,
        )
        title = fig.suptitle(
            f"Policy {info.policy_name!s}: what each module does at each step\n"
            "over how much its output changes from the previous step (yellow = stable, cheap to reuse)",
            fontsize=12,
        )
        title.set_parse_math(False)
    return fig


def _draw_section(ax: Axes, section: _GridSection, num_steps: int, cfg_until: int | None) -> None:
    import seaborn as sns

    cmap = mpl.colormaps["viridis_r"]
    sns.heatmap(
        section.values,
        ax=ax,
        cmap=cmap,
        vmin=0.0,
        vmax=section.vmax,
        mask=np.isnan(section.values),
        linewidths=0.5,
        linecolor="white",
        xticklabels=step_ticks(num_steps),
        yticklabels=section.rows,
        cbar_kws={"label": section.label, "pad": 0.02},
    )
    ax.set_facecolor(NAN_COLOUR)
    _overlay_states(ax, section.states, section.values, cmap, Normalize(0.0, section.vmax))
    draw_separators(ax, section.separators)
    if cfg_until is not None:
        # A white halo keeps the line visible over dark cells.
        halo = [patheffects.withStroke(linewidth=3.5, foreground="white")]
        ax.axvline(cfg_until, color="tab:red", linewidth=1.5, linestyle="--", path_effects=halo)
    ax.set_xlabel("denoising step s")
    ax.tick_params(axis="y", labelsize=8, rotation=0)
    ax.tick_params(axis="x", labelsize=8, rotation=0)


def _legend(cfg_until: int | None) -> list:
    legend = [
        Patch(facecolor="white", edgecolor="#888888", label="compute"),
        Patch(facecolor="white", edgecolor="black", hatch="////", label="reuse cached output"),
        Patch(facecolor="white", edgecolor="black", hatch="..", label="inside a reused module"),
        Patch(facecolor="white", edgecolor="black", hatch="xxx", label="ControlNet dropped"),
        Line2D(
            [],
            [],
            marker="o",
            markersize=4,
            color="black",
            linestyle="none",
            label="cond half only (no CFG)",
        ),
    ]
    if cfg_until is not None:
        legend.append(Line2D([], [], color="tab:red", linestyle="--", label=f"CFG ends (step {cfg_until})"))
    return legend


def _luminance(rgba) -> float:
    r, g, b = rgba[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _overlay_states(ax: Axes, states: np.ndarray, values: np.ndarray, cmap, norm) -> None:
    for i, j in zip(*np.nonzero(states)):
        state = int(states[i, j])
        background = NAN_COLOUR if math.isnan(values[i, j]) else cmap(norm(values[i, j]))
        # Marks in the colour that contrasts with the cell underneath, so they show on yellow and on purple.
        ink = "black" if _luminance(to_rgba(background)) > 0.5 else "white"
        if state == COND_ONLY:
            ax.plot(j + 0.5, i + 0.5, marker="o", markersize=3, color=ink, linestyle="none")
            continue
        ax.add_patch(
            Rectangle(
                (j, i),
                1,
                1,
                fill=False,
                hatch=_HATCHES[state],
                edgecolor=ink,
                linewidth=0,
                hatchcolor=ink,
            )
        )
