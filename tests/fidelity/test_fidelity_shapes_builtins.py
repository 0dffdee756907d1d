"""The default task models of the shapes benchmark (``hgc_tune.data.shapes``) inside the evaluator.

These need the shapes benchmark module; they fail (rather than skip) while it is missing, on purpose.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from hgc_tune.data._benchmark import split_seeds
from hgc_tune.data.shapes import BACKGROUNDS, render_scene
from hgc_tune.errors import FidelityError
from hgc_tune.fidelity import (
    TaskEvaluator,
    background_adherence,
    background_score,
    evaluate_pairs,
    named_background,
    read_background,
)
from hgc_tune.fidelity._task_models import shapes_task_models


@pytest.fixture(scope="module")
def scenes() -> list:
    from hgc_tune.data import shapes

    return [shapes.render_scene(seed, size=64) for seed in range(3)]


def _blur(image: np.ndarray) -> np.ndarray:
    out = ndimage.gaussian_filter(image.astype(np.float64), sigma=(2.0, 2.0, 0.0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_shapes_task_models_are_the_benchmark_functions() -> None:
    from hgc_tune.data import shapes

    models = shapes_task_models()
    assert models["segmenter"] is shapes.decode_class_map
    assert models["condition_class_map"] is shapes.class_map_from_seg
    assert models["depth_estimator"] is shapes.estimate_depth
    assert models["edge_detector"] is shapes.edges
    assert models["soft_edge_detector"] is shapes.soft_edges


@pytest.mark.parametrize(
    ("condition_type", "ideal"), [("seg", 1.0), ("canny", 1.0), ("hed", 1.0), ("depth", 0.0)]
)
def test_ground_truth_picture_scores_near_ideal(scenes: list, condition_type: str, ideal: float) -> None:
    ev = TaskEvaluator(condition_type)
    for scene in scenes:
        value = ev.score(scene.image, scene.condition(condition_type))
        assert value == pytest.approx(ideal, abs=0.05), (scene.seed, value)


@pytest.mark.parametrize("condition_type", ["seg", "canny", "hed", "depth"])
def test_blurred_pictures_lose_fidelity(scenes: list, condition_type: str) -> None:
    ev = TaskEvaluator(condition_type)
    full = [s.image for s in scenes]
    policy = [_blur(s.image) for s in scenes]
    conditions = [s.condition(condition_type) for s in scenes]
    out = evaluate_pairs(full, policy, conditions, ev)
    assert out["loss"] > 0.0, out
    # a float [0, 1] rendering (diffusers' output_type="np") scores the same as uint8
    full_f = [s.image.astype(np.float32) / 255.0 for s in scenes]
    assert evaluate_pairs(full_f, policy, conditions, ev)["full"] == pytest.approx(out["full"])


# --------------------------------------------------------------------------- prompt adherence (background)


@pytest.fixture(scope="module")
def background_scenes():
    return [render_scene(seed) for seed in split_seeds("validation", 200)]


def test_background_reader_is_right_on_ground_truth_renders(background_scenes):
    """>= 99 % of 200 validation scenes, with the background the condition marks and with none given."""
    with_condition = [background_adherence(s.image, s.prompt, s.class_map == 0) for s in background_scenes]
    from_picture = [read_background(s.image) == s.background for s in background_scenes]
    assert sum(with_condition) >= 0.99 * len(background_scenes)
    assert sum(from_picture) >= 0.99 * len(background_scenes)
    assert {s.background for s in background_scenes} == set(BACKGROUNDS)


def test_background_reader_is_not_trivially_right(background_scenes):
    """A picture read against another scene's prompt scores about 1/7, not 1."""
    shuffled = background_scenes[1:] + background_scenes[:1]
    scores = [
        background_adherence(a.image, b.prompt, a.class_map == 0) for a, b in zip(background_scenes, shuffled)
    ]
    assert sum(scores) / len(scores) < 0.35
    # a flat picture of one base colour reads as that background, whatever the mask
    for name, (color, _, _) in BACKGROUNDS.items():
        flat = np.tile(np.asarray(color, dtype=np.uint8), (64, 64, 1))
        assert read_background(flat, np.ones((64, 64), dtype=bool)) == name


def test_background_score_is_the_soft_reader(background_scenes):
    """High where the reader is right, low against another scene's prompt, and moving with the colour."""
    own = [background_score(s.image, s.prompt, s.class_map == 0) for s in background_scenes]
    assert min(own) > 0.5
    assert float(np.mean(own)) > 0.9
    shuffled = background_scenes[1:] + background_scenes[:1]
    other = [
        background_score(a.image, b.prompt, a.class_map == 0) for a, b in zip(background_scenes, shuffled)
    ]
    assert float(np.mean(other)) < 0.3
    # halfway between two base colours, each gets about half; nearer to one, it gets more
    mask = np.ones((8, 8), dtype=bool)
    wood, stone = (np.asarray(BACKGROUNDS[n][0], dtype=np.float64) for n in ("wood", "stone"))
    prompt = "a photo of a red plain circle on a wood background"
    scores = [
        background_score(
            np.tile(np.round(stone + t * (wood - stone)).astype(np.uint8), (8, 8, 1)), prompt, mask
        )
        for t in (0.0, 0.5, 1.0)
    ]
    assert scores[0] < 0.3 < scores[1] < 0.7 < scores[2]


def test_background_reader_errors_name_the_value():
    assert named_background("A photo of a red striped circle on a Grass background") == "grass"
    with pytest.raises(FidelityError, match="prompt='a red circle on a moon background'"):
        named_background("a red circle on a moon background")
    with pytest.raises(FidelityError, match="marks no pixel"):
        read_background(np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((8, 8), dtype=bool))
    with pytest.raises(FidelityError, match=r"mask of the image's size \(8, 8\)"):
        read_background(np.zeros((8, 8, 3), dtype=np.uint8), np.ones((4, 4), dtype=bool))
    with pytest.raises(FidelityError, match="uint8"):
        read_background(np.zeros((8, 8, 3), dtype=np.float32))
