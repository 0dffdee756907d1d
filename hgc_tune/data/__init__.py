"""Datasets: the folder format with its checking, lazy loader, and the built-in synthetic shapes benchmark.

- :class:`Dataset` / :class:`Sample` / :func:`open_dataset`: a folder with ``metadata.jsonl`` (see
  :mod:`hgc_tune.data._dataset` for the fields and the skip reasons), or ``"shapes"``.
- :func:`write_shapes_dataset`: the shapes benchmark written as a dataset folder; its splits are disjoint
  seed ranges (calibration ``[0, 100_000)``, validation ``[100_000, 200_000)``, test ``[200_000, 300_000)``,
  train ``[1_000_000, 2**31)``; ``shapes.SPLITS``).
- :mod:`hgc_tune.data.shapes`: the shapes benchmark's names in one namespace (the scene renderer, the
  decoders that read a generated picture back for the task metrics, the class tables and the splits).
"""

from __future__ import annotations

from hgc_tune.data import shapes
from hgc_tune.data._benchmark import write_shapes_dataset
from hgc_tune.data._dataset import Dataset, Sample
from hgc_tune.data._open import open_dataset

__all__ = ["Dataset", "Sample", "open_dataset", "shapes", "write_shapes_dataset"]
