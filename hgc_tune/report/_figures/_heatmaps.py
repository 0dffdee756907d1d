"""Block similarity and cross-attention drift: module × step heatmaps of a profile."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from hgc_tune.report._figure_info._heatmaps import _get_attention_drift_info, _get_block_similarity_info
from hgc_tune.report._figures._base import (
    draw_separators,
    heatmap,
    heatmap_panels,
    heatmap_size,
    new_figure,
    show_message,
    style,
)

if TYPE_CHECKING:
    from hgc_tune.profile import Profile


def plot_block_similarity(profile: Profile, component: str, *, title: str | None = None) -> Figure:
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
    info = _get_block_similarity_info(profile, component, title=title)
    name = info.name
    with style():
        fig = new_figure(*heatmap_size(len(info.keys), info.num_steps, max(map(len, info.rows), default=8)))
        if not info.keys:
            return show_message(fig, f"the profile has no {name} blocks")
        left, right = heatmap_panels(fig, info.num_steps)
        low, high = info.cos_limits
        heatmap(
            left,
            info.cos,
            rows=info.rows,
            cmap="viridis",
            vmin=low,
            vmax=high,
            label="cosine similarity to step s−1",
            title=f"{name} blocks: cosine similarity to the previous step",
            fmt=".3f",
        )
        heatmap(
            right,
            info.rel_percent,
            rows=info.rows,
            cmap="viridis_r",
            vmin=0.0,
            vmax=info.rel_max,
            label="relative L1 change vs s−1 (%)",
            title=f"{name} blocks: relative change " + r"$\|x_s - x_{s-1}\|_1 \,/\, \|x_{s-1}\|_1$",
            fmt=".1f",
        )
        fig.suptitle(
            # A line break keeps long names (a ControlNet of several, with its key) inside the figure.
            f"{name}:\nhow much each block's output changes between steps "
            f"(mean over {info.num_samples} samples; grey: step 0)",
            fontsize=12,
        )
    return fig


def plot_attention_drift(profile: Profile) -> Figure:
    """Cross-attention drift, ``attn2`` module × step: relative L1 change of the head-averaged attention
    map (left/top) and its Jensen-Shannon divergence (right/bottom) against the previous step."""
    info = _get_attention_drift_info(profile)
    with style():
        fig = new_figure(*heatmap_size(len(info.keys), info.num_steps, max(map(len, info.rows), default=8)))
        if not info.keys:
            return show_message(fig, "the profile has no cross-attention (attn2) modules")
        left, right = heatmap_panels(fig, info.num_steps)
        heatmap(
            left,
            info.rel_percent,
            rows=info.rows,
            cmap="viridis_r",
            vmin=0.0,
            vmax=info.rel_max,
            label="map relative L1 change vs s−1 (%)",
            title="cross-attention map: relative L1 change",
            fmt=".2f",
        )
        heatmap(
            right,
            info.js,
            rows=info.rows,
            cmap="viridis_r",
            vmin=0.0,
            vmax=info.js_max,
            label=f"JS divergence vs s−1 ({info.js_unit})",
            title="cross-attention map: Jensen-Shannon divergence",
            fmt=".2f",
        )
        for ax in (left, right):
            draw_separators(ax, info.separators)
        fig.suptitle(
            "Cross-attention (attn2) drift between steps; rows: module paths without the trailing .attn2 "
            f"(mean over {info.num_samples} samples; grey: step 0)",
            fontsize=12,
        )
    return fig
