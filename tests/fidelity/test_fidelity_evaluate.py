"""TaskEvaluator and evaluate_pairs with hand-made task models (no shapes benchmark needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.metrics import structural_similarity

import hgc_tune.fidelity._evaluate as evaluate_module
from hgc_tune.errors import FidelityError
from hgc_tune.fidelity import FidelityResult, TaskEvaluator, evaluate_pairs, psnr
from hgc_tune.fidelity._metrics import PSNR_CAP_DB
from hgc_tune.fidelity._registry import PROMPT_METRICS


def _red_mask(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 127).astype(np.int64)


def _square(col: int, size: int = 16) -> np.ndarray:
    """A uint8 RGB image: black, with a white 4x4 square at rows 4:8, columns col:col+4."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[4:8, col : col + 4] = 255
    return img


def _no_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> dict:
        raise FidelityError("shapes built-ins are not available in this test")

    monkeypatch.setattr(evaluate_module, "shapes_task_models", fail)


def test_seg_evaluator_with_own_task_models_needs_no_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_shapes(monkeypatch)
    ev = TaskEvaluator("seg", segmenter=_red_mask, condition_class_map=_red_mask)
    assert ev.metric.name == "miou"
    cond = _square(4)
    assert ev.score(_square(4), cond) == 1.0
    # shifted by 2 columns: class 1 IoU 8/24, class 0: areas 240, intersection 232, union 248
    assert ev.score(_square(6), cond) == pytest.approx((8 / 24 + 232 / 248) / 2)
    # a missing task model falls back to the built-ins, which are unavailable here
    with pytest.raises(FidelityError, match="not available"):
        TaskEvaluator("seg", segmenter=_red_mask)


def test_evaluate_pairs_task_metric_loss_of_means(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_shapes(monkeypatch)
    ev = TaskEvaluator("seg", segmenter=_red_mask, condition_class_map=_red_mask)
    conds = [_square(4), _square(8)]
    full = [_square(4), _square(8)]
    policy = [_square(4), _square(10)]
    out = evaluate_pairs(full, policy, conds, ev)
    shifted = (8 / 24 + 232 / 248) / 2
    assert out["metric"] == "miou" and out["kind"] == "task" and out["condition_type"] == "seg"
    assert out["n"] == 2
    assert out["per_sample_full"] == [1.0, 1.0]
    assert out["per_sample_policy"] == pytest.approx([1.0, shifted])
    assert out["full"] == 1.0
    assert out["policy"] == pytest.approx((1.0 + shifted) / 2)
    assert out["loss"] == pytest.approx((1.0 - (1.0 + shifted) / 2) / 1.0)
    json.dumps(out)  # JSON-ready
    assert FidelityResult.from_dict(out).to_dict() == out


def test_canny_evaluator_uses_edge_tolerance(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_shapes(monkeypatch)
    cond = np.zeros((20, 20, 3), np.uint8)
    cond[2:18, 10] = 255
    out = np.zeros_like(cond)
    out[2:18, 12] = 255

    def white(image: np.ndarray) -> np.ndarray:
        return image[..., 0] > 127

    assert TaskEvaluator("canny", edge_detector=white).score(out, cond) == 0.0
    assert TaskEvaluator("canny", edge_detector=white, edge_tolerance=2).score(out, cond) == 1.0


def test_depth_evaluator_rmse_and_lower_is_better_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_shapes(monkeypatch)

    def depth(image: np.ndarray) -> np.ndarray:
        return image[..., 0] / 255.0

    ev = TaskEvaluator("depth", depth_estimator=depth)
    assert ev.metric.name == "depth_rmse" and not ev.metric.higher_is_better
    cond = np.full((8, 8, 3), 100, np.uint8)
    full = [np.full((8, 8, 3), 110, np.uint8)]
    policy = [np.full((8, 8, 3), 120, np.uint8)]
    out = evaluate_pairs(full, policy, [cond], ev)
    assert out["full"] == pytest.approx(10 / 255)
    assert out["policy"] == pytest.approx(20 / 255)
    assert out["loss"] == pytest.approx(1.0)  # RMSE doubled
    # a perfect full-compute depth leaves the relative loss undefined
    with pytest.raises(FidelityError, match="m_full=0.0"):
        evaluate_pairs([cond], policy, [cond], ev)


def test_hed_evaluator_compares_soft_edges_with_ssim(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_shapes(monkeypatch)

    def soft(image: np.ndarray) -> np.ndarray:
        return image[..., 0] / 255.0

    rng = np.random.default_rng(0)
    cond = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    noisy = np.clip(cond.astype(int) + rng.integers(-30, 31, cond.shape), 0, 255).astype(np.uint8)
    ev = TaskEvaluator("lineart", soft_edge_detector=soft)
    assert ev.metric.name == "edge_ssim"
    g_cond = cond.mean(axis=-1) / 255.0
    expected = structural_similarity(noisy[..., 0] / 255.0, g_cond, data_range=1.0)
    assert ev.score(noisy, cond) == pytest.approx(expected, abs=1e-12)


def test_evaluator_rejects_task_metric_for_other_condition_type(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_shapes(monkeypatch)
    with pytest.raises(FidelityError, match=r"metric='edge_f1'.*condition_type='depth'"):
        TaskEvaluator("depth", metric="edge_f1")


def test_reference_ssim_and_psnr(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_shapes(monkeypatch)  # reference metrics need no task model
    rng = np.random.default_rng(1)
    full = [rng.random((16, 16, 3)) for _ in range(3)]
    policy = [np.clip(f + rng.normal(0, 0.05, f.shape), 0, 1) for f in full]
    ev = TaskEvaluator("pose")
    assert ev.metric.name == "ssim"
    same = evaluate_pairs(full, full, None, ev)
    assert same["full"] == 1.0 and same["policy"] == pytest.approx(1.0) and same["loss"] == pytest.approx(0.0)
    out = evaluate_pairs(full, policy, None, ev)
    expected = [
        structural_similarity(p, f, data_range=1, channel_axis=-1) for p, f in zip(policy, full, strict=True)
    ]
    assert out["per_sample_policy"] == pytest.approx(expected, abs=1e-12)
    assert out["loss"] == pytest.approx(1.0 - np.mean(expected))

    ev = TaskEvaluator("seg", metric="psnr")
    out = evaluate_pairs(full, policy, None, ev)
    values = [psnr(p, f) for p, f in zip(policy, full, strict=True)]
    assert out["full"] == PSNR_CAP_DB
    assert out["loss"] == pytest.approx((PSNR_CAP_DB - np.mean(values)) / PSNR_CAP_DB)
    assert evaluate_pairs(full, full, None, ev)["loss"] == 0.0


def test_reference_latent_rel_error_loss_is_the_error() -> None:
    ev = TaskEvaluator("canny", metric="latent_rel_error")
    full = [np.ones((4, 8, 8)), np.full((4, 8, 8), 2.0)]
    policy = [np.full((4, 8, 8), 1.1), np.full((4, 8, 8), 2.0)]
    out = evaluate_pairs(full, policy, None, ev)
    assert out["full"] == 0.0
    assert out["per_sample_policy"] == pytest.approx([0.1, 0.0])
    assert out["loss"] == pytest.approx(0.05)


def test_evaluate_pairs_checks_lengths() -> None:
    ev = TaskEvaluator(None, metric="ssim")
    img = np.zeros((8, 8))
    with pytest.raises(FidelityError, match=r"len\(full_images\)=2 and len\(policy_images\)=1"):
        evaluate_pairs([img, img], [img], None, ev)
    with pytest.raises(FidelityError, match="empty"):
        evaluate_pairs([], [], None, ev)


def test_task_metric_needs_conditions(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_shapes(monkeypatch)
    ev = TaskEvaluator("depth", depth_estimator=lambda image: image[..., 0] / 255.0)
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(FidelityError, match=r"len\(conditions\)=None"):
        evaluate_pairs([img], [img], None, ev)
    with pytest.raises(FidelityError, match="condition_image"):
        ev.score(img)


class _PromptMetricEvaluator:
    """An evaluator of a prompt metric: it has no ideal (value against itself) to stand for full compute."""

    metric = PROMPT_METRICS["clip"]

    def score(self, *args: object, **kwargs: object) -> float:
        raise AssertionError("a prompt metric must be refused before any scoring")


def test_a_metric_without_an_ideal_is_refused_by_the_pairs() -> None:
    # evaluate_pairs compares an output with its condition or reference, never with a prompt; the scorer
    # scores a prompt metric from the prompts (tests/fidelity/test_fidelity_constraints.py).
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(FidelityError, match=r"metric 'clip' \(prompt\) has no `ideal`.*ideal=None"):
        evaluate_pairs([img], [img], None, _PromptMetricEvaluator())
