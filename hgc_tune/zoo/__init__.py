"""The trainer of the embedded default model: a small controllable SD-style model on the shapes benchmark.

``python -m hgc_tune.zoo.train --out DIR`` trains the weights (see :mod:`hgc_tune.zoo.train`); they ship in
``hgc_tune/zoo/weights``. The library finds them through :mod:`hgc_tune.models` (``load_pipeline("shapes")``)
and never imports this package; the names below are re-exported from there for the trainer's users.
"""

from __future__ import annotations

from hgc_tune.models._shapes import WEIGHTS_DIR, shapes_checkpoint

__all__ = ["WEIGHTS_DIR", "shapes_checkpoint"]
