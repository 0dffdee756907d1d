"""Paired loss bounds: hand-computed delta-method / Student t cases, confidence 0, verdicts, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hgc_tune.errors import FidelityError
from hgc_tune.fidelity import paired_loss_bound
from hgc_tune.fidelity._confidence import check_confidence


def test_reference_metric_reduces_to_the_one_sample_t_bound():
    # SSIM against the full output: full is the ideal 1, d = 1 - policy = [.01, .02, .03, .02]
    b = paired_loss_bound([1.0] * 4, [0.99, 0.98, 0.97, 0.98], "ssim", confidence=0.95)
    sd = math.sqrt((1e-4 + 0 + 1e-4 + 0) / 3)
    assert b.loss == pytest.approx(0.02)
    assert b.se == pytest.approx(sd / 2)
    assert b.upper == pytest.approx(0.02 + 2.353363434801823 * sd / 2)
    # the same as scipy's one-sided t interval of the differences
    d = np.array([0.01, 0.02, 0.03, 0.02])
    low, high = stats.t.interval(0.90, 3, loc=d.mean(), scale=stats.sem(d))
    assert b.upper == pytest.approx(high) and b.lower == pytest.approx(low)


def test_relative_loss_of_a_lower_is_better_metric_by_hand():
    # depth RMSE 0.1 -> 0.11 and 0.2 -> 0.2: L = (0.155 - 0.15) / 0.15; z = (d - L f) / mean f = ±0.0444
    b = paired_loss_bound([0.1, 0.2], [0.11, 0.2], "depth_rmse", confidence=0.95)
    loss = 0.005 / 0.15
    z = np.array([0.01 - loss * 0.1, 0.0 - loss * 0.2]) / 0.15
    assert z == pytest.approx([0.04444444, -0.04444444])
    se = z.std(ddof=1) / math.sqrt(2)
    assert b.loss == pytest.approx(loss)
    assert b.upper == pytest.approx(loss + stats.t.ppf(0.95, 1) * se)
    assert b.upper == pytest.approx(0.3140, abs=1e-4)


def test_relative_loss_of_a_higher_is_better_metric_by_hand():
    full, policy = [0.8, 0.9, 0.7], [0.78, 0.9, 0.67]
    b = paired_loss_bound(full, policy, "miou", confidence=0.9)
    loss = (0.8 - 0.7833333333) / 0.8
    d = np.subtract(full, policy)
    z = (d - loss * np.asarray(full)) / 0.8
    assert b.loss == pytest.approx(loss)
    assert b.upper == pytest.approx(loss + stats.t.ppf(0.9, 2) * z.std(ddof=1) / math.sqrt(3))


def test_pairing_cancels_shared_noise():
    # wildly different samples, a constant 1% degradation on each: the paired bound stays tight
    full = np.array([0.2, 0.9, 0.5, 0.7, 0.3, 0.8])
    b = paired_loss_bound(full, full * 0.99, "miou", confidence=0.95)
    assert b.loss == pytest.approx(0.01) and b.upper == pytest.approx(0.01)


def test_absolute_loss_metric():
    b = paired_loss_bound([0.0] * 3, [0.01, 0.02, 0.03], "latent_rel_error", confidence=0.95)
    assert b.loss == pytest.approx(0.02)
    assert b.upper == pytest.approx(0.02 + stats.t.ppf(0.95, 2) * 0.01 / math.sqrt(3))


def test_confidence_zero_is_the_point_estimate_and_one_sample_is_unbounded():
    b = paired_loss_bound([1.0, 1.0], [0.9, 0.99], "ssim", confidence=0)
    assert b.upper == b.lower == b.loss == pytest.approx(0.055)
    one = paired_loss_bound([1.0], [0.9], "ssim", confidence=0.95)
    assert one.upper == math.inf and one.lower == -math.inf
    assert one.verdict(0.5) == "undecided"


def test_verdicts():
    b = paired_loss_bound([1.0] * 4, [0.99, 0.98, 0.97, 0.98], "ssim")
    assert b.verdict(0.05) == "pass"
    assert b.verdict(0.001) == "fail"
    assert b.verdict(0.025) == "undecided"


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.9"])
def test_bad_confidence(bad):
    with pytest.raises(FidelityError, match="confidence"):
        check_confidence(bad)


def test_bad_samples():
    with pytest.raises(FidelityError, match="one value per sample"):
        paired_loss_bound([1.0, 1.0], [1.0], "ssim")
    with pytest.raises(FidelityError, match="finite"):
        paired_loss_bound([1.0], [float("nan")], "ssim")
    with pytest.raises(FidelityError, match="m_full"):
        paired_loss_bound([0.0, 0.0], [0.0, 0.0], "miou")
