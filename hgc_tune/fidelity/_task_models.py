"""Pluggable task models that turn a generated image into the map a task metric compares.

A task model is any callable on an ``H×W×3`` uint8 RGB image. The built-ins read the synthetic "shapes"
benchmark (``hgc_tune.data.shapes``), where outputs are decoded by their known colours and renderings; a
real semantic-segmentation checkpoint saved locally in the transformers format can be loaded with
:func:`load_segmenter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from hgc_tune.errors import FidelityError, ModelLoadError, ModelNotFoundError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "ConditionDecoder",
    "DepthEstimator",
    "EdgeDetector",
    "Segmenter",
    "SoftEdgeDetector",
    "TransformersSegmenter",
    "load_segmenter",
    "shapes_task_models",
]


@runtime_checkable
class Segmenter(Protocol):
    """A semantic segmenter: ``H×W×3`` uint8 RGB image → ``H×W`` integer class map.

    Its class ids must be the ids the condition's class map uses (for the shapes benchmark,
    ``hgc_tune.data.shapes`` ids).
    """

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class DepthEstimator(Protocol):
    """A monocular depth estimator: ``H×W×3`` uint8 RGB image → ``H×W`` float depth in ``[0, 1]``,
    on the scale (and near/far direction) of the depth conditions."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class EdgeDetector(Protocol):
    """A binary edge detector (Canny): ``H×W×3`` uint8 RGB image → ``H×W`` bool edge map."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class SoftEdgeDetector(Protocol):
    """A soft-edge detector (HED / lineart): ``H×W×3`` uint8 RGB image → ``H×W`` float map in ``[0, 1]``."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class ConditionDecoder(Protocol):
    """Turns a segmentation condition image (``H×W×3`` uint8) into its ``H×W`` integer class map."""

    def __call__(self, condition: np.ndarray) -> np.ndarray: ...


def _shapes_module() -> ModuleType:
    try:
        from hgc_tune.data import shapes
    except ImportError as e:
        raise FidelityError(
            "the built-in task models need `hgc_tune.data.shapes`, which cannot be imported "
            f"({e}); pass your own segmenter / depth_estimator / edge_detector / soft_edge_detector."
        ) from e
    return shapes


def shapes_task_models() -> dict[str, Any]:
    """The shapes benchmark's task models, by role.

    Keys: ``segmenter`` (``decode_class_map``), ``condition_class_map`` (``class_map_from_seg``),
    ``depth_estimator`` (``estimate_depth``), ``edge_detector`` (``edges``, the same Canny that made the
    canny conditions) and ``soft_edge_detector`` (``soft_edges``).

    Raises:
        FidelityError: ``hgc_tune.data.shapes`` cannot be imported.
    """
    shapes = _shapes_module()
    return {
        "segmenter": shapes.decode_class_map,
        "condition_class_map": shapes.class_map_from_seg,
        "depth_estimator": shapes.estimate_depth,
        "edge_detector": shapes.edges,
        "soft_edge_detector": shapes.soft_edges,
    }


class TransformersSegmenter:
    """A :class:`Segmenter` backed by a transformers semantic-segmentation model and its image processor.

    The class map is the processor's ``post_process_semantic_segmentation`` at the input's resolution, so
    it lines up with the condition pixel for pixel. Class ids are the model's label ids.

    Args:
        model: an ``AutoModelForSemanticSegmentation`` model (e.g. Segformer, UperNet).
        processor: the matching image processor.
        device: where the model runs.
    """

    def __init__(self, model: Any, processor: Any, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import torch

        from hgc_tune.fidelity._metrics import as_uint8_image

        img = as_uint8_image(image)
        inputs = self.processor(images=img, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
        with torch.inference_mode():
            outputs = self.model(pixel_values=pixel_values)
        seg = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[img.shape[:2]])[0]
        return seg.cpu().numpy().astype(np.int64)


def load_segmenter(path: str | Path, *, device: str = "cpu") -> TransformersSegmenter:
    """Load a semantic-segmentation model and its image processor from a local directory.

    The directory is what ``model.save_pretrained(d)`` and ``processor.save_pretrained(d)`` write; nothing is
    downloaded (``local_files_only=True``).

    Args:
        path: the local model directory.
        device: where the model runs.

    Raises:
        ModelNotFoundError: ``path`` is not a directory.
        ModelLoadError: the directory holds no loadable model or image processor.

    Example:
        >>> seg = load_segmenter("checkpoints/segformer-b0-ade")  # doctest: +SKIP
        >>> class_map = seg(image)  # H×W int64  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelNotFoundError(f"segmenter path={str(p)!r} is not a directory.")
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    try:
        processor = AutoImageProcessor.from_pretrained(p, local_files_only=True)
        model = AutoModelForSemanticSegmentation.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(
            f"cannot load a semantic-segmentation model with its image processor from path={str(p)!r}: {e}"
        ) from e
    return TransformersSegmenter(model, processor, device=device)
