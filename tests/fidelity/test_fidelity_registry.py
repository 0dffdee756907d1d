"""The metric registry, default metrics, fit checks and the loss conventions."""

from __future__ import annotations

import pytest

from hgc_tune.errors import FidelityError
from hgc_tune.fidelity import METRICS, Metric, relative_loss, rmse
from hgc_tune.fidelity._metrics import PSNR_CAP_DB
from hgc_tune.fidelity._registry import check_metric_fits, default_metric, get_metric


def test_registry_names_directions_and_kinds() -> None:
    assert set(METRICS) == {"miou", "edge_f1", "edge_ssim", "depth_rmse", "latent_rel_error", "psnr", "ssim"}
    lower = {n for n, m in METRICS.items() if not m.higher_is_better}
    assert lower == {"depth_rmse", "latent_rel_error"}
    reference = {n for n, m in METRICS.items() if m.kind == "reference"}
    assert reference == {"latent_rel_error", "psnr", "ssim"}
    assert METRICS["depth_rmse"].fn is rmse


@pytest.mark.parametrize(
    ("condition_type", "name"),
    [
        ("seg", "miou"),
        ("canny", "edge_f1"),
        ("hed", "edge_ssim"),
        ("lineart", "edge_ssim"),
        ("depth", "depth_rmse"),
        ("pose", "ssim"),
        (None, "ssim"),
    ],
)
def test_default_metric(condition_type: str | None, name: str) -> None:
    m = default_metric(condition_type)
    assert m.name == name
    assert check_metric_fits(m, condition_type) is m


def test_task_metric_mismatch_names_metric_and_condition_type() -> None:
    with pytest.raises(FidelityError, match=r"metric='miou'.*condition_type='canny'"):
        check_metric_fits("miou", "canny")
    with pytest.raises(FidelityError, match=r"metric='depth_rmse'.*condition_type=None"):
        check_metric_fits("depth_rmse", None)


@pytest.mark.parametrize("name", ["latent_rel_error", "psnr", "ssim"])
@pytest.mark.parametrize("condition_type", ["seg", "canny", "hed", "lineart", "depth", "pose", None])
def test_reference_metrics_fit_every_condition_type(name: str, condition_type: str | None) -> None:
    assert check_metric_fits(name, condition_type).name == name


def test_unknown_metric_lists_known_ones() -> None:
    with pytest.raises(FidelityError, match=r"metric='fid'.*edge_f1"):
        get_metric("fid")


def test_relative_loss_sign_conventions() -> None:
    # higher is better: mIoU 0.8 -> 0.6 is a 25 % loss; an improvement is a negative loss
    assert relative_loss(0.8, 0.6, higher_is_better=True) == pytest.approx(0.25)
    assert relative_loss(0.8, 0.9, higher_is_better=True) == pytest.approx(-0.125)
    # lower is better: RMSE 0.10 -> 0.15 is a 50 % loss
    assert relative_loss(0.10, 0.15, higher_is_better=False) == pytest.approx(0.5)
    assert relative_loss(0.10, 0.05, higher_is_better=False) == pytest.approx(-0.5)
    assert relative_loss(0.5, 0.5, higher_is_better=True) == 0.0


@pytest.mark.parametrize("m_full", [0.0, -0.2])
def test_relative_loss_rejects_nonpositive_full_value(m_full: float) -> None:
    with pytest.raises(FidelityError, match=f"m_full={m_full}"):
        relative_loss(m_full, 0.1, higher_is_better=True)


def test_relative_loss_rejects_non_finite() -> None:
    with pytest.raises(FidelityError, match="m_policy=inf"):
        relative_loss(1.0, float("inf"), higher_is_better=True)


def test_reference_metric_losses() -> None:
    ssim_m, psnr_m, lat = METRICS["ssim"], METRICS["psnr"], METRICS["latent_rel_error"]
    assert ssim_m.loss(ssim_m.ideal, 0.9) == pytest.approx(0.1)
    assert psnr_m.ideal == PSNR_CAP_DB
    assert psnr_m.loss(psnr_m.ideal, 45.0) == pytest.approx(0.25)
    assert psnr_m.loss(psnr_m.ideal, PSNR_CAP_DB) == 0.0
    assert lat.ideal == 0.0
    assert lat.loss(lat.ideal, 0.07) == pytest.approx(0.07)


def test_metric_validates_its_fields() -> None:
    with pytest.raises(FidelityError, match="ideal"):
        Metric("x", rmse, higher_is_better=False, kind="reference")
    with pytest.raises(FidelityError, match="condition_types"):
        Metric("x", rmse, higher_is_better=False, kind="task")
    with pytest.raises(FidelityError, match="kind='other'"):
        Metric("x", rmse, higher_is_better=False, kind="other")  # type: ignore[arg-type]
