"""The report's figures: matplotlib ``Figure`` objects (no pyplot state, Agg rendering) styled with seaborn.

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes it as a PNG. Colours
read the same way on every heatmap: yellow = stable from one step to the next (cache-friendly), dark =
changing. Step 0 has no previous step and is drawn grey.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from hgc_tune._atomic import atomic_write
from hgc_tune.models._blocks import is_whole_model_key
from hgc_tune.report._grid import (
    COND_ONLY,
    DROPPED,
    INSIDE_REUSED,
    REUSE,
    PolicyGrid,
)
from hgc_tune.report._labels import COMPONENT_TITLES, component_of, module_label, natural_order
from hgc_tune.search._pareto import ParetoData, ParetoPoint

__all__ = [
    "DPI",
    "plot_attention_drift",
    "plot_block_similarity",
    "plot_controlnet_residuals",
    "plot_policy_grid",
    "plot_samples",
    "plot_step_macs",
    "plot_tradeoff",
    "save_figure",
]

DPI = 100
# Heatmap cell size in inches: wide enough for a "0.998" annotation at 7 pt, tall enough for a label.
_CELL_W, _CELL_H = 0.42, 0.3
_NAN_COLOUR = "#d0d0d0"
# Beyond these, per-cell numbers turn into noise; the colour carries the information alone.
_MAX_ANNOTATED_STEPS, _MAX_ANNOTATED_ROWS = 30, 40
# Up to this many steps, the two panels of a heatmap figure sit side by side; beyond, one above the other,
# so the figure stays about a page wide.
_SIDE_BY_SIDE_STEPS = 12
_PEER_COLOURS = {"deepcache": "tab:green", "tgate": "tab:purple", "cnwin": "tab:brown"}
_PEER_MARKERS = ("s", "D", "v", "X", "p", "h", "<", ">")


def _style():
    import seaborn as sns

    # A context manager: seaborn's rc changes last only while a figure is built.
    return sns.axes_style("white", {"axes.edgecolor": "#444444"})


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(max(width, 3.0), max(height, 2.0)), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: str | os.PathLike[str], *, palette: bool = True) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI`, atomically, mode 0644 (:func:`hgc_tune._atomic.atomic_write`).

    Args:
        fig: The figure.
        path: The PNG file.
        palette: Store 256 colours (about a third of the size, the same look for plots); ``False`` keeps
            full RGB, for pictures whose small differences matter (generated images).

    Returns:
        The path written.
    """
    return atomic_write(path, lambda tmp: _write_png(fig, tmp, palette=palette))


def _write_png(fig: Figure, path: Path, *, palette: bool) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as rendered:
        # A 256-colour palette keeps a heatmap page light (about a third of the RGBA size) and looks the
        # same: the figures hold flat colour cells, text and a few colour ramps. No dithering, so flat
        # cells stay flat (and compress well).
        image = rendered.convert("RGB")
        if palette:
            image = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        image.save(path, format="PNG", optimize=True)


# -- heatmaps ----------------------------------------------------------------------------------------------
def _step_ticks(num_steps: int) -> int | bool:
    return True if num_steps <= 30 else max(1, round(num_steps / 15))


def _annotations(values: np.ndarray, fmt: str) -> np.ndarray | None:
    rows, steps = values.shape
    if steps > _MAX_ANNOTATED_STEPS or rows > _MAX_ANNOTATED_ROWS:
        return None
    return np.array([["" if math.isnan(v) else format(v, fmt) for v in row] for row in values], dtype=object)


def _heatmap(
    ax,
    values: np.ndarray,
    *,
    rows: Sequence[str],
    cmap: str,
    vmin: float,
    vmax: float,
    label: str,
    title: str,
    fmt: str,
    annotate: bool = True,
) -> None:
    import seaborn as sns

    annot = _annotations(values, fmt) if annotate else None
    sns.heatmap(
        values,
        ax=ax,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        mask=np.isnan(values),
        annot=annot if annot is not None else False,
        fmt="",
        annot_kws={"fontsize": 7},
        linewidths=0.5,
        linecolor="white",
        xticklabels=_step_ticks(values.shape[1]),
        yticklabels=list(rows),
        cbar_kws={"label": label, "pad": 0.02},
    )
    ax.set_facecolor(_NAN_COLOUR)
    ax.set_xlabel("denoising step s")
    ax.set_title(title, fontsize=11)
    ax.tick_params(axis="y", labelsize=8, rotation=0)
    ax.tick_params(axis="x", labelsize=8, rotation=0)


def _panels(fig: Figure, num_steps: int):
    """Two heatmap axes, side by side for short schedules, stacked for long ones."""
    side = num_steps <= _SIDE_BY_SIDE_STEPS
    return fig.subplots(1, 2) if side else fig.subplots(2, 1)


def _heatmap_size(n_rows: int, num_steps: int, label_chars: int) -> tuple[float, float]:
    # Wide enough for the panel title, however few steps.
    panel_w = max(num_steps * _CELL_W + 0.075 * label_chars + 1.6, 6.0)
    # Tall enough for the colour bar label, however few rows.
    panel_h = max(n_rows * _CELL_H + 1.1, 3.0)
    if num_steps <= _SIDE_BY_SIDE_STEPS:
        return 2 * panel_w, panel_h + 0.5
    return panel_w, 2 * panel_h + 0.5


def _cos_limits(values: np.ndarray) -> tuple[float, float]:
    low = float(np.nanmin(values)) if np.isfinite(values).any() else 0.0
    return (min(low, 0.999), 1.0)


def _max(values: np.ndarray, floor: float) -> float:
    return max(float(np.nanmax(values)), floor) if np.isfinite(values).any() else floor


def _scaled(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``values × 10^-e`` so the largest is in ``[1, 10)``, and ``e`` (0 when already ``>= 0.1``)."""
    top = _max(np.abs(values), 0.0)
    if top == 0.0 or top >= 0.1:
        return values, 0
    exponent = math.floor(math.log10(top))
    return values / 10.0**exponent, exponent


def _superscript(exponent: int) -> str:
    return str(exponent).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))


def plot_block_similarity(profile, component: str, *, title: str | None = None) -> Figure:
    """Block similarity, module × step, of the U-Net (``component="unet"``), the ControlNet or, with several
    ControlNets, one of them (``component="controlnet.nets.1"``).

    Left (or top): cosine similarity of each block's output with the previous step's; right (or bottom):
    its relative L1 change. A block whose output barely changes between steps is a candidate for reuse.

    Args:
        profile: A :class:`hgc_tune.profile.Profile`.
        component: ``unet``, ``controlnet`` (whose rows include the whole ControlNet) or the key of one of
            several ControlNets (``controlnet.nets.1``: that net whole and its blocks).
        title: What to call the component (default: ``U-Net``, ``ControlNet`` or the key).
    """
    keys = natural_order([k for k in profile.block_keys if k == component or k.startswith(component + ".")])
    cos = profile.stat_matrix("mean_cos", keys) if keys else np.zeros((0, profile.num_steps))
    rel = profile.stat_matrix("mean_rel_l1", keys) * 100 if keys else np.zeros((0, profile.num_steps))
    rows = [_relative_label(k, component) for k in keys]
    name = title or COMPONENT_TITLES.get(component, component)
    with _style():
        fig = _figure(*_heatmap_size(len(keys), profile.num_steps, max(map(len, rows), default=8)))
        if not keys:
            ax = fig.subplots()
            ax.axis("off")
            ax.text(0.5, 0.5, f"the profile has no {name} blocks", ha="center", va="center")
            return fig
        left, right = _panels(fig, profile.num_steps)
        low, high = _cos_limits(cos)
        _heatmap(
            left,
            cos,
            rows=rows,
            cmap="viridis",
            vmin=low,
            vmax=high,
            label="cosine similarity to step s−1",
            title=f"{name} blocks: cosine similarity to the previous step",
            fmt=".3f",
        )
        _heatmap(
            right,
            rel,
            rows=rows,
            cmap="viridis_r",
            vmin=0.0,
            vmax=_max(rel, 1e-6),
            label="relative L1 change vs s−1 (%)",
            title=f"{name} blocks: relative change " + r"$\|x_s - x_{s-1}\|_1 \,/\, \|x_{s-1}\|_1$",
            fmt=".1f",
        )
        fig.suptitle(
            # A line break keeps long names (a ControlNet of several, with its key) inside the figure.
            f"{name}:\nhow much each block's output changes between steps "
            f"(mean over {profile.num_samples} samples; grey: step 0)",
            fontsize=12,
        )
    return fig


def plot_attention_drift(profile) -> Figure:
    """Cross-attention drift, ``attn2`` module × step: relative L1 change of the head-averaged attention
    map (left/top) and its Jensen-Shannon divergence (right/bottom) against the previous step."""
    keys = natural_order(profile.attention_keys)
    rows = [module_label(k).removesuffix(".attn2") for k in keys]
    with _style():
        fig = _figure(*_heatmap_size(len(keys), profile.num_steps, max(map(len, rows), default=8)))
        if not keys:
            ax = fig.subplots()
            ax.axis("off")
            ax.text(0.5, 0.5, "the profile has no cross-attention (attn2) modules", ha="center", va="center")
            return fig
        rel = profile.stat_matrix("mean_map_rel_l1", keys) * 100
        js, exponent = _scaled(profile.stat_matrix("mean_js", keys))
        unit = "nats" if exponent == 0 else f"×10{_superscript(exponent)} nats"
        left, right = _panels(fig, profile.num_steps)
        _heatmap(
            left,
            rel,
            rows=rows,
            cmap="viridis_r",
            vmin=0.0,
            vmax=_max(rel, 1e-6),
            label="map relative L1 change vs s−1 (%)",
            title="cross-attention map: relative L1 change",
            fmt=".2f",
        )
        _heatmap(
            right,
            js,
            rows=rows,
            cmap="viridis_r",
            vmin=0.0,
            vmax=_max(js, 1e-12),
            label=f"JS divergence vs s−1 ({unit})",
            title="cross-attention map: Jensen-Shannon divergence",
            fmt=".2f",
        )
        for ax in (left, right):
            _component_separator(ax, keys)
        fig.suptitle(
            "Cross-attention (attn2) drift between steps; rows: module paths without the trailing .attn2 "
            f"(mean over {profile.num_samples} samples; grey: step 0)",
            fontsize=12,
        )
    return fig


def _relative_label(key: str, component: str) -> str:
    """A heatmap row label within ``component`` (``controlnet.nets.1.mid_block`` -> ``mid``)."""
    if "." not in component:
        return module_label(key, drop_component=True)
    if key == component:
        return "controlnet (whole)"
    return module_label("controlnet." + key[len(component) + 1 :], drop_component=True)


def _component_separator(ax, keys: Sequence[str]) -> None:
    """A line between the U-Net rows and the ControlNet rows of a heatmap."""
    for i in range(1, len(keys)):
        if component_of(keys[i]) != component_of(keys[i - 1]):
            ax.axhline(i, color="white", linewidth=3)
            ax.axhline(i, color="#222222", linewidth=1)


# -- ControlNet residuals ----------------------------------------------------------------------------------
def _outside_window(policy, key: str = "controlnet") -> tuple[list[int], str] | None:
    windows = policy.controlnet_windows if policy is not None else {}
    window = windows.get(key)
    if window is None:
        return None
    return [s for s in range(policy.num_steps) if s not in window.steps], window.mode


def plot_controlnet_residuals(profile, policy=None) -> Figure:
    """ControlNet residual change across steps (line plot): the relative L1 change and cosine similarity of
    all its residuals together (mean ± std over samples) and of each ControlNet block; with a policy, the
    steps where its window reuses or drops the ControlNet are shaded."""
    steps = np.arange(profile.num_steps)
    wholes = [k for k in profile.block_keys if is_whole_model_key(k)]
    if len(wholes) > 1:
        return _plot_several_controlnet_residuals(profile, wholes, policy)
    block_keys = natural_order([k for k in profile.block_keys if k.startswith("controlnet.")])
    with _style():
        fig = _figure(12, 4.2)
        if "controlnet" not in profile.block_keys:
            ax = fig.subplots()
            ax.axis("off")
            ax.text(0.5, 0.5, "the profile has no ControlNet", ha="center", va="center")
            return fig
        axes = fig.subplots(1, 2)
        panels = (
            ("rel_l1", 100.0, "relative L1 change vs step s−1 (%)", "ControlNet residuals: relative change"),
            ("cos", 1.0, "cosine similarity with step s−1", "ControlNet residuals: cosine similarity"),
        )
        palette = _block_palette(len(block_keys))
        for ax, (metric, scale, ylabel, title) in zip(axes, panels):
            mean = profile.stat(f"mean_{metric}", "controlnet") * scale
            std = profile.stat(f"std_{metric}", "controlnet") * scale
            for colour, key in zip(palette, block_keys):
                values = profile.stat(f"mean_{metric}", key) * scale
                ax.plot(steps, values, color=colour, linewidth=1, alpha=0.8, label=module_label(key))
            ax.fill_between(steps, mean - std, mean + std, color="black", alpha=0.15, linewidth=0)
            ax.plot(
                steps, mean, color="black", linewidth=2.2, marker="o", markersize=3.5, label="all residuals"
            )
            _shade_window(ax, policy)
            ax.set_xlabel("denoising step s")
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=11)
            ax.set_xlim(-0.5, profile.num_steps - 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(True, color="#e5e5e5")
        handles, labels = axes[0].get_legend_handles_labels()
        outside = _outside_window(policy)
        if outside and outside[0]:
            handles.append(Patch(facecolor="#999999", alpha=0.3))
            labels.append(f"policy: ControlNet {'dropped' if outside[1] == 'drop' else 'reused'}")
        fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
        fig.suptitle(
            f"How fast the ControlNet's output changes (mean ± std over {profile.num_samples} samples; "
            "step 0 has no previous step)",
            fontsize=12,
        )
    return fig


def _block_palette(n: int) -> list:
    import seaborn as sns

    return list(sns.color_palette("deep", max(n, 1)))


def _plot_several_controlnet_residuals(profile, wholes: list[str], policy=None) -> Figure:
    """One row per ControlNet of several: its residuals' change (mean ± std) and its blocks', with the
    steps its own window reuses or drops shaded."""
    steps = np.arange(profile.num_steps)
    types = str(profile.condition_type or "").split(",")
    with _style():
        fig = _figure(12, 3.4 * len(wholes))
        axes = np.atleast_2d(fig.subplots(len(wholes), 2))
        for row, whole in enumerate(wholes):
            kind = f" ({types[row]})" if len(types) == len(wholes) and types[row] else ""
            block_keys = natural_order([k for k in profile.block_keys if k.startswith(whole + ".")])
            palette = _block_palette(len(block_keys))
            for ax, (metric, scale, ylabel) in zip(
                axes[row], (("rel_l1", 100.0, "relative L1 change (%)"), ("cos", 1.0, "cosine similarity"))
            ):
                mean = profile.stat(f"mean_{metric}", whole) * scale
                std = profile.stat(f"std_{metric}", whole) * scale
                for colour, key in zip(palette, block_keys):
                    values = profile.stat(f"mean_{metric}", key) * scale
                    ax.plot(
                        steps, values, color=colour, linewidth=1, alpha=0.8, label=_relative_label(key, whole)
                    )
                ax.fill_between(steps, mean - std, mean + std, color="black", alpha=0.15, linewidth=0)
                ax.plot(
                    steps,
                    mean,
                    color="black",
                    linewidth=2.2,
                    marker="o",
                    markersize=3.5,
                    label="all residuals",
                )
                outside = _outside_window(policy, whole)
                for s in outside[0] if outside else ():
                    ax.axvspan(s - 0.5, s + 0.5, color="#999999", alpha=0.3, linewidth=0)
                ax.set_title(f"{whole}{kind}: residuals vs step s−1", fontsize=10)
                ax.set_xlabel("denoising step s")
                ax.set_ylabel(ylabel)
                ax.set_xlim(-0.5, profile.num_steps - 0.5)
                ax.grid(True, color="#e5e5e5")
            axes[row][1].legend(fontsize=7, loc="lower left", ncol=2)
        fig.suptitle(
            "Each ControlNet's residual change across steps (grey: steps its window reuses or drops it)",
            fontsize=12,
        )
    return fig


def _shade_window(ax, policy) -> None:
    outside = _outside_window(policy)
    if not outside:
        return
    for s in outside[0]:
        ax.axvspan(s - 0.5, s + 0.5, color="#999999", alpha=0.3, linewidth=0)


# -- the policy over the heatmap ---------------------------------------------------------------------------
def _luminance(rgba) -> float:
    r, g, b = rgba[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _overlay_states(ax, states: np.ndarray, values: np.ndarray, cmap, norm) -> None:
    for i, j in zip(*np.nonzero(states)):
        state = int(states[i, j])
        background = _NAN_COLOUR if math.isnan(values[i, j]) else cmap(norm(values[i, j]))
        # Marks in the colour that contrasts with the cell underneath, so they show on yellow and on purple.
        ink = "black" if _luminance(_rgba(background)) > 0.5 else "white"
        if state == COND_ONLY:
            ax.plot(j + 0.5, i + 0.5, marker="o", markersize=3, color=ink, linestyle="none")
            continue
        hatch = {REUSE: "////", INSIDE_REUSED: "..", DROPPED: "xxx"}[state]
        ax.add_patch(
            Rectangle(
                (j, i),
                1,
                1,
                fill=False,
                hatch=hatch,
                edgecolor=ink,
                linewidth=0,
                hatchcolor=ink,
            )
        )


def _rgba(colour):
    from matplotlib.colors import to_rgba

    return to_rgba(colour)


def _grid_rows(keys: Sequence[str], grid: PolicyGrid) -> list[str]:
    labels = []
    for key in keys:
        row = grid.row(key)
        runs = int(((row == 0) | (row == COND_ONLY)).sum())
        labels.append(f"{module_label(key)}  ({runs}/{grid.num_steps})")
    return labels


def plot_policy_grid(profile, grid: PolicyGrid, *, policy_name: str = "policy", cfg_until: int | None = None):
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
    from matplotlib.colors import Normalize

    blocks = natural_order([k for k in grid.keys if k in profile.block_keys])
    attention = natural_order([k for k in grid.keys if k in profile.attention_keys])
    sections = [
        (blocks, "mean_rel_l1", "blocks: relative L1 change vs s−1 (%)"),
        (attention, "mean_map_rel_l1", "attn2: map rel. L1 change vs s−1 (%)"),
    ]
    sections = [s for s in sections if s[0]]
    labels = {id(keys): _grid_rows(keys, grid) for keys, _, _ in sections}
    n_rows = sum(len(keys) for keys, _, _ in sections)
    label_chars = max((len(label) for ls in labels.values() for label in ls), default=10)
    # At least wide enough for the title and a two-row legend.
    width = max(grid.num_steps * _CELL_W + 0.075 * label_chars + 2.2, 10.0)
    height = n_rows * _CELL_H + 1.2 * len(sections) + 1.4
    with _style():
        import matplotlib as mpl
        import seaborn as sns

        fig = _figure(width, height)
        if not sections:
            ax = fig.subplots()
            ax.axis("off")
            ax.text(0.5, 0.5, "no modules to draw", ha="center", va="center")
            return fig
        axes = fig.subplots(
            len(sections),
            1,
            gridspec_kw={"height_ratios": [len(k) + 2 for k, _, _ in sections]},
            squeeze=False,
        )[:, 0]
        for ax, (keys, stat, label) in zip(axes, sections):
            values = profile.stat_matrix(stat, list(keys)) * 100
            states = np.stack([grid.row(k) for k in keys])
            vmax = _max(values, 1e-6)
            cmap = mpl.colormaps["viridis_r"]
            sns.heatmap(
                values,
                ax=ax,
                cmap=cmap,
                vmin=0.0,
                vmax=vmax,
                mask=np.isnan(values),
                linewidths=0.5,
                linecolor="white",
                xticklabels=_step_ticks(grid.num_steps),
                yticklabels=labels[id(keys)],
                cbar_kws={"label": label, "pad": 0.02},
            )
            ax.set_facecolor(_NAN_COLOUR)
            _overlay_states(ax, states, values, cmap, Normalize(0.0, vmax))
            _component_separator(ax, keys)
            if cfg_until is not None and cfg_until < grid.num_steps:
                # A white halo keeps the line visible over dark cells.
                halo = [patheffects.withStroke(linewidth=3.5, foreground="white")]
                ax.axvline(cfg_until, color="tab:red", linewidth=1.5, linestyle="--", path_effects=halo)
            ax.set_xlabel("denoising step s")
            ax.tick_params(axis="y", labelsize=8, rotation=0)
            ax.tick_params(axis="x", labelsize=8, rotation=0)
        legend = [
            Patch(facecolor="white", edgecolor="#888888", label="compute"),
            Patch(facecolor="white", edgecolor="black", hatch="////", label="reuse cached output"),
            Patch(facecolor="white", edgecolor="black", hatch="..", label="inside a reused module"),
            Patch(facecolor="white", edgecolor="black", hatch="xxx", label="ControlNet dropped"),
            mpl.lines.Line2D(
                [],
                [],
                marker="o",
                markersize=4,
                color="black",
                linestyle="none",
                label="cond half only (no CFG)",
            ),
        ]
        if cfg_until is not None and cfg_until < grid.num_steps:
            legend.append(
                mpl.lines.Line2D(
                    [], [], color="tab:red", linestyle="--", label=f"CFG ends (step {cfg_until})"
                )
            )
        fig.legend(
            handles=legend,
            loc="outside lower center",
            ncols=min(len(legend), 3 if width < 13 else 6),
            fontsize=8,
            frameon=False,
        )
        title = fig.suptitle(
            f"Policy {policy_name!s}: what each module does at each step\n"
            "over how much its output changes from the previous step (yellow = stable, cheap to reuse)",
            fontsize=12,
        )
        title.set_parse_math(False)
    return fig


# -- trade-off ---------------------------------------------------------------------------------------------
def _peer_style(name: str, index: int) -> tuple[str, str]:
    family = name.split("-", 1)[0]
    return _PEER_COLOURS.get(family, "tab:olive"), _PEER_MARKERS[index % len(_PEER_MARKERS)]


def plot_tradeoff(pareto: ParetoData, *, convention: str = "paper") -> Figure:
    """MAC reduction vs. fidelity loss of every trial, the Pareto front, the budget line, the chosen policy,
    the peer schedules and (when the search validated) the held-out losses.

    Losses far above the budget would squash the interesting region: the y axis stops at about four budgets
    (or the largest feasible loss) and trials beyond it are drawn as ▲ on the top edge.

    Args:
        pareto: The search's trade-off (:func:`~hgc_tune.search._pareto.load_pareto`).
        convention: The MAC convention of the x axis (``paper``: what the search minimised).
    """

    def x(p: ParetoPoint) -> float:
        return 100 * (p.reduction(convention) or 0.0)

    with_reduction = [p for p in pareto.points if p.reduction(convention) is not None]
    scored = [p for p in with_reduction if p.scored and p.duplicate_of is None]
    rejected = [
        p for p in with_reduction if p.rejected_early and p.loss is not None and p.duplicate_of is None
    ]
    anchor = next((p for p in scored if p.is_full_compute), None)
    peers = [p for p in scored if p.peers and p is not anchor]
    searched = [p for p in scored if not p.peers]
    front = sorted((p for p in scored if p.on_front), key=lambda p: (x(p), p.loss))
    heldout = [p for p in with_reduction if p.heldout_loss is not None]
    failed = sum(1 for p in pareto.points if p.loss is None and p.state != "RUNNING")
    duplicates = sum(1 for p in pareto.points if p.duplicate_of is not None)
    budget = pareto.budget * 100

    losses = [p.loss * 100 for p in scored + rejected] + [p.heldout_loss * 100 for p in heldout]
    feasible = [p.loss * 100 for p in scored if p.feasible] + [p.heldout_loss * 100 for p in heldout]
    top = max([budget * 4, *(v * 1.15 for v in feasible), 0.5])
    if losses and max(losses) <= top:
        top = max(max(losses) * 1.1, budget * 1.5, 0.5)
    bottom = min([0.0, *(v * 1.1 for v in losses)])

    def y(value: float) -> float:
        return min(value * 100, top)

    with _style():
        fig = _figure(10, 6)
        ax = fig.subplots()
        ax.grid(True, color="#e5e5e5")
        groups = (
            ([p for p in searched if p.feasible], "tab:blue", "o", "trial within budget"),
            ([p for p in searched if not p.feasible], "#9a9a9a", "o", "trial over budget"),
            (rejected, "#9a9a9a", "x", "rejected early (partial loss)"),
        )
        for group, colour, marker, label in groups:
            if not group:
                continue
            inside = [p for p in group if p.loss * 100 <= top]
            clipped = [p for p in group if p.loss * 100 > top]
            for members, shape in ((inside, marker), (clipped, "^")):
                if members:
                    ax.scatter(
                        [x(p) for p in members],
                        [y(p.loss) for p in members],
                        s=30,
                        color=colour,
                        alpha=0.75,
                        marker=shape,
                        clip_on=False,
                        label=f"{label} ({len(group)})" if members is inside or not inside else None,
                    )
        if front:
            ax.plot(
                [x(p) for p in front],
                [y(p.loss) for p in front],
                color="tab:orange",
                linewidth=1.8,
                drawstyle="steps-pre",
                marker="o",
                markersize=5,
                zorder=3,
                label=f"Pareto front ({len(front)})",
            )
        ax.axhline(budget, color="tab:red", linestyle="--", linewidth=1.5, label=f"budget {budget:.2f}%")
        ax.scatter(
            [x(anchor) if anchor else 0.0],
            [y(anchor.loss) if anchor else 0.0],
            marker="P",
            s=90,
            color="black",
            zorder=4,
            label="full compute",
        )
        for index, p in enumerate(peers):
            colour, marker = _peer_style(p.peers[0], index)
            clipped = p.loss * 100 > top
            ax.scatter(
                [x(p)],
                [y(p.loss)],
                marker=marker,
                s=80,
                color=colour,
                edgecolors="black",
                linewidths=0.6,
                zorder=5,
                clip_on=False,
                label=f"peer: {p.peer}",
            )
            text = ax.annotate(
                f"{p.peer} (loss {p.loss:.1%}, off-scale)" if clipped else p.peer,
                (x(p), y(p.loss)),
                # Alternate above/below so neighbouring peers' names do not print over each other.
                xytext=(6, -12 if clipped or index % 2 else 6),
                textcoords="offset points",
                fontsize=8,
                color=colour,
            )
            text.set_parse_math(False)
        for n, p in enumerate(heldout):
            ax.plot(
                [x(p), x(p)], [y(p.loss), y(p.heldout_loss)], color="#555555", linewidth=0.8, linestyle=":"
            )
            ax.scatter(
                [x(p)],
                [y(p.heldout_loss)],
                marker="D",
                s=46,
                facecolors="none",
                edgecolors="black",
                zorder=6,
                clip_on=False,
                label="held-out loss (validation)" if n == 0 else None,
            )
        chosen = pareto.chosen
        if chosen is not None and chosen.loss is not None and chosen.reduction(convention) is not None:
            ax.scatter(
                [x(chosen)],
                [y(chosen.loss)],
                marker="*",
                s=420,
                color="gold",
                edgecolors="black",
                linewidths=1.0,
                zorder=7,
                clip_on=False,
                label=f"chosen (trial {chosen.number}): {x(chosen):.1f}% fewer MACs, loss {chosen.loss:.2%}",
            )
        ax.set_ylim(bottom - 0.03 * (top - bottom), top * 1.02 + 0.01)
        xs = [x(p) for p in with_reduction] + [0.0]
        ax.set_xlim(min(xs) - 3, max(max(xs) + 5, 10))
        metric = f" ({pareto.metric})" if pareto.metric else ""
        ax.set_xlabel(f"MAC reduction vs full compute (%, {convention} convention)")
        ax.set_ylabel(f"calibration fidelity loss{metric} (%, lower is better)")
        study = f" — study {pareto.study}" if pareto.study else ""
        ax.set_title(f"Cost vs fidelity of every schedule tried{study}", fontsize=12).set_parse_math(False)
        notes = []
        if failed:
            notes.append(f"{failed} failed trials not shown")
        if duplicates:
            notes.append(f"{duplicates} repeated policies shown once")
        if any(p.loss * 100 > top for p in searched + rejected):
            notes.append("▲ on the top edge = loss beyond the axis")
        if pareto.chosen is None:
            notes.append("no policy chosen" + (f": {pareto.message}" if pareto.message else ""))
        if notes:
            text = ax.text(
                0.99,
                0.01,
                "\n".join(textwrap.wrap("; ".join(notes), 70)),
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=8,
                color="#555555",
            )
            text.set_parse_math(False)
        legend = ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        for text in legend.get_texts():
            text.set_parse_math(False)
    return fig


# -- per-step MACs -----------------------------------------------------------------------------------------
def plot_step_macs(
    steps_policy: Sequence[dict[str, int]],
    steps_full: Sequence[dict[str, int]],
    *,
    convention: str,
    policy_name: str = "policy",
) -> Figure:
    """MACs per denoising step under the policy (stacked U-Net / ControlNet bars) against full compute.

    Args:
        steps_policy: :func:`hgc_tune.policy._macs.policy_step_macs` of the policy.
        steps_full: The same for the all-compute policy.
        convention: The MAC convention of both, for the axis label.
        policy_name: Shown in the title.
    """
    n = len(steps_full)
    full = np.array([s["unet"] + s["controlnet"] for s in steps_full], dtype=float)
    unet = np.array([s["unet"] for s in steps_policy], dtype=float)
    control = np.array([s["controlnet"] for s in steps_policy], dtype=float)
    top = max(float(full.max()) if n else 1.0, 1.0)
    exponent = 3 * int(math.floor(math.log10(top) / 3)) if top >= 1000 else 0
    unit = {0: "MACs", 3: "K MACs (10³)", 6: "M MACs (10⁶)", 9: "G MACs (10⁹)", 12: "T MACs (10¹²)"}.get(
        exponent, f"10^{exponent} MACs"
    )
    scale = 10.0**exponent
    x = np.arange(n)
    with _style():
        fig = _figure(max(7.0, 0.35 * n + 3.5), 4.2)
        ax = fig.subplots()
        ax.grid(True, axis="y", color="#e5e5e5")
        ax.bar(x, unet / scale, color="tab:blue", label="U-Net (policy)")
        ax.bar(x, control / scale, bottom=unet / scale, color="tab:orange", label="ControlNet (policy)")
        ax.step(
            np.append(x, n) - 0.5,
            np.append(full, full[-1:]) / scale,
            where="post",
            color="black",
            linewidth=1.5,
            linestyle="--",
            label="full compute",
        )
        saved = 1 - (unet.sum() + control.sum()) / full.sum() if full.sum() else 0.0
        ax.set_xlabel("denoising step s")
        ax.set_ylabel(f"per step, {unit}; {convention} convention")
        ax.set_xticks(x if n <= 30 else x[:: max(1, round(n / 15))])
        ax.set_xlim(-0.6, n - 0.4)
        title = ax.set_title(
            f"Where policy {policy_name!s} saves compute: denoiser MACs per step ({saved:.1%} fewer overall)",
            fontsize=11,
        )
        title.set_parse_math(False)
        fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


# -- samples -----------------------------------------------------------------------------------------------
def _prompt_label(index: int, seed: int, prompt: str) -> str:
    wrapped = textwrap.shorten(prompt, width=70, placeholder=" …")
    return f"#{index}  seed {seed}\n" + "\n".join(textwrap.wrap(wrapped, 26)[:3])


def _column_title(text: str, width: int = 24, lines: int = 2) -> str:
    """``text`` wrapped to a sample column's width (``width`` characters), at most ``lines`` lines, the last
    ending in "…" when cut: a long policy name must not run into the next column's title."""
    wrapped = textwrap.wrap(text, width, break_on_hyphens=True) or [""]
    if len(wrapped) > lines:
        wrapped = [*wrapped[: lines - 1], wrapped[lines - 1][: width - 1] + "…"]
    return "\n".join(wrapped)


def plot_samples(
    conditions: np.ndarray,
    full: np.ndarray,
    policy_images: np.ndarray | None,
    *,
    indices: Sequence[int],
    seeds: Sequence[int],
    prompts: Sequence[str],
    psnr_db: Sequence[float] | None = None,
    policy_name: str = "policy",
) -> Figure:
    """A grid of samples: condition | full compute | policy | absolute difference.

    Args:
        conditions: uint8 ``[K, H, W, 3]`` condition images.
        full: uint8 ``[K, H, W, 3]`` full-compute images (the profile's references).
        policy_images: uint8 ``[K, H, W, 3]`` images under the policy, or ``None`` (two columns only).
        indices: The samples' indices in the profile.
        seeds: Their seeds.
        prompts: Their prompts (drawn as plain text: ``$`` is not math).
        psnr_db: PSNR of each policy image against full compute.
        policy_name: The policy column's title.
    """
    k = len(full)
    columns = 2 if policy_images is None else 4
    diff = None
    if policy_images is not None:
        diff = np.abs(full.astype(np.int16) - policy_images.astype(np.int16)).mean(axis=-1)
    with _style():
        fig = _figure(2.3 * columns + 2.6, 2.35 * k + 0.8)
        axes = fig.subplots(k, columns, squeeze=False)
        titles = ["condition", "full compute"]
        if policy_images is not None:
            titles += [_column_title(f"policy: {policy_name}"), "|full − policy|"]
        vmax = max(float(diff.max()), 1.0) if diff is not None else 1.0
        mappable = None
        for row in range(k):
            panels = [conditions[row], full[row]]
            if policy_images is not None:
                panels += [policy_images[row]]
            for col, image in enumerate(panels):
                axes[row, col].imshow(image, interpolation="nearest")
            if diff is not None:
                mappable = axes[row, 3].imshow(
                    diff[row], cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest"
                )
                if psnr_db is not None:
                    axes[row, 2].set_xlabel(f"PSNR {psnr_db[row]:.1f} dB vs full", fontsize=8)
            for col in range(columns):
                axes[row, col].set_xticks([])
                axes[row, col].set_yticks([])
                if row == 0:
                    axes[row, col].set_title(titles[col], fontsize=10).set_parse_math(False)
            axes[row, 0].set_ylabel(
                _prompt_label(indices[row], seeds[row], prompts[row]),
                fontsize=8,
                rotation=0,
                ha="right",
                va="center",
                labelpad=8,
            ).set_parse_math(False)
        if mappable is not None:
            fig.colorbar(mappable, ax=axes[:, 3], label="mean |Δ| over RGB (0–255 levels)", shrink=0.8)
    return fig
