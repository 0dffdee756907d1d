"""Each model's recommended guidance scale: the shapes weights' measured value, the pipelines' defaults, and
``load_pipeline`` noting it on the pipeline."""

from __future__ import annotations

import json

import pytest

from hgc_tune.errors import ModelLoadError
from hgc_tune.models import _shapes as shapes_module
from hgc_tune.models import load_pipeline, pipeline_guidance, recommended_guidance
from hgc_tune.models._guidance import weights_recommended_guidance


@pytest.fixture
def shapes_weights(tmp_path, monkeypatch):
    """A shapes weights folder (the shipped base and seg ControlNet, linked) whose training.json the test
    writes: ``write(record)``."""
    root = tmp_path / "shapes"
    root.mkdir()
    for name in ("base", "controlnet-seg"):
        (root / name).symlink_to(shapes_module.WEIGHTS_DIR / name, target_is_directory=True)
    monkeypatch.setattr(shapes_module, "WEIGHTS_DIR", root)

    def write(record: dict) -> None:
        (root / "training.json").write_text(json.dumps(record))

    return write


def test_shapes_reads_the_measured_value_from_training_json(shapes_weights):
    shapes_weights({"recommended_guidance": 3.0, "self_check": {"recommended_guidance": 7.5}})
    guidance = recommended_guidance("shapes")
    assert guidance.scale == 3.0 and "training.json" in guidance.source
    pipe = load_pipeline("shapes", condition="seg")
    assert pipeline_guidance(pipe) == guidance
    shapes_weights({"recommended_guidance": 2})
    assert recommended_guidance("shapes").scale == 2.0


def test_unmeasured_shapes_weights_fall_back_to_the_pipeline_default(shapes_weights):
    # the self-check's own (unmeasured) value is not read: the measurement tool is the one writer
    shapes_weights({"self_check": {"recommended_guidance": 4.0}})
    guidance = recommended_guidance("shapes")
    assert guidance.scale == 7.5 and guidance.source == "StableDiffusionControlNetPipeline's default"


@pytest.mark.parametrize("value", [0, -1.0, "3", True, [3.0]])
def test_a_bad_recorded_value_is_refused_naming_the_file(shapes_weights, value):
    shapes_weights({"recommended_guidance": value})
    with pytest.raises(ModelLoadError, match=r"recommended_guidance in .*training\.json.*finite number > 0"):
        recommended_guidance("shapes")


def test_other_models_use_their_pipeline_default():
    assert recommended_guidance("sd15").scale == 7.5
    assert recommended_guidance("tiny").scale == 7.5
    # diffusers' SDXL ControlNet pipelines default to 5.0
    assert recommended_guidance("sdxl").scale == 5.0
    assert recommended_guidance("tiny-sdxl").source == "StableDiffusionXLControlNetPipeline's default"
    assert recommended_guidance("some/checkpoint").scale == 7.5


def test_load_pipeline_notes_the_value_on_every_pipeline(tiny_pipe, tiny_sdxl_pipe):
    assert pipeline_guidance(tiny_pipe).scale == 7.5
    assert pipeline_guidance(tiny_sdxl_pipe).scale == 5.0
    img2img = load_pipeline("tiny-sdxl", task="img2img")
    assert pipeline_guidance(img2img).source == "StableDiffusionXLControlNetImg2ImgPipeline's default"


def test_weights_without_a_training_record_have_no_measured_value(tmp_path):
    assert weights_recommended_guidance(tmp_path) is None
    (tmp_path / "training.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="JSON object"):
        weights_recommended_guidance(tmp_path)
