"""The per-step MAC bars: one unit for all, and the fraction saved."""

from __future__ import annotations

import numpy as np
import pytest

from hgc_tune.report._figure_info._step_macs import _get_step_macs_info


def steps(*pairs):
    return [{"unet": u, "controlnet": c} for u, c in pairs]


def test_thousands_and_the_fraction_saved():
    info = _get_step_macs_info(
        steps((1500, 500), (1000, 0)), steps((1500, 500), (1500, 500)), convention="paper", policy_name="p"
    )
    assert info.unit == "K MACs (10³)"
    np.testing.assert_allclose(info.unet, [1.5, 1.0])
    np.testing.assert_allclose(info.controlnet, [0.5, 0.0])
    np.testing.assert_allclose(info.full, [2.0, 2.0])
    # 3000 of 4000 MACs computed
    assert info.saved == pytest.approx(0.25)
    assert (info.convention, info.policy_name) == ("paper", "p")


@pytest.mark.parametrize(
    ("full", "unit", "scaled"),
    [
        (999, "MACs", 999.0),
        (2.5e9, "G MACs (10⁹)", 2.5),
        (4.0e12, "T MACs (10¹²)", 4.0),
        (3.0e15, "10^15 MACs", 3.0),
    ],
)
def test_the_unit_keeps_the_largest_step_below_a_thousand(full, unit, scaled):
    info = _get_step_macs_info(steps((full, 0)), steps((full, 0)), convention="complete")
    assert info.unit == unit and info.full[0] == pytest.approx(scaled) and info.saved == 0.0


def test_no_steps():
    info = _get_step_macs_info([], [], convention="paper")
    assert info.unit == "MACs" and info.full.shape == (0,) and info.saved == 0.0
