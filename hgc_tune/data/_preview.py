"""A preview grid of shapes scenes: picture | seg | canny | hed | depth per row."""

from __future__ import annotations

import numpy as np

from hgc_tune.data._shapes import CONDITION_TYPES, render_scene
from hgc_tune.errors import DatasetError

__all__ = ["shapes_preview"]

_COLUMNS = ("image", *CONDITION_TYPES)


def shapes_preview(seeds: list[int] | range, *, size: int = 64, scale: int = 3, gap: int = 4):
    """Render a grid with one scene per row and the picture and its condition maps as columns.

    Args:
        seeds: Scene seeds, one row each.
        size: Scene size in pixels.
        scale: Integer nearest-neighbour upscaling of every cell (pixels stay visible).
        gap: White gap between cells, in output pixels.

    Returns:
        A ``PIL.Image.Image`` (RGB) with a header row naming the columns.

    Raises:
        DatasetError: For no seeds or a scale below 1.
    """
    from PIL import Image, ImageDraw

    seeds = list(seeds)
    if not seeds:
        raise DatasetError("`seeds` must name at least one scene, but got seeds=[].")
    if scale < 1:
        raise DatasetError(f"`scale` must be >= 1, but got scale={scale}.")
    cell = size * scale
    header = 14
    width = len(_COLUMNS) * cell + (len(_COLUMNS) + 1) * gap
    height = header + len(seeds) * cell + (len(seeds) + 1) * gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for row, seed in enumerate(seeds):
        scene = render_scene(seed, size)
        for col, name in enumerate(_COLUMNS):
            array = scene.image if name == "image" else scene.condition(name)
            big = np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)
            top = header + gap + row * (cell + gap)
            left = gap + col * (cell + gap)
            canvas[top : top + cell, left : left + cell] = big
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for col, name in enumerate(_COLUMNS):
        draw.text((gap + col * (cell + gap) + 2, 1), name, fill=(0, 0, 0))
    return picture
