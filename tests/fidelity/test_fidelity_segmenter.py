"""Loading a semantic-segmentation model from a local directory (a tiny random Segformer saved here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hgc_tune.errors import ModelLoadError, ModelNotFoundError
from hgc_tune.fidelity import TaskEvaluator, load_segmenter
from hgc_tune.fidelity._task_models import Segmenter

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

NUM_LABELS = 5


@pytest.fixture(scope="module")
def tiny_segformer_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    config = transformers.SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        num_attention_heads=[1, 1],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=NUM_LABELS,
    )
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    processor = transformers.SegformerImageProcessor(size={"height": 32, "width": 32})
    d = tmp_path_factory.mktemp("segformer")
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d, model, processor


def test_load_segmenter_outputs_the_models_class_map(tiny_segformer_dir: tuple[Path, object, object]) -> None:
    path, model, processor = tiny_segformer_dir
    seg = load_segmenter(path)
    assert isinstance(seg, Segmenter)
    image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    class_map = seg(image)
    assert class_map.shape == (48, 40)
    assert class_map.dtype == np.int64
    assert class_map.min() >= 0 and class_map.max() < NUM_LABELS
    # the same as running the in-memory model by hand: logits upsampled to the image, argmax over labels
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    up = torch.nn.functional.interpolate(logits, size=(48, 40), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(class_map, up.argmax(dim=1)[0].numpy())
    # deterministic
    np.testing.assert_array_equal(seg(image), class_map)


def test_loaded_segmenter_in_seg_evaluator(tiny_segformer_dir: tuple[Path, object, object]) -> None:
    path, _, _ = tiny_segformer_dir
    seg = load_segmenter(path)
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    # the condition decodes to exactly what the segmenter predicts, so the score is perfect
    expected = seg(image)
    ev = TaskEvaluator("seg", segmenter=seg, condition_class_map=lambda condition: expected)
    assert ev.score(image.astype(np.float32) / 255.0, image) == 1.0


def test_load_segmenter_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="is not a directory"):
        load_segmenter(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="cannot load a semantic-segmentation model"):
        load_segmenter(tmp_path)
