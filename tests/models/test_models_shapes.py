"""`shapes_checkpoint`: where the shipped weights are looked up, and its errors (the library's side of the
embedded default; the trainer is the repository's ``training/shapes/``, outside the package)."""

from __future__ import annotations

import pytest

from hgc_tune.errors import ModelLoadError, ModelNotFoundError
from hgc_tune.models._shapes import (
    SHAPES_CONDITIONS,
    WEIGHTS_DIR,
    ShapesWeightsMissingError,
    UnknownConditionError,
    _display,
    shapes_checkpoint,
)


def _fake_weights(root, conditions=SHAPES_CONDITIONS):
    (root / "base").mkdir(parents=True)
    (root / "base" / "model_index.json").write_text("{}")
    for condition in conditions:
        (root / f"controlnet-{condition}").mkdir()
        (root / f"controlnet-{condition}" / "config.json").write_text("{}")


def test_conditions_are_the_four_shapes_types():
    assert SHAPES_CONDITIONS == ("seg", "canny", "hed", "depth")
    assert WEIGHTS_DIR.parts[-4:] == ("hgc_tune", "models", "weights", "shapes")


def test_condition_is_required():
    with pytest.raises(UnknownConditionError) as info:
        shapes_checkpoint(None)
    assert str(info.value) == (
        "`condition` must be one of seg, canny, hed, depth for the shapes preset, but got condition=None."
    )
    assert isinstance(info.value, ModelLoadError)


def test_unknown_condition_is_named():
    with pytest.raises(UnknownConditionError, match="but got condition='lineart'"):
        shapes_checkpoint("lineart")


def test_missing_weights_say_how_to_train_them(tmp_path):
    with pytest.raises(ShapesWeightsMissingError) as info:
        shapes_checkpoint("seg", weights_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"the shapes weights are not in {tmp_path}")
    assert "python -m training.shapes.train --out" in message
    assert isinstance(info.value, ModelNotFoundError)


def test_missing_controlnet_only_is_reported(tmp_path):
    _fake_weights(tmp_path, conditions=("seg",))
    assert shapes_checkpoint("seg", weights_dir=tmp_path) == (tmp_path / "base", tmp_path / "controlnet-seg")
    with pytest.raises(ShapesWeightsMissingError, match="controlnet-depth"):
        shapes_checkpoint("depth", weights_dir=tmp_path)


def test_shipped_location_message_is_repository_relative():
    assert _display(WEIGHTS_DIR / "base") == "hgc_tune/models/weights/shapes/base"
    if (WEIGHTS_DIR / "base" / "model_index.json").is_file():
        pytest.skip("the shapes weights are shipped")
    with pytest.raises(ShapesWeightsMissingError, match="not in hgc_tune/models/weights/shapes"):
        shapes_checkpoint("seg")


def test_load_pipeline_shapes_requires_a_condition():
    from hgc_tune.models import load_pipeline

    with pytest.raises(UnknownConditionError, match="condition=None"):
        load_pipeline("shapes")


def test_the_weights_folder_holds_data_and_no_code():
    files = [p for p in WEIGHTS_DIR.parent.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files and not [p for p in files if p.suffix in (".py", ".pyc")]
    assert not (WEIGHTS_DIR.parents[1] / "zoo").exists()  # the trainer's former place inside the package
