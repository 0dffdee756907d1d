"""The pure metric functions against hand-computed cases and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hgc_tune.errors import FidelityError
from hgc_tune.fidelity import edge_f1, latent_rel_error, miou, psnr, rmse, ssim
from hgc_tune.fidelity._metrics import PSNR_CAP_DB, as_uint8_image


def _rng_image(seed: int, shape: tuple[int, ...] = (32, 24, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---- mIoU


def test_miou_perfect_prediction_is_one() -> None:
    target = np.random.default_rng(0).integers(0, 6, (16, 16))
    assert miou(target.copy(), target) == 1.0


def test_miou_half_overlapping_square() -> None:
    # background 0, a 4x4 square of class 1 in the target, the prediction's square shifted by 2 columns:
    # class 1: intersection 4x2 = 8, union 16 + 16 - 8 = 24 -> 1/3
    # class 0: areas 64 - 16 = 48 each, intersection 64 - 24 = 40, union 48 + 48 - 40 = 56 -> 5/7
    target = np.zeros((8, 8), dtype=np.int64)
    pred = np.zeros((8, 8), dtype=np.int64)
    target[2:6, 1:5] = 1
    pred[2:6, 3:7] = 1
    assert miou(pred, target) == pytest.approx((1 / 3 + 5 / 7) / 2, abs=1e-12)


def test_miou_ignores_classes_absent_from_both_and_counts_one_sided_classes_as_zero() -> None:
    target = np.array([[0, 0], [7, 7]])
    # class 3 is only in the prediction: IoU 0; class 7: 1/2; class 0: 2/3. Absent classes (1, 2, ...) are
    # not in the mean at all.
    pred = np.array([[0, 0], [7, 3]])
    assert miou(pred, target) == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    pred = np.array([[0, 0], [0, 7]])
    assert miou(pred, target) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_miou_ignore_index_drops_target_pixels() -> None:
    target = np.array([[1, 1], [255, 255]])
    pred = np.array([[1, 1], [2, 2]])
    assert miou(pred, target, ignore_index=255) == 1.0
    assert miou(pred, target) == pytest.approx(1 / 3)  # 1: 1, 2: 0, 255: 0
    with pytest.raises(FidelityError, match="ignore_index=255"):
        miou(pred, np.full((2, 2), 255), ignore_index=255)


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), "same shape"),
        (np.zeros((4, 4), float), np.zeros((4, 4), int), "integer class ids"),
        (np.zeros((4, 4, 3), int), np.zeros((4, 4, 3), int), "H×W class map"),
    ],
)
def test_miou_rejects_bad_maps(pred: np.ndarray, target: np.ndarray, match: str) -> None:
    with pytest.raises(FidelityError, match=match):
        miou(pred, target)


# ---- edge F1


def _vline(col: int, shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[2:18, col] = True
    return m


def test_edge_f1_perfect_is_one() -> None:
    assert edge_f1(_vline(10), _vline(10), tolerance=0) == 1.0


def test_edge_f1_shift_by_two_pixels_depends_on_tolerance() -> None:
    pred, target = _vline(12), _vline(10)
    assert edge_f1(pred, target, tolerance=1) == 0.0
    assert edge_f1(pred, target, tolerance=2) == 1.0
    assert edge_f1(pred, target) == 0.0  # default tolerance is 1 px
    assert edge_f1(_vline(11), target) == 1.0


def test_edge_f1_hand_case_precision_and_recall() -> None:
    target = _vline(10)  # 16 pixels
    pred = _vline(10) | _vline(15)  # 32 pixels, half of them far from the target
    # precision 16/32, recall 16/16 -> F1 = 2 * 0.5 * 1 / 1.5
    assert edge_f1(pred, target, tolerance=1) == pytest.approx(2 / 3)
    # the same with 0/255 uint8 maps
    assert edge_f1(pred.astype(np.uint8) * 255, target.astype(np.uint8) * 255) == pytest.approx(2 / 3)


def test_edge_f1_empty_maps() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    assert edge_f1(empty, empty) == 1.0
    assert edge_f1(empty, _vline(3, (8, 8))) == 0.0
    assert edge_f1(_vline(3, (8, 8)), empty) == 0.0


def test_edge_f1_rejects_float_maps_and_negative_tolerance() -> None:
    with pytest.raises(FidelityError, match="edge map"):
        edge_f1(np.zeros((4, 4)), np.zeros((4, 4), bool))
    with pytest.raises(FidelityError, match="tolerance=-1"):
        edge_f1(_vline(1), _vline(1), tolerance=-1)


# ---- SSIM / PSNR


def test_ssim_equals_skimage_on_rgb_and_gray() -> None:
    a, b = _rng_image(1), _rng_image(2)
    b = ((a.astype(int) + b.astype(int) // 8) % 256).astype(np.uint8)  # correlated, so SSIM is not ~0
    expected = structural_similarity(a, b, data_range=255, channel_axis=-1)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-9)
    ga, gb = a[..., 0].astype(np.float64) / 255, b[..., 0].astype(np.float64) / 255
    assert ssim(ga, gb) == pytest.approx(structural_similarity(ga, gb, data_range=1.0), abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0)


def test_psnr_equals_skimage_and_caps_identical_images() -> None:
    a, b = _rng_image(3), _rng_image(4)
    assert psnr(b, a) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    assert psnr(a, a) == PSNR_CAP_DB
    assert psnr(a, a, cap=40.0) == 40.0
    # a float rendering of the same image scores like the uint8 one
    assert psnr(b.astype(np.float32) / 255, a) == pytest.approx(psnr(b, a), abs=1e-4)


def test_psnr_is_capped_for_tiny_differences() -> None:
    a = np.full((8, 8), 0.5)
    b = a.copy()
    b[0, 0] += 1e-6  # MSE ~1.6e-14 -> ~138 dB
    assert psnr(b, a) == PSNR_CAP_DB


def test_ssim_and_psnr_reject_bad_input() -> None:
    with pytest.raises(FidelityError, match="same shape"):
        ssim(_rng_image(0, (16, 16, 3)), _rng_image(0, (16, 17, 3)))
    with pytest.raises(FidelityError, match=r"\[0, 1\]"):
        psnr(np.full((8, 8), 2.0), np.zeros((8, 8)))
    with pytest.raises(FidelityError, match="7×7"):
        ssim(np.zeros((5, 5)), np.zeros((5, 5)))


# ---- RMSE, latent relative error


def test_rmse_hand_case() -> None:
    # errors 0, 0, 3, 4 -> sqrt((9 + 16) / 4) = 2.5
    assert rmse(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 2.0], [0.0, 0.0]])) == 2.5
    assert rmse(np.ones((3, 3)), np.ones((3, 3))) == 0.0
    with pytest.raises(FidelityError, match="finite"):
        rmse(np.array([np.nan]), np.array([0.0]))


def test_latent_rel_error_hand_case() -> None:
    ref = np.array([3.0, 4.0])  # norm 5
    assert latent_rel_error(np.array([3.0, 4.0]), ref) == 0.0
    assert latent_rel_error(np.array([0.0, 4.0]), ref) == pytest.approx(3 / 5)
    with pytest.raises(FidelityError, match=r"\|\|reference\|\| = 0"):
        latent_rel_error(ref, np.zeros(2))


def test_latent_rel_error_accepts_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.bfloat16)
    assert latent_rel_error(z * 0.5, z) == pytest.approx(0.5)


# ---- image conversion


def test_as_uint8_image_converts_float_gray_and_rejects_out_of_range() -> None:
    f = np.array([[0.0, 1.0], [0.5, 0.2]])
    u = as_uint8_image(f)
    assert u.shape == (2, 2, 3) and u.dtype == np.uint8
    assert u[..., 0].tolist() == [[0, 255], [128, 51]]
    with pytest.raises(FidelityError, match="range"):
        as_uint8_image(f + 1.0)
    assert as_uint8_image(np.zeros((4, 4, 4), np.uint8)).shape == (4, 4, 3)  # alpha dropped
