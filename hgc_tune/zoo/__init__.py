"""The embedded default model: a small controllable SD-style model trained on the shapes benchmark.

:func:`shapes_checkpoint` finds the shipped weights (``hgc_tune/zoo/weights``) for the ``shapes`` preset;
``python -m hgc_tune.zoo.train --out DIR`` trains them (see :mod:`hgc_tune.zoo.train`).
"""

from __future__ import annotations

from hgc_tune.zoo._checkpoint import (
    SHAPES_CONDITIONS,
    WEIGHTS_DIR,
    ShapesWeightsMissingError,
    UnknownConditionError,
    shapes_checkpoint,
)

__all__ = [
    "SHAPES_CONDITIONS",
    "WEIGHTS_DIR",
    "ShapesWeightsMissingError",
    "UnknownConditionError",
    "shapes_checkpoint",
]
