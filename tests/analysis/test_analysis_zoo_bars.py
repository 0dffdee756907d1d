"""``analysis/zoo_bars.py``: the colour reader behind the "objects in their class's colour" bar is right on
ground-truth renders and notices wrong colours; the table states every bar of the model issue."""

from __future__ import annotations

import pytest

from hgc_tune.data._benchmark import split_seeds
from hgc_tune.data.shapes import render_scene


@pytest.fixture(scope="module")
def tool(analysis_script):
    return analysis_script("zoo_bars")


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(seed) for seed in split_seeds("validation", 40)]


def test_colours_are_read_right_on_ground_truth(tool, scenes):
    counts = [tool.colours_right(s.image, s.class_map) for s in scenes]
    right, objects = sum(r for r, _ in counts), sum(n for _, n in counts)
    assert objects >= 40 and right / objects >= 0.99


def test_wrong_colours_are_noticed(tool, scenes):
    # the same shapes with red and blue swapped: most objects no longer have their class's colour
    counts = [tool.colours_right(s.image[:, :, ::-1].copy(), s.class_map) for s in scenes]
    right, objects = sum(r for r, _ in counts), sum(n for _, n in counts)
    assert right / objects < 0.5


def test_the_table_states_every_bar(tool):
    figures = {
        "control": {
            c: {"metric": m, "with_control": 0.5, "dropped": 0.2, "ratio": 2.5, "bar": "b", "passes": True}
            for c, (m, *_) in tool.BARS.items()
        },
        "prompt_and_colours": {
            c: {
                "samples": 32,
                "background_recovered": 0.5,
                "background_passes": False,
                "objects": 70,
                "colours_right": 0.95,
                "colours_pass": True,
                "grid_cells_right": 9,
                "grid_cells": 16,
                "grid_passes": False,
            }
            for c in tool.CONDITIONS
        },
        "vae": {"samples": 64, "reconstruction_miou": 0.9, "ground_truth_miou": 0.99, "passes": False},
        "stability": {
            "samples": 64,
            "std_change": 0.05,
            "flips_over_0.1": 2,
            "mean_full": 0.6,
            "passes": False,
        },
        "size_mb": 36.0,
        "size_passes": True,
    }
    table = tool.markdown(figures)
    assert table.count("background named in the prompt") == 4 and table.count("class's colour") == 4
    assert table.count("grid cells with both right (first 16) | 9 | >= 14 | no") == 4
    assert ">= 90%" in table and "<= 50 MB" in table and ">= 0.93" in table
    assert tool.BARS["seg"] == ("miou", True, 2.5, 0.65) and tool.BARS["depth"][2] == 0.45


def test_the_scored_grid_frames_each_cell_by_its_verdict(tool, scenes):
    import numpy as np

    images = [s.image for s in scenes[:6]]
    grid = tool.scored_grid(images, [True, False, True, True, False, True], columns=4, scale=2, frame=2)
    cell = 64 * 2 + 2 * 2
    assert grid.shape == (2 * cell, 4 * cell, 3) and grid.dtype == np.uint8
    assert tuple(grid[0, 0]) == (0, 160, 0) and tuple(grid[0, cell]) == (200, 0, 0)  # right, wrong
    assert tuple(grid[cell, 0]) == (200, 0, 0) and tuple(grid[cell, cell]) == (0, 160, 0)
    assert tuple(grid[cell, 2 * cell]) == (255, 255, 255)  # no seventh picture: an empty cell
    # each picture sits inside its frame, upscaled
    assert np.array_equal(grid[cell + 2 : 2 * cell - 2 : 2, 2 : cell - 2 : 2], images[4])
