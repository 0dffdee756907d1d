"""The search's trade-off: MAC reduction against fidelity loss, with the front, the budget, the peers, the
held-out losses and the chosen policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from hgc_tune.report._figure_info._tradeoff import _get_tradeoff_info, _TradeoffInfo
from hgc_tune.report._figures._base import new_figure, style
from hgc_tune.search._pareto import ParetoData

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_PEER_COLOURS = {"deepcache": "tab:green", "tgate": "tab:purple", "cnwin": "tab:brown"}
_PEER_MARKERS = ("s", "D", "v", "X", "p", "h", "<", ">")
# Per group kind: colour, marker, legend label.
_GROUP_STYLES = {
    "feasible": ("tab:blue", "o", "trial within budget"),
    "over_budget": ("#9a9a9a", "o", "trial over budget"),
    "rejected": ("#9a9a9a", "x", "rejected early (partial loss)"),
}


def plot_tradeoff(pareto: ParetoData, *, convention: str = "paper") -> Figure:
    """MAC reduction vs. fidelity loss of every trial, the Pareto front, the budget line, the chosen policy,
    the peer schedules and (when the search validated) the held-out losses.

    Losses far above the budget would squash the interesting region: the y axis stops at about four budgets
    (or the largest feasible loss) and trials beyond it are drawn as ▲ on the top edge.

    Args:
        pareto: The search's trade-off (:func:`~hgc_tune.search._pareto.load_pareto`).
        convention: The MAC convention of the x axis (``paper``: what the search minimised).
    """
    info = _get_tradeoff_info(pareto, convention=convention)
    with style():
        fig = new_figure(10, 6)
        ax = fig.subplots()
        ax.grid(True, color="#e5e5e5")
        _draw_trials(ax, info)
        _draw_marks(ax, info)
        ax.set_ylim(*info.ylim)
        ax.set_xlim(*info.xlim)
        metric = f" ({info.metric})" if info.metric else ""
        ax.set_xlabel(f"MAC reduction vs full compute (%, {info.convention} convention)")
        ax.set_ylabel(f"calibration fidelity loss{metric} (%, lower is better)")
        # Left-aligned with the axes: a title centred over axes that the legend narrows ran off the left edge.
        ax.set_title(info.title, fontsize=12, loc="left").set_parse_math(False)
        if info.notes:
            text = ax.text(
                0.99,
                0.01,
                info.note_text,
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


def _draw_trials(ax: Axes, info: _TradeoffInfo) -> None:
    """The searched trials (clipped ones as ▲ on the top edge), the front, the budget and the anchor."""
    for group in info.groups:
        colour, marker, label = _GROUP_STYLES[group.kind]
        for members, shape in ((group.inside, marker), (group.clipped, "^")):
            if members:
                ax.scatter(
                    [x for x, _ in members],
                    [y for _, y in members],
                    s=30,
                    color=colour,
                    alpha=0.75,
                    marker=shape,
                    clip_on=False,
                    # one legend entry per group, on its first series drawn
                    label=f"{label} ({group.size})" if members is group.inside or not group.inside else None,
                )
    if info.front:
        ax.plot(
            [x for x, _ in info.front],
            [y for _, y in info.front],
            color="tab:orange",
            linewidth=1.8,
            drawstyle="steps-pre",
            marker="o",
            markersize=5,
            zorder=3,
            label=f"Pareto front ({len(info.front)})",
        )
    ax.axhline(
        info.budget, color="tab:red", linestyle="--", linewidth=1.5, label=f"budget {info.budget:.2f}%"
    )
    ax.scatter(
        [info.anchor[0]], [info.anchor[1]], marker="P", s=90, color="black", zorder=4, label="full compute"
    )


def _draw_marks(ax: Axes, info: _TradeoffInfo) -> None:
    """The peers with their names, the held-out losses and the chosen policy."""
    for index, peer in enumerate(info.peers):
        colour = _PEER_COLOURS.get(peer.family, "tab:olive")
        marker = _PEER_MARKERS[index % len(_PEER_MARKERS)]
        ax.scatter(
            [peer.x],
            [peer.y],
            marker=marker,
            s=80,
            color=colour,
            edgecolors="black",
            linewidths=0.6,
            zorder=5,
            clip_on=False,
            label=f"peer: {peer.name}",
        )
        text = ax.annotate(
            f"{peer.name} (loss {peer.loss:.1%}, off-scale)" if peer.clipped else peer.name,
            (peer.x, peer.y),
            # Alternate above/below so neighbouring peers' names do not print over each other.
            xytext=(6, -12 if peer.clipped or index % 2 else 6),
            textcoords="offset points",
            fontsize=8,
            color=colour,
        )
        text.set_parse_math(False)
    for n, (x, y_calibration, y_heldout) in enumerate(info.heldout):
        ax.plot([x, x], [y_calibration, y_heldout], color="#555555", linewidth=0.8, linestyle=":")
        ax.scatter(
            [x],
            [y_heldout],
            marker="D",
            s=46,
            facecolors="none",
            edgecolors="black",
            zorder=6,
            clip_on=False,
            label="held-out loss (validation)" if n == 0 else None,
        )
    chosen = info.chosen
    if chosen is not None:
        ax.scatter(
            [chosen.x],
            [chosen.y],
            marker="*",
            s=420,
            color="gold",
            edgecolors="black",
            linewidths=1.0,
            zorder=7,
            clip_on=False,
            label=f"chosen (trial {chosen.number}): {chosen.x:.1f}% fewer MACs, loss {chosen.loss:.2%}",
        )
