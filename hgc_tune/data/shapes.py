"""The shapes benchmark as one namespace: ``from hgc_tune.data import shapes``.

Re-exports the scene renderer, the decoders that read a generated picture back (the task models of the
fidelity metrics), the class tables and the splits; see :mod:`hgc_tune.data._shapes` and
:mod:`hgc_tune.data._benchmark` for the design.
"""

from __future__ import annotations

from hgc_tune.data._benchmark import (
    GENERATOR_VERSION,
    SPLITS,
    cached_shapes_dataset,
    split_seeds,
    write_shapes_dataset,
)
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
    "GENERATOR_VERSION",
    "NUM_CLASSES",
    "OBJECT_COLORS",
    "SEG_PALETTE",
    "SHAPE_CLASSES",
    "SPLITS",
    "TEXTURE_NAMES",
    "Scene",
    "SceneObject",
    "cached_shapes_dataset",
    "class_map_from_seg",
    "decode_class_map",
    "edges",
    "estimate_depth",
    "render_scene",
    "soft_edges",
    "split_seeds",
    "write_shapes_dataset",
]
