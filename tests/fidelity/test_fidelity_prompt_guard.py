"""The prompt metric of a model: the background reader for ``shapes``, a given CLIP scorer for a checkpoint,
and a warning (and an ``unguarded`` record) for a checkpoint without one."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hgc_tune.data.shapes import render_scene
from hgc_tune.errors import FidelityError, PromptUnguardedWarning
from hgc_tune.fidelity import PromptMetric, prompt_metric_for
from hgc_tune.fidelity._prompt_guard import is_real_checkpoint, prompt_fidelity

UNGUARDED = {"guarded": False, "metric": None, "model": None, "digest": None}


class StubClip:
    """What ``prompt_metric_for`` takes of a ``ClipScorer``: a source, a digest, one score per pair."""

    source, digest = "checkpoints/clip-l14", "0123456789abcdef"

    def __call__(self, images, prompts):
        return np.array([float(np.asarray(image).mean()) for image in images])


def test_presets_and_checkpoints():
    assert not is_real_checkpoint("shapes") and not is_real_checkpoint("tiny")
    assert is_real_checkpoint("runs/my-sd15") and is_real_checkpoint("owner/model")


def test_shapes_is_guarded_by_the_background_reader_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric = prompt_metric_for("shapes")
    assert metric.guarded and metric.to_json() == {
        "guarded": True,
        "metric": "background",
        "model": None,
        "digest": None,
    }
    scenes = [render_scene(seed) for seed in range(4)]
    # the soft background reading: sure of the named background on ground-truth renders
    assert metric.scores([s.image for s in scenes], [s.prompt for s in scenes]).min() > 0.9


def test_a_random_preset_is_unguarded_silently_and_a_checkpoint_with_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prompt_metric_for("tiny").to_json() == UNGUARDED
    with pytest.warns(PromptUnguardedWarning, match=r"prompt unguarded: model 'runs/sd15' .* --clip"):
        assert prompt_metric_for("runs/sd15").to_json() == UNGUARDED
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not prompt_metric_for("runs/sd15", warn=False).guarded
    with pytest.raises(FidelityError, match="unguarded"):
        PromptMetric().scores([], [])


def test_a_clip_scorer_guards_any_model_and_is_recorded():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric = prompt_metric_for("runs/sd15", StubClip())
    assert metric.to_json() == {
        "guarded": True,
        "metric": "clip",
        "model": "checkpoints/clip-l14",
        "digest": "0123456789abcdef",
    }
    assert prompt_metric_for("shapes", StubClip()).metric.name == "clip", "a given CLIP model comes first"


def test_prompt_fidelity_is_paired_and_sees_a_lost_background():
    scenes = [render_scene(seed) for seed in range(6)]
    images, prompts = [s.image for s in scenes], [s.prompt for s in scenes]
    # the policy draws sample 0's picture, with its background, for every prompt
    lost = prompt_fidelity(prompt_metric_for("shapes"), images, [images[0]] * 6, prompts, confidence=0.9)
    kept = [s.background == scenes[0].background for s in scenes]
    assert lost["full"] > 0.9 and min(lost["per_sample_full"]) > 0.9
    # where the background changed, the score drops to near 0; where it stayed, it stays high
    assert all((v > 0.9) == k for v, k in zip(lost["per_sample_policy"], kept))
    assert lost["loss"] == pytest.approx(lost["full"] - lost["policy"]) and lost["loss"] > 0.3
    assert lost["loss_upper"] >= lost["loss"] and lost["samples"] == 6 and lost["confidence"] == 0.9
    same = prompt_fidelity(prompt_metric_for("shapes"), images, images, prompts, confidence=0.9)
    assert same["loss"] == 0.0
    unscored = prompt_fidelity(prompt_metric_for("shapes"), images[:1], images[:1], ["a cat"], confidence=0.9)
    assert unscored["guarded"] and "background" in unscored["unscored"] and "loss" not in unscored
