"""What every report figure shares: the seaborn style, the figure factory, PNG writing, and the heatmap."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from hgc_tune._atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes

DPI = 100
# Heatmap cell size in inches: wide enough for a "0.998" annotation at 7 pt, tall enough for a label.
CELL_W, CELL_H = 0.42, 0.3
NAN_COLOUR = "#d0d0d0"
# Beyond these, per-cell numbers turn into noise; the colour carries the information alone.
_MAX_ANNOTATED_STEPS, _MAX_ANNOTATED_ROWS = 30, 40
# Up to this many steps, the two panels of a heatmap figure sit side by side; beyond, one above the other,
# so the figure stays about a page wide.
_SIDE_BY_SIDE_STEPS = 12


def style():
    """The figures' seaborn style, as a context manager: its rc changes last only while a figure is built."""
    import seaborn as sns

    return sns.axes_style("white", {"axes.edgecolor": "#444444"})


def new_figure(width: float, height: float) -> Figure:
    """A figure of at least 3 × 2 inches at :data:`DPI`, laid out by matplotlib's constrained layout."""
    return Figure(figsize=(max(width, 3.0), max(height, 2.0)), dpi=DPI, layout="constrained")


def show_message(fig: Figure, text: str) -> Figure:
    """``text`` in the middle of an empty ``fig``: what a figure says when it has nothing to draw."""
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


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
def step_ticks(num_steps: int) -> int | bool:
    """Seaborn's ``xticklabels`` for a step axis: every step up to 30, else about 15 labels."""
    return True if num_steps <= 30 else max(1, round(num_steps / 15))


def _annotations(values: np.ndarray, fmt: str) -> np.ndarray | None:
    rows, steps = values.shape
    if steps > _MAX_ANNOTATED_STEPS or rows > _MAX_ANNOTATED_ROWS:
        return None
    return np.array([["" if math.isnan(v) else format(v, fmt) for v in row] for row in values], dtype=object)


def heatmap(
    ax: Axes,
    values: np.ndarray,
    *,
    rows: Sequence[str],
    cmap: str,
    vmin: float,
    vmax: float,
    label: str,
    title: str,
    fmt: str,
) -> None:
    """A module × step heatmap with its colour bar, NaN cells grey, each cell's value written where few."""
    import seaborn as sns

    annot = _annotations(values, fmt)
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
        xticklabels=step_ticks(values.shape[1]),
        yticklabels=list(rows),
        cbar_kws={"label": label, "pad": 0.02},
    )
    ax.set_facecolor(NAN_COLOUR)
    ax.set_xlabel("denoising step s")
    ax.set_title(title, fontsize=11)
    ax.tick_params(axis="y", labelsize=8, rotation=0)
    ax.tick_params(axis="x", labelsize=8, rotation=0)


def heatmap_panels(fig: Figure, num_steps: int):
    """Two heatmap axes, side by side for short schedules, stacked for long ones."""
    side = num_steps <= _SIDE_BY_SIDE_STEPS
    return fig.subplots(1, 2) if side else fig.subplots(2, 1)


def heatmap_size(n_rows: int, num_steps: int, label_chars: int) -> tuple[float, float]:
    """The size in inches of a two-panel heatmap figure of ``n_rows`` rows, labels of ``label_chars``."""
    # Wide enough for the panel title, however few steps.
    panel_w = max(num_steps * CELL_W + 0.075 * label_chars + 1.6, 6.0)
    # Tall enough for the colour bar label, however few rows.
    panel_h = max(n_rows * CELL_H + 1.1, 3.0)
    if num_steps <= _SIDE_BY_SIDE_STEPS:
        return 2 * panel_w, panel_h + 0.5
    return panel_w, 2 * panel_h + 0.5


def draw_separators(ax: Axes, separators: Sequence[int]) -> None:
    """A line between the U-Net rows and the ControlNet rows of a heatmap, at each row index given."""
    for i in separators:
        ax.axhline(i, color="white", linewidth=3)
        ax.axhline(i, color="#222222", linewidth=1)
