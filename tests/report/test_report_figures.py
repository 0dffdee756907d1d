"""Report figures: layout rules that hold whatever the input text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from hgc_tune.report._figures import plot_samples, plot_tradeoff
from hgc_tune.search._pareto import load_pareto

FIXTURE_PARETO = Path(__file__).parents[1] / "search" / "fixtures" / "tiny-seg.pareto.json"


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


LONG_STUDY = "shapes-seg-miou-budget0.015-validated-on-40-samples-" * 2


@pytest.mark.parametrize("study", ["tiny-seg-miou-budget0.015", "x" * 90, LONG_STUDY])
@pytest.mark.parametrize(
    "peer", ["tgate-g10", "deepcache-n3-b0/" + "an-alias-long-enough-to-widen-the-legend" * 2]
)
def test_the_tradeoff_title_stays_inside_the_figure(study, peer):
    pareto = load_pareto(FIXTURE_PARETO)
    # a long peer name widens the legend beside the axes, and so narrows the axes the title sits over
    points = [
        dataclasses.replace(p, peers=tuple(peer.split("/"))) if p.peer == "tgate-g10/tgate-g10-alias" else p
        for p in pareto.points
    ]
    fig = plot_tradeoff(dataclasses.replace(pareto, study=study, points=tuple(points)))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    [title] = [t for t in fig.findobj(Text) if t.get_text().startswith("Cost vs fidelity")]
    box, page = title.get_window_extent(canvas.get_renderer()), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, (box, page)
    assert study.replace("-", "") in title.get_text().replace("\n", "").replace("-", "")
