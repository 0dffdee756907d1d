"""The shapes benchmark: determinism, splits, condition maps and the decoders that read pictures back."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage

from hgc_tune.data._benchmark import SPLITS, split_seeds
from hgc_tune.data._shapes import (
    BACKGROUNDS,
    NUM_CLASSES,
    OBJECT_COLORS,
    SEG_PALETTE,
    SHAPE_CLASSES,
    class_map_from_seg,
    decode_class_map,
    edges,
    estimate_depth,
    render_scene,
    soft_edges,
)
from hgc_tune.errors import DatasetError

SEEDS = range(24)


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(seed) for seed in SEEDS]


def _miou(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Dataset-level mIoU from one confusion matrix (classes absent from both are ignored)."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (truth.ravel(), predicted.ravel()), 1)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    present = union > 0
    return float((np.diag(confusion)[present] / union[present]).mean())


def _boundary(class_map: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another class (both sides of every boundary)."""
    out = np.zeros(class_map.shape, dtype=bool)
    horizontal = class_map[:, 1:] != class_map[:, :-1]
    vertical = class_map[1:] != class_map[:-1]
    out[:, 1:] |= horizontal
    out[:, :-1] |= horizontal
    out[1:] |= vertical
    out[:-1] |= vertical
    return out


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b = render_scene(7), render_scene(7)
    for name in ("image", "seg", "canny", "hed", "depth", "class_map"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.prompt == b.prompt and a.objects == b.objects
    c = render_scene(8)
    assert not np.array_equal(a.image, c.image)
    images = {render_scene(s).image.tobytes() for s in range(10)}
    assert len(images) == 10


def test_scene_arrays_have_the_documented_shapes_and_ranges(scenes):
    scene = scenes[0]
    assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
    assert scene.seg.shape == (64, 64, 3) and scene.seg.dtype == np.uint8
    for name in ("canny", "hed", "depth"):
        assert getattr(scene, name).shape == (64, 64) and getattr(scene, name).dtype == np.uint8
        assert scene.condition(name).shape == (64, 64, 3)
    assert set(np.unique(scene.canny)) <= {0, 255}
    assert scene.class_map.min() >= 0 and scene.class_map.max() < NUM_CLASSES
    for size in (32, 128):
        assert render_scene(3, size).image.shape == (size, size, 3)


def test_scenes_have_one_to_four_distinct_visible_objects_over_all_classes(scenes):
    seen = set()
    for scene in scenes:
        labels = [o.label for o in scene.objects]
        assert 1 <= len(labels) <= 4 and len(set(labels)) == len(labels)
        # objects are listed far to near, and nearer objects are drawn over farther ones
        assert [o.depth for o in scene.objects] == sorted(o.depth for o in scene.objects)
        for obj in scene.objects:
            assert obj.visible_fraction >= 0.5
            assert (scene.class_map == obj.label).sum() > 20
        assert set(np.unique(scene.class_map)) == {0, *labels}
        seen.update(labels)
    assert seen == set(range(1, NUM_CLASSES))


def test_prompt_names_every_object_with_colour_texture_and_the_background(scenes):
    for scene in scenes:
        for obj in scene.objects:
            assert f"{obj.color} {obj.texture} {obj.shape}" in scene.prompt
        absent = set(SHAPE_CLASSES[1:]) - {o.shape for o in scene.objects}
        for name in absent:
            assert f" {name}" not in scene.prompt
        assert scene.prompt.startswith("a photo of a ")
        assert scene.prompt.endswith(f"on a {scene.background} background")
    two = next(s for s in scenes if len(s.objects) == 2)
    near, far = two.objects[1], two.objects[0]
    assert two.prompt == (
        f"a photo of a {near.color} {near.texture} {near.shape} and a {far.color} {far.texture} {far.shape} "
        f"on a {two.background} background"
    )


def test_splits_are_disjoint_seed_ranges_with_offsets():
    assert split_seeds("calibration", 3) == range(0, 3)
    assert split_seeds("validation", 3, seed=5) == range(100_005, 100_008)
    assert split_seeds("test", 2) == range(200_000, 200_002)
    assert split_seeds("train", 2, seed=1) == range(1_000_001, 1_000_003)
    # `heldout` is validation's former name: the same scenes
    assert SPLITS["heldout"] == SPLITS["validation"]
    ranges = sorted(v for k, v in SPLITS.items() if k != "heldout")
    assert len(ranges) == 4
    for (_, stop), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert stop <= start
    calibration = set(split_seeds("calibration", 100_000))
    validation = set(split_seeds("validation", 100_000))
    test = set(split_seeds("test", 100_000))
    assert calibration.isdisjoint(validation) and calibration.isdisjoint(test) and validation.isdisjoint(test)
    with pytest.raises(DatasetError, match="seed=99999, n=2"):
        split_seeds("calibration", 2, seed=99_999)
    with pytest.raises(DatasetError, match="split='val'"):
        split_seeds("val", 2)
    with pytest.raises(DatasetError, match="n=0"):
        split_seeds("calibration", 0)


def test_seg_condition_uses_the_palette_and_decodes_exactly(scenes):
    for scene in scenes:
        assert np.array_equal(scene.seg, SEG_PALETTE[scene.class_map])
        assert np.array_equal(class_map_from_seg(scene.seg), scene.class_map)
    # nearest palette colour: slightly off colours still decode
    noisy = np.clip(scenes[0].seg.astype(int) + 20, 0, 255).astype(np.uint8)
    assert np.array_equal(class_map_from_seg(noisy), scenes[0].class_map)


def test_decode_class_map_on_hand_made_colours():
    image = np.zeros((4, 8, 3), dtype=np.uint8)
    image[:] = (128, 128, 128)  # grey background
    image[:, 2] = (OBJECT_COLORS[1] * 0.7).astype(np.uint8)  # red, far and dark
    image[:, 3] = OBJECT_COLORS[2].astype(np.uint8)  # blue
    image[:, 4] = (OBJECT_COLORS[6] * 1.1).astype(np.uint8)  # cyan, brighter stripe
    image[:, 5] = (150, 130, 110)  # wood background tint
    image[:, 6] = (10, 30, 10)  # too dark to carry a colour
    labels = decode_class_map(image, smooth=0)
    assert labels[0].tolist() == [0, 0, 1, 2, 6, 0, 0, 0]


def test_decoders_recover_the_class_map_of_clean_and_degraded_pictures(scenes):
    truth = np.stack([s.class_map for s in scenes])
    clean = np.stack([decode_class_map(s.image) for s in scenes])
    assert _miou(truth, clean) >= 0.95
    assert _miou(truth, np.stack([decode_class_map(s.image, smooth=0) for s in scenes])) == 1.0
    # a stand-in for a generated picture: blurred, noisy
    rng = np.random.default_rng(0)
    degraded = []
    for scene in scenes:
        blurred = ndimage.gaussian_filter(scene.image.astype(float), (0.7, 0.7, 0))
        noisy = np.clip(blurred + rng.normal(0, 6, blurred.shape), 0, 255).astype(np.uint8)
        degraded.append(decode_class_map(noisy))
    assert _miou(truth, np.stack(degraded)) >= 0.9
    # a wrong picture scores low: the decoder is not trivially right
    shuffled = np.stack([decode_class_map(s.image) for s in scenes[1:] + scenes[:1]])
    assert _miou(truth, shuffled) < 0.5


def test_estimate_depth_follows_the_depth_map(scenes):
    for scene in scenes:
        estimate = estimate_depth(scene.image)
        assert estimate.min() >= 0.0 and estimate.max() <= 1.0
        assert np.corrcoef(estimate.ravel(), scene.depth.ravel())[0, 1] > 0.95
        for obj in scene.objects:
            inside = ndimage.binary_erosion(scene.class_map == obj.label, iterations=1)
            if inside.sum() > 10:
                assert np.median(estimate[inside]) == pytest.approx(obj.depth, abs=0.06)
        assert np.all(estimate[ndimage.binary_erosion(scene.class_map == 0, iterations=2)] == 0.0)


def test_depth_condition_is_brighter_for_nearer_objects_and_dark_background(scenes):
    for scene in scenes:
        assert np.all(scene.depth[scene.class_map == 0] == 0)
        for obj in scene.objects:
            values = np.unique(scene.depth[scene.class_map == obj.label])
            assert values.tolist() == [round(255 * obj.depth)]


def test_canny_and_hed_conditions_sit_on_object_boundaries(scenes):
    for scene in scenes:
        edge = scene.canny > 0
        assert edge.sum() > 20
        boundary = _boundary(scene.class_map)
        near_boundary = ndimage.binary_dilation(boundary, iterations=2)
        assert (edge & near_boundary).sum() / edge.sum() >= 0.98
        # most boundary pixels away from the image border have an edge nearby
        inner = boundary.copy()
        inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
        assert (inner & ndimage.binary_dilation(edge, iterations=2)).sum() / inner.sum() >= 0.95
        hed = scene.hed.astype(float) / 255
        assert hed[boundary].mean() > 0.5
        assert hed[~ndimage.binary_dilation(boundary, iterations=3)].mean() < 0.1


def test_edges_and_soft_edges_of_a_hand_made_square():
    image = np.full((64, 64, 3), 120, dtype=np.uint8)
    image[20:40, 20:40] = (215, 40, 40)
    edge = edges(image)
    rows, cols = np.nonzero(edge)
    assert edge.sum() > 60
    # every edge pixel lies within a pixel of the square's outline (rows/cols 19.5 and 39.5)
    on_outline = (np.minimum(np.abs(rows - 19.5), np.abs(rows - 39.5)) <= 1.0) | (
        np.minimum(np.abs(cols - 19.5), np.abs(cols - 39.5)) <= 1.0
    )
    assert on_outline.all()
    assert not edge[25:35, 25:35].any() and not edge[:10].any()
    soft = soft_edges(image)
    assert soft[30, 20] > 0.9 and soft[30, 30] == 0.0 and soft[5, 5] == 0.0
    flat = np.full((64, 64, 3), 90, dtype=np.uint8)
    assert not edges(flat).any() and soft_edges(flat).max() == 0.0


def test_edges_are_the_same_at_every_size():
    small = render_scene(4, 64)
    big_image = np.repeat(np.repeat(small.image, 2, axis=0), 2, axis=1)
    big = edges(big_image)
    # the edges of the upscaled picture, downscaled, lie on the small picture's edges
    down = big.reshape(64, 2, 64, 2).any(axis=(1, 3))
    near = ndimage.binary_dilation(small.canny > 0, iterations=1)
    assert (down & near).sum() / down.sum() > 0.95


def test_render_scene_is_fast():
    import time

    render_scene(0)
    start = time.perf_counter()
    for seed in range(20):
        render_scene(seed)
    assert (time.perf_counter() - start) / 20 < 0.05  # a few ms each; generous for a loaded machine


def test_bad_arguments_name_the_value():
    with pytest.raises(DatasetError, match="seed=-1"):
        render_scene(-1)
    with pytest.raises(DatasetError, match="size=16"):
        render_scene(0, 16)
    with pytest.raises(DatasetError, match="condition_type='lineart'"):
        render_scene(0).condition("lineart")
    with pytest.raises(DatasetError, match="shape"):
        decode_class_map(np.zeros((8, 8), dtype=np.uint8))


def test_shapes_namespace_exposes_the_task_models():
    from hgc_tune.data import shapes

    assert shapes.decode_class_map is decode_class_map and shapes.estimate_depth is estimate_depth
    assert shapes.edges is edges and shapes.soft_edges is soft_edges
    assert shapes.class_map_from_seg is class_map_from_seg and shapes.NUM_CLASSES == NUM_CLASSES == 7


@pytest.fixture(scope="module")
def many_scenes():
    return [render_scene(seed) for seed in range(200)]


def test_seven_backgrounds_differ_and_every_one_is_drawn(many_scenes):
    assert list(BACKGROUNDS)[:3] == ["wood", "stone", "sand"]  # version 1's three, first
    assert len(BACKGROUNDS) >= 6
    colors = np.array([c for c, _, _ in BACKGROUNDS.values()], dtype=np.float64)
    distances = np.sqrt(((colors[:, None] - colors[None]) ** 2).sum(-1))
    assert distances[~np.eye(len(colors), dtype=bool)].min() >= 30
    saturation = (colors.max(1) - colors.min(1)) / colors.max(1)
    assert saturation.max() <= 0.3
    counts = {name: sum(s.background == name for s in many_scenes) for name in BACKGROUNDS}
    # uniform: 200 / 7 = 28.6 scenes each
    assert min(counts.values()) >= 12, counts
    for scene in many_scenes[:40]:
        assert scene.prompt.endswith(f"on a {scene.background} background")


def test_scenes_keep_the_objects_of_version_1_and_the_pixels_of_its_backgrounds():
    # Recorded from version 1 of the benchmark (three backgrounds): its background, sha256 prefixes of its
    # picture and of its objects (JSON of the SceneObject fields).
    version_1 = {
        0: ("sand", "6086bc81ca0717b9", "76c2c5f2107c277e"),
        1: ("stone", "c2b2aaad3bda27d7", "0eef3fcee806f5b2"),
        2: ("sand", "59648b02261194c8", "b1e89535f92c3dad"),
        3: ("sand", "b4ec050c371a5e50", "653b24c0b615b030"),
        4: ("sand", "eb6d873d8f8dd3bd", "77514dce293d95b1"),
        5: ("sand", "99bbc48d5e631d66", "1a9dbc82d49cbf44"),
        6: ("stone", "6624655204aae3fa", "381023367df4533f"),
        7: ("sand", "93d42d3cce0ad822", "82fa65b071a4808e"),
    }
    kept = replaced = 0
    for seed, (background, image_hash, objects_hash) in version_1.items():
        scene = render_scene(seed)
        objects = json.dumps([dataclasses.asdict(o) for o in scene.objects], sort_keys=True)
        assert hashlib.sha256(objects.encode()).hexdigest()[:16] == objects_hash
        same_pixels = hashlib.sha256(scene.image.tobytes()).hexdigest()[:16] == image_hash
        if scene.background == background:
            assert same_pixels
            kept += 1
        else:
            assert scene.background in list(BACKGROUNDS)[3:] and not same_pixels
            replaced += 1
    assert kept and replaced


def test_decoders_are_right_on_ground_truth_renders_of_every_background(many_scenes):
    """The task decoders read >= 99 % of 200 ground-truth scenes right, whatever their background."""
    class_right = depth_right = edges_right = 0
    for scene in many_scenes:
        # edges: the background's texture makes none of its own (>= 98 % of edge pixels on a boundary)
        edge = scene.canny > 0
        near_boundary = ndimage.binary_dilation(_boundary(scene.class_map), iterations=2)
        edges_right += bool((edge & near_boundary).sum() >= 0.98 * edge.sum())
        class_right += np.array_equal(decode_class_map(scene.image, smooth=0), scene.class_map)
        # depth: every object's depth read back (median over its pixels) within 0.06, background 0
        estimate = estimate_depth(scene.image, smooth=0)
        objects_right = all(
            abs(np.median(estimate[scene.class_map == o.label]) - o.depth) <= 0.06 for o in scene.objects
        )
        depth_right += objects_right and bool(np.all(estimate[scene.class_map == 0] == 0))
    assert class_right >= 0.99 * len(many_scenes)
    assert depth_right >= 0.99 * len(many_scenes)
    assert edges_right >= 0.99 * len(many_scenes)
