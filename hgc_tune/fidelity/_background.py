"""Prompt adherence on the shapes benchmark: which background a generated picture shows.

The background of a shapes scene is named only in the prompt (``… on a sand background``); no condition map
carries it. Reading it back from a generated picture therefore measures whether the model follows the prompt,
the part of generation that prompt-level caching (cached cross-attention, guidance skipped on late steps) can
harm while the condition-following task metrics stay unchanged.

The reader inverts the benchmark's rendering rule, like the task decoders of
:mod:`hgc_tune.data.shapes`: each background is a base colour times a zero-mean brightness texture, and the
base colours are far apart (:data:`hgc_tune.data.shapes.BACKGROUNDS`), so the median colour of the picture's
background pixels is nearest to the base colour of the background drawn. It is a *proxy*: it knows the seven
backgrounds of the benchmark and nothing else, and on a generated picture it tells whether the model drew the
named background's colour, not whether the picture is a good one.
"""

from __future__ import annotations

import re

import numpy as np
from scipy import ndimage

from hgc_tune.data.shapes import BACKGROUNDS, decode_class_map
from hgc_tune.errors import FidelityError

__all__ = ["background_adherence", "background_score", "named_background", "read_background"]

_NAMED = re.compile(r"\bon an? (\w+) background\s*$")
# Background pixels next to an object are blurred into it on a generated picture: one pixel is dropped
# around every object while at least this many background pixels remain.
_MIN_PIXELS = 16


_BASE_COLORS: dict[str, np.ndarray] = {
    name: np.asarray(color, dtype=np.float64) for name, (color, _, _) in BACKGROUNDS.items()
}
# Width (RGB units) of the soft score's colour likelihood: the closest base colours are 32 apart, so a
# picture at one base colour scores >= 0.7 for it, and one halfway between two scores about 0.5 for each.
_SCORE_SIGMA = 16.0


def named_background(prompt: str) -> str:
    """The background a shapes prompt names (``"a photo of a red striped circle on a sand background"`` →
    ``"sand"``).

    Raises:
        FidelityError: The prompt names no background of :data:`hgc_tune.data.shapes.BACKGROUNDS`.

    Example:
        >>> named_background("a photo of a red striped circle on a sand background")
        'sand'
    """
    match = _NAMED.search(str(prompt).lower())
    if match is None or match.group(1) not in _BASE_COLORS:
        raise FidelityError(
            f"`prompt` must end in 'on a <background> background' with a background among "
            f"{', '.join(_BASE_COLORS)}, but got prompt={prompt!r}."
        )
    return match.group(1)


def _background_pixels(image: np.ndarray, background: np.ndarray | None) -> np.ndarray:
    if background is None:
        background = decode_class_map(image) == 0
    mask = np.asarray(background, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise FidelityError(
            f"`background` must be an [H, W] mask of the image's size {image.shape[:2]}, but got shape "
            f"{mask.shape}."
        )
    inner = ndimage.binary_erosion(mask, iterations=1, border_value=1)
    chosen = inner if inner.sum() >= _MIN_PIXELS else mask
    if not chosen.any():
        raise FidelityError("`background` marks no pixel: there is no background to read.")
    return image[chosen].astype(np.float64)


def _background_color(image: np.ndarray, background: np.ndarray | None) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise FidelityError(
            f"`image` must be an [H, W, 3] uint8 array, but got shape {array.shape} and dtype {array.dtype}."
        )
    return np.median(_background_pixels(array, background), axis=0)


def read_background(image: np.ndarray, background: np.ndarray | None = None) -> str:
    """Name the shapes background a picture shows (a proxy reader; see the module docstring).

    The median colour of the background pixels (less a one-pixel margin around the objects) is matched to
    the nearest base colour of :data:`hgc_tune.data.shapes.BACKGROUNDS` (Euclidean, RGB).

    Args:
        image: ``[H, W, 3]`` uint8 picture, generated or rendered.
        background: ``[H, W]`` bool mask of the background pixels, e.g. ``class_map == 0`` of the scene's
            seg condition (what the condition says is background). ``None``: the pixels that
            :func:`hgc_tune.data.shapes.decode_class_map` reads as background in the picture itself.

    Returns:
        The background's name.

    Raises:
        FidelityError: A picture that is not ``[H, W, 3]`` uint8, a mask of another size, or no background
            pixel.

    Example:
        >>> from hgc_tune.data.shapes import render_scene
        >>> scene = render_scene(0)
        >>> read_background(scene.image, scene.class_map == 0) == scene.background
        True
    """
    color = _background_color(image, background)
    return min(_BASE_COLORS, key=lambda name: float(np.linalg.norm(color - _BASE_COLORS[name])))


def background_adherence(image: np.ndarray, prompt: str, background: np.ndarray | None = None) -> float:
    """1.0 when a picture shows the background its prompt names, else 0.0 (a per-sample proxy of prompt
    adherence on the shapes benchmark; average it over samples).

    Args:
        image: ``[H, W, 3]`` uint8 picture generated from ``prompt``.
        prompt: The shapes prompt (``… on a <background> background``).
        background: The background mask, as for :func:`read_background`.

    Raises:
        FidelityError: As :func:`named_background` and :func:`read_background`.

    Example:
        >>> from hgc_tune.data.shapes import render_scene
        >>> scene = render_scene(3)
        >>> background_adherence(scene.image, scene.prompt, scene.class_map == 0)
        1.0
    """
    return 1.0 if read_background(image, background) == named_background(prompt) else 0.0


def background_score(image: np.ndarray, prompt: str, background: np.ndarray | None = None) -> float:
    """How surely a picture shows the background its prompt names, in ``[0, 1]``: the soft form of
    :func:`background_adherence` (a per-sample proxy of prompt adherence on the shapes benchmark).

    The median background colour ``m`` (as :func:`read_background` takes it) scores each background ``b`` by
    ``exp(-|m - base_b|² / 2σ²)`` (σ = 16 RGB units); the score is the named background's share of the sum.
    Its argmax is :func:`read_background`, so it is high exactly where the reader is right, but it moves
    continuously with the colour: a policy that shifts backgrounds towards another one loses score before
    any reading flips, and paired differences have a spread, so the paired bound of its loss is informative
    on few samples (a 0/1 reading that rarely flips shows no spread, and a t bound then understates it).

    Args:
        image: ``[H, W, 3]`` uint8 picture generated from ``prompt``.
        prompt: The shapes prompt (``… on a <background> background``).
        background: The background mask, as for :func:`read_background`.

    Raises:
        FidelityError: As :func:`named_background` and :func:`read_background`.

    Example:
        >>> from hgc_tune.data.shapes import render_scene
        >>> scene = render_scene(3)
        >>> background_score(scene.image, scene.prompt, scene.class_map == 0) > 0.7
        True
    """
    named = named_background(prompt)
    color = _background_color(image, background)
    names = list(_BASE_COLORS)
    squared = np.array([float(np.sum((color - _BASE_COLORS[n]) ** 2)) for n in names])
    # Shifted by the smallest distance so the exponentials cannot all underflow to 0.
    weights = np.exp(-(squared - squared.min()) / (2 * _SCORE_SIGMA**2))
    return float(weights[names.index(named)] / weights.sum())
