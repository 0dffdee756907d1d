"""The self-check's acceptance bars and sample grid."""

from __future__ import annotations

import numpy as np
import pytest

from training.shapes.selfcheck import ACCEPTANCE, grid_image


@pytest.mark.parametrize(
    ("condition", "with_control", "dropped", "passes"),
    [
        ("seg", 0.6, 0.3, True),
        ("seg", 0.45, 0.2, False),  # below the 0.5 floor
        ("seg", 0.55, 0.3, False),  # under 2x dropped
        ("canny", 0.4, 0.2, True),
        ("canny", 0.39, 0.2, False),
        ("hed", 0.31, 0.2, True),
        ("hed", 0.29, 0.2, False),
        ("depth", 0.1, 0.2, True),
        ("depth", 0.11, 0.2, False),
    ],
)
def test_acceptance_bars(condition, with_control, dropped, passes):
    assert ACCEPTANCE[condition].passes(with_control, dropped) is passes


def test_grid_image_tiles_rows_upscaled():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = np.full((4, 4, 3), 200, dtype=np.uint8)
    grid = grid_image([[a, b], [b, a]], scale=2, gap=1)
    assert grid.shape == (2 * 8 + 3, 2 * 8 + 3, 3)
    assert (grid[1:9, 1:9] == 0).all() and (grid[1:9, 10:18] == 200).all()
    assert (grid[0] == 255).all()
