"""Each model's recommended classifier-free guidance scale: the one place that names it.

"Full compute" is the model run as it should be run, so every reference a policy is measured against is
generated at this scale unless the user asks for another (``--guidance-scale``):

- ``shapes`` (the embedded model) and any folder of shapes weights: the value measured on those weights and
  stored with them, ``recommended_guidance`` in their ``training.json``. Its one writer is
  ``analysis/recommend_guidance.py --weights DIR --write`` (full compute over a grid of scales, the best mean
  task metric among the scales whose prompt adherence is within a point of the best). Weights it has not
  measured yet fall back to the pipeline's default below.
- Every other model (``sd15``, ``sdxl``, the random test presets, local checkpoints and hub ids): the default
  of the diffusers pipeline class it loads as: 7.5 for the SD1.5 ControlNet pipelines, 5.0 for the SDXL ones.

:func:`~hgc_tune.models.load_pipeline` notes the model's value on the pipeline it returns;
:func:`pipeline_guidance` reads it back (or the pipeline class's default for a pipeline built elsewhere).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hgc_tune._json import load_json_file
from hgc_tune.errors import ModelLoadError

__all__ = [
    "DEFAULT_PIPELINE_CLASS",
    "RECOMMENDED_GUIDANCE_KEY",
    "TRAINING_FILE",
    "RecommendedGuidance",
    "pipeline_default_guidance",
    "pipeline_guidance",
    "recommended_guidance",
    "record_guidance",
    "weights_recommended_guidance",
]

# The file beside a shapes model's weights that records its training and its recommended guidance.
TRAINING_FILE = "training.json"
RECOMMENDED_GUIDANCE_KEY = "recommended_guidance"
DEFAULT_PIPELINE_CLASS = "StableDiffusionControlNetPipeline"
# What load_pipeline notes on a pipeline (a RecommendedGuidance).
_ATTR = "_hgc_recommended_guidance"


@dataclass(frozen=True)
class RecommendedGuidance:
    """A model's recommended guidance scale and where it comes from (``source``, in words)."""

    scale: float
    source: str

    def describe(self) -> str:
        """``7.5 (StableDiffusionControlNetPipeline's default)``."""
        return f"{self.scale:g} ({self.source})"


def pipeline_default_guidance(pipeline_class: str | type) -> float:
    """The ``guidance_scale`` default of a diffusers pipeline class's ``__call__`` (7.5 for SD1.5's ControlNet
    pipelines, 5.0 for SDXL's).

    Example:
        >>> pipeline_default_guidance("StableDiffusionXLControlNetPipeline")
        5.0
    """
    cls: type
    if isinstance(pipeline_class, str):
        import diffusers

        cls = getattr(diffusers, pipeline_class)
    else:
        cls = pipeline_class
    default = inspect.signature(cls.__call__).parameters["guidance_scale"].default
    return float(default)


def weights_recommended_guidance(weights_dir: str | Path) -> float | None:
    """The recommended guidance recorded in a shapes weights folder's ``training.json``; ``None`` when the
    file or the value is not there (weights not measured yet).

    Raises:
        ModelLoadError: The recorded value is not a finite number > 0, or the file is no JSON object.
    """
    path = Path(weights_dir) / TRAINING_FILE
    if not path.is_file():
        return None
    record = load_json_file(path, what="training record", error=ModelLoadError)
    if not isinstance(record, dict):
        raise ModelLoadError(f"training record {str(path)!r} must hold a JSON object.")
    value = record.get(RECOMMENDED_GUIDANCE_KEY)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ModelLoadError(
            f"{RECOMMENDED_GUIDANCE_KEY} in {str(path)!r} must be a finite number > 0, but got {value!r}; "
            "measure it again with `python analysis/recommend_guidance.py --weights DIR --write`."
        )
    return float(value)


def recommended_guidance(model: str, *, pipeline_class: str | type | None = None) -> RecommendedGuidance:
    """The recommended guidance scale of ``model`` (a preset name, a local folder or a hub id).

    Args:
        model: As :func:`~hgc_tune.models.load_pipeline` takes it.
        pipeline_class: The diffusers pipeline class the model loads as, when known (its ``guidance_scale``
            default is the value of every model but ``shapes``); default: the preset's, else SD1.5's.

    Raises:
        ModelLoadError: The shapes weights record a value that is no finite number > 0.

    Example:
        >>> recommended_guidance("sd15").scale
        7.5
    """
    from hgc_tune.models._presets import PIPELINE_CLASSES

    if model == "shapes":
        from hgc_tune.models._shapes import WEIGHTS_DIR

        measured = weights_recommended_guidance(WEIGHTS_DIR)
        if measured is not None:
            return RecommendedGuidance(measured, f"measured on the shapes weights, {TRAINING_FILE}")
    cls = pipeline_class or PIPELINE_CLASSES.get(model, DEFAULT_PIPELINE_CLASS)
    name = cls if isinstance(cls, str) else cls.__name__
    return RecommendedGuidance(pipeline_default_guidance(cls), f"{name}'s default")


def record_guidance(pipe: Any, guidance: RecommendedGuidance) -> None:
    """Note ``guidance`` on ``pipe`` as its model's recommended scale (``load_pipeline`` calls this)."""
    setattr(pipe, _ATTR, guidance)


def pipeline_guidance(pipe: Any) -> RecommendedGuidance:
    """The recommended guidance scale of the model ``pipe`` holds: what ``load_pipeline`` noted on it, else
    the default of its pipeline class.

    Example:
        >>> from hgc_tune.models import load_pipeline
        >>> pipeline_guidance(load_pipeline("tiny")).scale
        7.5
    """
    noted = getattr(pipe, _ATTR, None)
    if isinstance(noted, RecommendedGuidance):
        return noted
    return RecommendedGuidance(pipeline_default_guidance(type(pipe)), f"{type(pipe).__name__}'s default")
