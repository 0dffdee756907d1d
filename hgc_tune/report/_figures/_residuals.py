"""ControlNet residual change across steps: line plots, one row per ControlNet when there are several."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from hgc_tune.report._figure_info._residuals import (
    _ControlNetResidualsInfo,
    _get_controlnet_residuals_info,
    _NetResiduals,
    _ResidualPanel,
)
from hgc_tune.report._figures._base import new_figure, show_message, style

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from hgc_tune.policy import Policy
    from hgc_tune.profile import Profile

# Per metric: (y label with one ControlNet, panel title with one ControlNet, y label with several).
_LABELS = {
    "rel_l1": (
        "relative L1 change vs step s−1 (%)",
        "ControlNet residuals: relative change",
        "relative L1 change (%)",
    ),
    "cos": (
        "cosine similarity with step s−1",
        "ControlNet residuals: cosine similarity",
        "cosine similarity",
    ),
}


def plot_controlnet_residuals(profile: Profile, policy: Policy | None = None) -> Figure:
    """ControlNet residual change across steps (line plot): the relative L1 change and cosine similarity of
    all its residuals together (mean ± std over samples) and of each ControlNet block; with a policy, the
    steps where its window reuses or drops the ControlNet are shaded."""
    info = _get_controlnet_residuals_info(profile, policy)
    if info.several:
        return _plot_several(info)
    with style():
        fig = new_figure(12, 4.2)
        if not info.nets:
            return show_message(fig, "the profile has no ControlNet")
        net = info.nets[0]
        axes = fig.subplots(1, 2)
        for ax, panel in zip(axes, net.panels):
            ylabel, title, _ = _LABELS[panel.metric]
            _draw_panel(ax, panel, net, info.num_steps)
            ax.set_xlabel("denoising step s")
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=11)
            ax.set_xlim(-0.5, info.num_steps - 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(True, color="#e5e5e5")
        handles, labels = axes[0].get_legend_handles_labels()
        if net.policy_steps:
            handles.append(Patch(facecolor="#999999", alpha=0.3))
            labels.append(f"policy: ControlNet {'dropped' if net.policy_mode == 'drop' else 'reused'}")
        fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
        fig.suptitle(
            f"How fast the ControlNet's output changes (mean ± std over {info.num_samples} samples; "
            "step 0 has no previous step)",
            fontsize=12,
        )
    return fig


def _plot_several(info: _ControlNetResidualsInfo) -> Figure:
    """One row per ControlNet of several: its residuals' change (mean ± std) and its blocks', with the
    steps its own window reuses or drops shaded."""
    with style():
        fig = new_figure(12, 3.4 * len(info.nets))
        axes = np.atleast_2d(fig.subplots(len(info.nets), 2))
        for row, net in enumerate(info.nets):
            kind = f" ({net.kind})" if net.kind else ""
            for ax, panel in zip(axes[row], net.panels):
                _draw_panel(ax, panel, net, info.num_steps)
                ax.set_title(f"{net.key}{kind}: residuals vs step s−1", fontsize=10)
                ax.set_xlabel("denoising step s")
                ax.set_ylabel(_LABELS[panel.metric][2])
                ax.set_xlim(-0.5, info.num_steps - 0.5)
                ax.grid(True, color="#e5e5e5")
            axes[row][1].legend(fontsize=7, loc="lower left", ncol=2)
        fig.suptitle(
            "Each ControlNet's residual change across steps (grey: steps its window reuses or drops it)",
            fontsize=12,
        )
    return fig


def _draw_panel(ax: Axes, panel: _ResidualPanel, net: _NetResiduals, num_steps: int) -> None:
    """Each block's line, the band of mean ± std and the mean of all residuals, the policy's steps shaded."""
    import seaborn as sns

    steps = np.arange(num_steps)
    palette = list(sns.color_palette("deep", max(len(panel.blocks), 1)))
    for colour, (label, values) in zip(palette, panel.blocks):
        ax.plot(steps, values, color=colour, linewidth=1, alpha=0.8, label=label)
    ax.fill_between(
        steps, panel.mean - panel.std, panel.mean + panel.std, color="black", alpha=0.15, linewidth=0
    )
    ax.plot(
        steps, panel.mean, color="black", linewidth=2.2, marker="o", markersize=3.5, label="all residuals"
    )
    for s in net.policy_steps:
        ax.axvspan(s - 0.5, s + 0.5, color="#999999", alpha=0.3, linewidth=0)
