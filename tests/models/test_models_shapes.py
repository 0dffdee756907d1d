"""`shapes_checkpoint`: where the shipped weights are looked up, and its errors (the library's side of the
embedded default; the trainer in ``hgc_tune.zoo`` re-exports these names)."""

from __future__ import annotations

import pytest

from hgc_tune.errors import ModelLoadError, ModelNotFoundError
from hgc_tune.models._shapes import (
    SHAPES_CONDITIONS,
    WEIGHTS_DIR,
    ShapesWeightsMissingError,
    UnknownConditionError,
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
    assert WEIGHTS_DIR.parts[-3:] == ("hgc_tune", "zoo", "weights")


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
    assert "python -m hgc_tune.zoo.train --out" in message
    assert isinstance(info.value, ModelNotFoundError)


def test_missing_controlnet_only_is_reported(tmp_path):
    _fake_weights(tmp_path, conditions=("seg",))
    assert shapes_checkpoint("seg", weights_dir=tmp_path) == (tmp_path / "base", tmp_path / "controlnet-seg")
    with pytest.raises(ShapesWeightsMissingError, match="controlnet-depth"):
        shapes_checkpoint("depth", weights_dir=tmp_path)


def test_shipped_location_message_is_repository_relative():
    if (WEIGHTS_DIR / "base" / "model_index.json").is_file():
        pytest.skip("the shapes weights are shipped")
    with pytest.raises(ShapesWeightsMissingError, match="not in hgc_tune/zoo/weights"):
        shapes_checkpoint("seg")


def test_load_pipeline_shapes_requires_a_condition():
    from hgc_tune.models import load_pipeline

    with pytest.raises(UnknownConditionError, match="condition=None"):
        load_pipeline("shapes")


def test_the_trainer_re_exports_the_library_names():
    import hgc_tune.zoo as zoo
    from hgc_tune.models import _shapes

    assert all(getattr(zoo, name) is getattr(_shapes, name) for name in zoo.__all__)
