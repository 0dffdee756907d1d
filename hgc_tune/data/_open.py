"""One entry point for both dataset kinds: the built-in shapes benchmark or a dataset folder."""

from __future__ import annotations

from pathlib import Path

from hgc_tune.data._benchmark import cached_shapes_dataset
from hgc_tune.data._dataset import Dataset
from hgc_tune.errors import DatasetError

__all__ = ["DEFAULT_SHAPES_SCENES", "SHAPES_REF", "open_dataset"]

SHAPES_REF = "shapes"
DEFAULT_SHAPES_SCENES = 64


def open_dataset(
    ref: str | Path,
    *,
    condition_type: str | None = None,
    split: str = "calibration",
    limit: int | None = None,
    strict: bool = False,
    seed: int = 0,
    size: int = 64,
) -> Dataset:
    """Open the shapes benchmark or a dataset folder.

    ``ref == "shapes"`` (the string; pass ``"./shapes"`` for a folder of that name) generates, or reuses
    from the cache, ``limit`` scenes (default 64) of ``split`` at offset ``seed`` and ``size`` pixels, with
    all four condition types, then filters them like a folder. Any other ``ref`` is a dataset folder, for
    which ``split``, ``seed`` and ``size`` are ignored.

    Args:
        ref: ``"shapes"`` or a dataset folder.
        condition_type: Keep only samples of this condition type.
        split: Shapes split: ``calibration``, ``validation`` (formerly ``heldout``), ``test`` or ``train``.
        limit: Keep at most this many samples (for shapes, also the number of scenes generated).
        strict: Raise on the first bad row instead of skipping it.
        seed: Shapes offset within the split.
        size: Shapes image side in pixels.

    Returns:
        The :class:`Dataset`.

    Raises:
        DatasetError: For bad arguments, a missing folder, or (``strict``) a bad row.

    Example:
        >>> dataset = open_dataset("shapes", condition_type="seg", limit=4)  # doctest: +SKIP
        >>> len(dataset), dataset[0].condition_type  # doctest: +SKIP
        (4, 'seg')
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"`limit` must be a positive integer or None, but got limit={limit!r}.")
    if isinstance(ref, str) and ref == SHAPES_REF:
        n = DEFAULT_SHAPES_SCENES if limit is None else limit
        folder = cached_shapes_dataset(split=split, n=n, seed=seed, size=size)
        return Dataset.open(folder, condition_type=condition_type, limit=limit, strict=strict)
    return Dataset.open(ref, condition_type=condition_type, limit=limit, strict=strict)
