"""Datasets: the folder format with its checking, lazy loader, and the built-in synthetic shapes benchmark.

- :class:`Dataset` / :class:`Sample` / :func:`open_dataset`: a folder with ``metadata.jsonl`` (see
  :mod:`hgc_tune.data._dataset` for the fields and the skip reasons), or ``"shapes"``.
- :func:`render_scene` and the decoders (:func:`decode_class_map`, :func:`class_map_from_seg`,
  :func:`estimate_depth`, :func:`edges`, :func:`soft_edges`): the shapes benchmark in memory, and the
  functions that read a generated picture back for the task metrics.
- :func:`write_shapes_dataset` / :data:`SPLITS`: the benchmark written as a dataset folder; splits are
  disjoint seed ranges (calibration ``[0, 100_000)``, heldout ``[100_000, 200_000)``, train
  ``[1_000_000, 2**31)``).
- :mod:`hgc_tune.data.shapes`: the shapes benchmark's names in one namespace.
"""

from __future__ import annotations

from hgc_tune.data import shapes
from hgc_tune.data._benchmark import (
    GENERATOR_VERSION,
    INFO_FILE,
    SPLITS,
    ShapesDatasetInfo,
    cached_shapes_dataset,
    shapes_cache_dir,
    split_seeds,
    write_shapes_dataset,
)
from hgc_tune.data._dataset import (
    FIELDS,
    METADATA_FILE,
    REQUIRED_FIELDS,
    SKIP_REASONS,
    Dataset,
    MultiSample,
    Sample,
)
from hgc_tune.data._open import DEFAULT_SHAPES_SCENES, SHAPES_REF, open_dataset
from hgc_tune.data._preview import shapes_preview
from hgc_tune.data._shapes import (
    BACKGROUNDS,
    COLOR_NAMES,
    CONDITION_TYPES,
    NUM_CLASSES,
    OBJECT_COLORS,
    SEG_PALETTE,
    SHAPE_CLASSES,
    TEXTURE_NAMES,
    Scene,
    SceneObject,
    class_map_from_seg,
    decode_class_map,
    edges,
    estimate_depth,
    render_scene,
    soft_edges,
)

__all__ = [
    "BACKGROUNDS",
    "COLOR_NAMES",
    "CONDITION_TYPES",
    "DEFAULT_SHAPES_SCENES",
    "FIELDS",
    "GENERATOR_VERSION",
    "INFO_FILE",
    "METADATA_FILE",
    "NUM_CLASSES",
    "OBJECT_COLORS",
    "REQUIRED_FIELDS",
    "SEG_PALETTE",
    "SHAPES_REF",
    "SHAPE_CLASSES",
    "SKIP_REASONS",
    "SPLITS",
    "TEXTURE_NAMES",
    "Dataset",
    "MultiSample",
    "Sample",
    "Scene",
    "SceneObject",
    "ShapesDatasetInfo",
    "shapes",
    "cached_shapes_dataset",
    "class_map_from_seg",
    "decode_class_map",
    "edges",
    "estimate_depth",
    "open_dataset",
    "render_scene",
    "shapes_cache_dir",
    "shapes_preview",
    "soft_edges",
    "split_seeds",
    "write_shapes_dataset",
]
