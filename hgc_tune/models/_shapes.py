"""Where the ``shapes`` preset's weights live: the library's side of the embedded default model.

The weights ship inside the package at ``hgc_tune/models/weights/shapes`` (data only, no code beside them);
the trainer that makes them lives outside the package, in the repository's ``training/shapes/`` script
folder (``python -m training.shapes.train`` from the repository root), and imports the library, never the
other way round.
"""

from __future__ import annotations

from pathlib import Path

from hgc_tune.errors import ShapesWeightsMissingError, UnknownConditionError

__all__ = [
    "SHAPES_CONDITIONS",
    "WEIGHTS_DIR",
    "ShapesWeightsMissingError",
    "UnknownConditionError",
    "controlnet_dir",
    "shapes_checkpoint",
]

# The condition types of the shapes benchmark, one shipped ControlNet each.
SHAPES_CONDITIONS: tuple[str, ...] = ("seg", "canny", "hed", "depth")
WEIGHTS_DIR: Path = Path(__file__).resolve().parent / "weights" / "shapes"


def shapes_checkpoint(condition: str | None, weights_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Return the base-model folder and the ControlNet folder of the ``shapes`` preset.

    Args:
        condition: The condition type, one of :data:`SHAPES_CONDITIONS`.
        weights_dir: Where the weights are; :data:`WEIGHTS_DIR` (``hgc_tune/models/weights/shapes``) by
            default.

    Returns:
        ``(base_dir, controlnet_dir)``: a diffusers pipeline folder without ControlNet and a
        ``ControlNetModel`` folder, both loadable with ``from_pretrained``.

    Raises:
        UnknownConditionError: ``condition`` is not one of :data:`SHAPES_CONDITIONS`.
        ShapesWeightsMissingError: the weights are not there.

    Example:
        >>> base, controlnet = shapes_checkpoint("seg")
        >>> controlnet.name
        'controlnet-seg'
    """
    if condition not in SHAPES_CONDITIONS:
        raise UnknownConditionError(
            f"`condition` must be one of {', '.join(SHAPES_CONDITIONS)} for the shapes preset, "
            f"but got condition={condition!r}."
        )
    root = WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
    base, controlnet = root / "base", controlnet_dir(root, condition)
    missing = [p for p in (base / "model_index.json", controlnet / "config.json") if not p.is_file()]
    if missing:
        shown = _display(root)
        raise ShapesWeightsMissingError(
            f"the shapes weights are not in {shown} (missing {', '.join(_display(p) for p in missing)}); "
            f"train them from the repository root with `python -m training.shapes.train --out {shown}`."
        )
    return base, controlnet


def controlnet_dir(root: Path, condition: str) -> Path:
    """Where the ``condition`` ControlNet of a shapes-model folder (shipped or being trained) lives."""
    return Path(root) / f"controlnet-{condition}"


def _display(path: Path) -> str:
    """The path relative to the repository (``hgc_tune/models/weights/shapes``) when it is inside it."""
    try:
        return str(path.relative_to(WEIGHTS_DIR.parents[3]))
    except ValueError:
        return str(path)
