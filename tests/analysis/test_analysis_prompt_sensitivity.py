"""``analysis/prompt_sensitivity.py``: the prompt-only content it takes away is exactly the background phrase,
and both arms are generated from the same scenes and scored against the scenes' own prompts."""

from __future__ import annotations

import pytest

from hgc_tune.data._benchmark import split_seeds
from hgc_tune.data._shapes import BACKGROUNDS
from hgc_tune.data.shapes import render_scene


@pytest.fixture(scope="module")
def tool(analysis_script):
    return analysis_script("prompt_sensitivity")


def test_without_background_takes_away_the_background_phrase_only(tool):
    scenes = [render_scene(seed) for seed in split_seeds("validation", 64)]
    assert len({s.background for s in scenes}) >= 5
    for scene in scenes:
        stripped = tool.without_background(scene.prompt)
        assert scene.prompt == f"{stripped} on a {scene.background} background"
        assert not any(name in stripped for name in BACKGROUNDS)
    assert tool.without_background("a red circle") == "a red circle"


def test_the_background_arm_runs_at_the_same_guidance(tool):
    row = tool.measure_condition(
        "seg", samples=2, steps=2, low=1.0, confidence=0.95, samples_per_call=2, high=2.0,
        strip_background=True,
    )  # fmt: skip
    assert row["recommended_guidance"] == row["low_guidance"] == 2.0
    assert row["compared"] == "prompt without its background"
    assert len(row["per_sample_recommended"]) == len(row["per_sample_low"]) == 2
    assert row["drop"] == pytest.approx(row["score_recommended"] - row["score_low"])
