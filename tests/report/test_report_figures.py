"""Report figures: layout rules that hold whatever the input text."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from hgc_tune.report._figures import plot_samples


def test_a_long_policy_name_stays_inside_its_column():
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    name = "tuned-trial-41-" + "x" * 60 + " and a very long description of the schedule " * 3
    fig = plot_samples(
        images,
        images,
        images,
        indices=[0, 1],
        seeds=[0, 1],
        prompts=["a red circle", "a blue square"],
        psnr_db=[30.0, 31.0],
        policy_name=name,
    )
    canvas = FigureCanvasAgg(fig)  # what savefig renders the PNG with
    canvas.draw()
    renderer = canvas.get_renderer()
    top_row = fig.axes[:4]
    titles = [ax.title.get_window_extent(renderer) for ax in top_row]
    columns = [ax.get_window_extent(renderer) for ax in top_row]
    # each title lies within its column's horizontal span (with a little slack), so neighbours never meet
    gap = 0.5 * (columns[1].x0 - columns[0].x1)
    for title, column in zip(titles, columns):
        assert column.x0 - gap <= title.x0 and title.x1 <= column.x1 + gap, (title, column)
    for left, right in zip(titles, titles[1:]):
        assert left.x1 < right.x0
    text = top_row[2].get_title()
    assert text.startswith("policy: tuned-trial") and text.count("\n") <= 1 and text.endswith("…")
