"""Splits of the shapes benchmark, writing it as a dataset folder, and the on-disk cache of it.

Splits are disjoint ranges of scene seeds; sample ``i`` of a split written with offset ``seed`` is the scene
of seed ``start + seed + i``, and that scene seed is also the sample's generation seed:

==============  =========================  =====================================================
split           scene seeds                use
==============  =========================  =====================================================
``calibration`` ``[0, 100_000)``           profiling and policy search
``validation``  ``[100_000, 200_000)``     the held-out check of a search's candidates
``test``        ``[200_000, 300_000)``     the reported figure: never used to select a policy
``train``       ``[1_000_000, 2**31)``     training the embedded ``shapes`` model
==============  =========================  =====================================================

``heldout`` is the former name of ``validation`` (the same scenes; the ``shapes`` model's training
self-check still reads it).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from hgc_tune._atomic import atomic_folder
from hgc_tune.data._dataset import METADATA_FILE
from hgc_tune.data._shapes import BACKGROUNDS, CONDITION_TYPES, SHAPE_CLASSES, render_scene
from hgc_tune.errors import DatasetError

__all__ = [
    "GENERATOR_VERSION",
    "INFO_FILE",
    "SPLITS",
    "ShapesDatasetInfo",
    "cached_shapes_dataset",
    "shapes_cache_dir",
    "split_seeds",
    "write_shapes_dataset",
]

# Bump when a change to rendering changes the pixels of a seed: cached copies are keyed by it.
GENERATOR_VERSION = 2  # 2: seven backgrounds instead of three (hgc_tune.data._shapes.BACKGROUNDS)
INFO_FILE = "dataset_info.json"
SPLITS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "calibration": (0, 100_000),
        "validation": (100_000, 200_000),
        "test": (200_000, 300_000),
        "heldout": (100_000, 200_000),
        "train": (1_000_000, 2**31),
    }
)


def split_seeds(split: str, n: int, seed: int = 0) -> range:
    """The scene seeds of ``n`` samples of ``split`` starting at offset ``seed`` within it.

    Raises:
        DatasetError: For an unknown split, a non-positive ``n``, a negative ``seed``, or a range that runs
            past the end of the split.
    """
    if split not in SPLITS:
        raise DatasetError(f"`split` must be one of {', '.join(SPLITS)}, but got split={split!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DatasetError(f"`n` must be a positive integer, but got n={n!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"`seed` must be a non-negative integer offset, but got seed={seed!r}.")
    start, stop = SPLITS[split]
    if start + seed + n > stop:
        raise DatasetError(
            f"`seed` + `n` must stay within the {split} split's {stop - start} scenes, "
            f"but got seed={seed}, n={n}."
        )
    return range(start + seed, start + seed + n)


@dataclass(frozen=True)
class ShapesDatasetInfo:
    """What :func:`write_shapes_dataset` wrote (also stored as ``dataset_info.json`` in the folder).

    Attributes:
        path: The dataset folder.
        split: The split.
        seed: The offset within the split.
        first_scene_seed: Scene seed of sample 0.
        n: Number of scenes.
        size: Image side in pixels.
        conditions: Condition types written, one row each per scene.
        rows: Rows in ``metadata.jsonl`` (``n * len(conditions)``).
        class_counts: Objects per class name over all scenes.
        background_counts: Scenes per background name.
        version: :data:`GENERATOR_VERSION`.
    """

    path: str
    split: str
    seed: int
    first_scene_seed: int
    n: int
    size: int
    conditions: tuple[str, ...]
    rows: int
    class_counts: dict[str, int]
    background_counts: dict[str, int] = field(default_factory=dict)
    version: int = GENERATOR_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = asdict(self)
        data["conditions"] = list(self.conditions)
        return data


def _check_conditions(conditions: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(conditions)
    unknown = [c for c in chosen if c not in CONDITION_TYPES]
    if not chosen or unknown or len(set(chosen)) != len(chosen):
        raise DatasetError(
            f"`conditions` must be distinct names among {', '.join(CONDITION_TYPES)}, but got "
            f"conditions={','.join(chosen)!r}."
        )
    return chosen


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def write_shapes_dataset(
    out: str | Path,
    *,
    n: int = 64,
    seed: int = 0,
    size: int = 64,
    split: str = "calibration",
    conditions: Iterable[str] = CONDITION_TYPES,
    overwrite: bool = False,
    progress: bool = False,
) -> ShapesDatasetInfo:
    """Write ``n`` shapes scenes of a split as a dataset folder, atomically.

    The folder gets ``metadata.jsonl`` (one row per scene per condition type, scene-major), the pictures
    under ``image/00000.png`` and the conditions under ``<condition>/00000.png`` (seg in colour, the others
    grey), and ``dataset_info.json``. Everything is written into a temporary folder next to ``out`` and
    renamed into place at the end, so an interrupted run leaves no half-written dataset. The bytes depend
    only on the arguments.

    Args:
        out: Target folder; must not exist, be empty, or (with ``overwrite``) be a dataset folder.
        n: Number of scenes.
        seed: Offset within the split (see :func:`split_seeds`).
        size: Image side in pixels (32..256).
        split: ``calibration``, ``heldout`` or ``train``.
        conditions: Condition types to write.
        overwrite: Replace an existing dataset folder at ``out``.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        The :class:`ShapesDatasetInfo`.

    Raises:
        DatasetError: For bad arguments, or an ``out`` that holds something other than a dataset
            (never deleted).

    Example:
        >>> info = write_shapes_dataset("/tmp/shapes-cal", n=8, overwrite=True)  # doctest: +SKIP
        >>> info.rows  # doctest: +SKIP
        32
    """
    seeds = split_seeds(split, n, seed)
    chosen = _check_conditions(conditions)
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 256:
        raise DatasetError(f"`size` must be an integer in [32, 256], but got size={size!r}.")
    out = Path(out)
    _check_target(out, overwrite)
    # Filled beside `out` and renamed into place; the temporary folders of killed runs (this version's, and
    # the `.NAME.tmp-PID-…` ones of older versions) are removed first.
    with atomic_folder(
        out, before_replace=lambda target: _check_target(target, overwrite), legacy_marks=(".tmp-",)
    ) as tmp:
        for folder in ("image", *chosen):
            (tmp / folder).mkdir()
        class_counts = dict.fromkeys(SHAPE_CLASSES[1:], 0)
        background_counts = dict.fromkeys(BACKGROUNDS, 0)
        with (tmp / METADATA_FILE).open("w", encoding="utf-8") as metadata:
            bar = tqdm(seeds, desc=f"shapes {split}", unit="scene", disable=not progress, file=sys.stderr)
            for i, scene_seed in enumerate(bar):
                scene = render_scene(scene_seed, size)
                name = f"{i:05d}.png"
                _save_png(scene.image, tmp / "image" / name)
                for condition in chosen:
                    _save_png(getattr(scene, condition), tmp / condition / name)
                    row = {
                        "condition": f"{condition}/{name}",
                        "condition_type": condition,
                        "image": f"image/{name}",
                        "prompt": scene.prompt,
                        "seed": scene_seed,
                    }
                    metadata.write(json.dumps(row, sort_keys=True) + "\n")
                for obj in scene.objects:
                    class_counts[obj.shape] += 1
                background_counts[scene.background] += 1
        info = ShapesDatasetInfo(
            path=str(out),
            split=split,
            seed=seed,
            first_scene_seed=seeds.start,
            n=n,
            size=size,
            conditions=chosen,
            rows=n * len(chosen),
            class_counts=class_counts,
            background_counts=background_counts,
        )
        stored = {k: v for k, v in info.to_dict().items() if k != "path"}  # the folder may move
        (tmp / INFO_FILE).write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return info


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists() or _is_empty_dir(out):
        return
    if not overwrite:
        raise DatasetError(
            f"`out` {str(out)!r} already exists and is not empty; pass --overwrite to replace it."
        )
    if not (out.is_dir() and (out / METADATA_FILE).is_file()):
        raise DatasetError(
            f"`out` {str(out)!r} is not a dataset folder (no {METADATA_FILE}); refusing to replace it."
        )


def shapes_cache_dir() -> Path:
    """Where generated shapes splits are cached.

    ``$HGC_TUNE_CACHE`` if set, else ``$XDG_CACHE_HOME/hgc-tune``, else ``~/.cache/hgc-tune``.
    """
    if os.environ.get("HGC_TUNE_CACHE"):
        return Path(os.environ["HGC_TUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hgc-tune"


def cached_shapes_dataset(*, split: str = "calibration", n: int = 64, seed: int = 0, size: int = 64) -> Path:
    """The folder of a generated shapes split, generating it on first use.

    Copies live under :func:`shapes_cache_dir` (or the system temp folder when that is not writable),
    keyed by generator version, split, offset, count and size, and are reused as they are: generation is
    deterministic and a folder only appears once complete (atomic rename).

    Returns:
        The dataset folder (all four condition types).

    Raises:
        DatasetError: For bad arguments.
    """
    split_seeds(split, n, seed)  # validate before touching the disk
    name = f"{split}-seed{seed}-n{n}-px{size}"
    for base in (
        shapes_cache_dir(),
        Path(tempfile.gettempdir()) / f"hgc-tune-{getattr(os, 'getuid', lambda: 0)()}",
    ):
        folder = base / f"shapes-v{GENERATOR_VERSION}" / name
        if (folder / METADATA_FILE).is_file():
            return folder
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            write_shapes_dataset(folder, n=n, seed=seed, size=size, split=split)
        except PermissionError:
            continue
        except DatasetError:
            if (folder / METADATA_FILE).is_file():  # a concurrent writer finished first
                return folder
            raise
        return folder
    raise DatasetError(
        f"cannot write the shapes cache under {str(shapes_cache_dir())!r} nor the temp folder; "
        "set HGC_TUNE_CACHE to a writable folder."
    )
