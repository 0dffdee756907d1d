"""The shapes benchmark: deterministic synthetic scenes, their condition maps, and decoders.

A scene is 1–4 objects of six classes on one of seven textured, weakly saturated backgrounds. Each class
has its own saturated colour (hue) and its own texture; objects are drawn far to near, so nearer objects
partly occlude farther ones. The rendering is designed to be *decodable* from a generated picture, so that
task metrics (seg mIoU, canny F1, hed SSIM, depth RMSE) can be measured on the output of a model trained on
it:

- **class** is carried by chromaticity (``rgb / (r + g + b)``): textures and depth shading only scale
  brightness, which leaves chromaticity unchanged, and every background is weakly saturated;
- **the background** named in the prompt is carried by the background's colour: seven backgrounds (wood,
  stone, sand, grass, sky, water, street) that differ in hue, brightness and texture;
- **depth** is carried by brightness: an object at depth level ``d`` (1 = nearest) is drawn at
  ``0.5 + 0.5 * d`` times its class colour, so its brightness relative to that colour gives ``d`` back;
- **edges** and **soft edges** come from one fixed-parameter function each, used both to make the
  ``canny``/``hed`` conditions from the rendered picture and to measure a generated one.

Everything scales with ``size`` (default 64 px, the resolution the embedded ``shapes`` model is trained
at); sizes 32–256 are supported. Scenes are a pure function of ``(seed, size)`` through numpy's
``default_rng``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hgc_tune.errors import DatasetError

__all__ = [
    "BACKGROUNDS",
    "COLOR_NAMES",
    "CONDITION_TYPES",
    "NUM_CLASSES",
    "OBJECT_COLORS",
    "SEG_PALETTE",
    "SHAPE_CLASSES",
    "TEXTURE_NAMES",
    "Scene",
    "SceneObject",
    "class_map_from_seg",
    "decode_class_map",
    "edges",
    "estimate_depth",
    "render_scene",
    "soft_edges",
]

# Label 0 is the background; labels 1.. index the object classes in every table below.
SHAPE_CLASSES: tuple[str, ...] = ("background", "circle", "square", "triangle", "star", "ring", "cross")
NUM_CLASSES: int = len(SHAPE_CLASSES)

# Hues about 60 degrees apart, so chromaticities are far from each other and from grey. The brightest
# channel stays at 215 so that texture (+12%) never clips, which would change chromaticity.
OBJECT_COLORS: np.ndarray = np.array(
    [
        (128, 128, 128),  # background stand-in (unused for drawing)
        (215, 40, 40),  # circle: red
        (45, 80, 215),  # square: blue
        (215, 195, 35),  # triangle: yellow
        (165, 55, 215),  # star: purple
        (45, 180, 60),  # ring: green
        (35, 185, 200),  # cross: cyan
    ],
    dtype=np.float64,
)
# "cyan" is not a stand-in-tokenizer word (it falls back to byte pieces); every other word is.
COLOR_NAMES: tuple[str, ...] = ("", "red", "blue", "yellow", "purple", "green", "cyan")
TEXTURE_NAMES: tuple[str, ...] = ("", "striped", "checkered", "dotted", "plain", "textured", "striped")

# Seg condition colours: saturated primaries/secondaries on black, far apart in RGB.
SEG_PALETTE: np.ndarray = np.array(
    [(0, 0, 0), (255, 0, 0), (0, 0, 255), (255, 255, 0), (160, 0, 255), (0, 200, 0), (0, 255, 255)],
    dtype=np.uint8,
)

CONDITION_TYPES: tuple[str, ...] = ("seg", "canny", "hed", "depth")

# name -> (base colour, texture kind, texture amplitude). The backgrounds differ in hue (warm wood and sand,
# green grass, blue sky and water, neutral stone and street), in brightness (street ~70 to sky ~190) and in
# texture, so the background word of a prompt names something a picture shows. Saturation stays <= 0.3 so no
# background is mistaken for an object colour, and every base colour is >= 30 RGB units from every other one
# (hgc_tune.fidelity reads the background back by its colour). The first three are the benchmark's original
# backgrounds, kept first (see _draw_background on seeds).
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], str, float]] = {
    "wood": ((150, 130, 110), "grain", 0.06),
    "stone": ((125, 125, 130), "blotches", 0.14),
    "sand": ((175, 165, 145), "speckle", 0.06),
    "grass": ((110, 130, 95), "blades", 0.10),
    "sky": ((170, 190, 220), "gradient", 0.08),
    "water": ((80, 98, 112), "waves", 0.07),
    "street": ((72, 72, 74), "speckle", 0.10),
}
# Version 1 of the benchmark drew among these; a scene keeps their draw (and their random stream) first.
_LEGACY_BACKGROUNDS = 3

_TEXTURE_AMPLITUDE = 0.12  # object brightness varies by +-12% around its shade
_MIN_VISIBLE = 0.5  # every object keeps at least half of its area visible
_DEPTH_LEVELS = (0.4, 0.6, 0.8, 1.0)
_DARK_SUM = 90.0  # r+g+b below this carries no reliable chromaticity: decode as background


def _shade(depth: float | np.ndarray) -> float | np.ndarray:
    return 0.5 + 0.5 * depth


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    Attributes:
        label: Class label (index into :data:`SHAPE_CLASSES`, 1..).
        shape: Class name (``circle``, ``square``, ...).
        color: Colour word used in the prompt.
        texture: Texture word used in the prompt.
        center: ``(x, y)`` in pixels.
        radius: Size in pixels (circumradius-like).
        angle: Rotation in radians.
        depth: Depth level in (0, 1], 1 = nearest; objects are drawn in increasing depth order.
        visible_fraction: Fraction of the object's area not covered by nearer objects.
    """

    label: int
    shape: str
    color: str
    texture: str
    center: tuple[float, float]
    radius: float
    angle: float
    depth: float
    visible_fraction: float


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene and its condition maps.

    Attributes:
        seed: The scene seed.
        image: ``[H, W, 3]`` uint8, the rendered picture (the ground truth).
        seg: ``[H, W, 3]`` uint8, class colours from :data:`SEG_PALETTE`.
        canny: ``[H, W]`` uint8, 255 on edges of :func:`edges` of ``image``, else 0.
        hed: ``[H, W]`` uint8, :func:`soft_edges` of ``image`` scaled to [0, 255].
        depth: ``[H, W]`` uint8, ``255 * depth`` per object (near = bright), background 0.
        class_map: ``[H, W]`` int64 class labels (0 = background).
        prompt: A prompt that names every object with its colour and texture, and the background.
        objects: The objects, far to near.
        background: Background name (a key of :data:`BACKGROUNDS`).
    """

    seed: int
    image: np.ndarray
    seg: np.ndarray
    canny: np.ndarray
    hed: np.ndarray
    depth: np.ndarray
    class_map: np.ndarray
    prompt: str
    objects: tuple[SceneObject, ...]
    background: str

    def condition(self, condition_type: str) -> np.ndarray:
        """The condition map as ``[H, W, 3]`` uint8 (grey maps repeated), as a ControlNet takes it.

        Raises:
            DatasetError: For a condition type the shapes benchmark does not make.
        """
        if condition_type not in CONDITION_TYPES:
            raise DatasetError(
                f"`condition_type` must be one of {', '.join(CONDITION_TYPES)} for the shapes benchmark, "
                f"but got condition_type={condition_type!r}."
            )
        array = getattr(self, condition_type)
        return array if array.ndim == 3 else np.repeat(array[:, :, None], 3, axis=2)


# ---------------------------------------------------------------------------------------------- geometry


def _polygon_mask(xs: np.ndarray, ys: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of pixel centres ``(xs, ys)``; vertices ``[N, 2]`` as (x, y)."""
    inside = np.zeros(xs.shape, dtype=bool)
    x0, y0 = vertices[-1]
    for x1, y1 in vertices:
        crosses = (y1 > ys) != (y0 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xs < x_at)
        x0, y0 = x1, y1
    return inside


def _star_vertices(radius: float, inner: float, points: int, angle: float) -> np.ndarray:
    k = np.arange(2 * points)
    r = np.where(k % 2 == 0, radius, radius * inner)
    phi = angle - np.pi / 2 + np.pi * k / points
    return np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)


def _cross_vertices(radius: float, angle: float) -> np.ndarray:
    a, w = radius, 0.36 * radius
    pts = np.array(
        [
            (w, -a),
            (w, -w),
            (a, -w),
            (a, w),
            (w, w),
            (w, a),
            (-w, a),
            (-w, w),
            (-a, w),
            (-a, -w),
            (-w, -w),
            (-w, -a),
        ]
    )
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Mask of a shape centred at the origin of the pixel offsets ``(u, v)`` (image frame)."""
    if shape == "circle":
        return u * u + v * v <= radius * radius
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= radius * radius) & (d2 >= (0.55 * radius) ** 2)
    if shape == "square":
        c, s = np.cos(angle), np.sin(angle)
        a, b = c * u + s * v, -s * u + c * v
        half = 0.8 * radius
        return (np.abs(a) <= half) & (np.abs(b) <= half)
    if shape == "triangle":
        vertices = _star_vertices(1.15 * radius, 1.0, 3, angle)[::2]
        return _polygon_mask(u, v, vertices)
    if shape == "star":
        return _polygon_mask(u, v, _star_vertices(1.2 * radius, 0.48, 5, angle))
    if shape == "cross":
        return _polygon_mask(u, v, _cross_vertices(radius, angle))
    raise AssertionError(shape)  # internal table and this function are out of sync


# ---------------------------------------------------------------------------------------------- textures


def _object_texture(label: int, u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator):
    """Zero-mean brightness pattern in [-1, 1] in the object's frame (``u``, ``v`` rotated offsets)."""
    phase_u, phase_v = 2 * np.pi * u / period, 2 * np.pi * v / period
    texture = TEXTURE_NAMES[label]
    # Smooth (sinusoidal) patterns: square waves alias into moire at 64 px once rotated.
    if texture == "striped":
        # Class 1 stripes run along u, class 6 along v: two distinct patterns behind one word.
        return np.sin(phase_v if label == 1 else phase_u)
    if texture == "checkered":
        return np.sin(phase_u) * np.sin(phase_v)
    if texture == "dotted":
        spacing = 1.25 * period
        a, b = 2 * np.pi * u / spacing, 2 * np.pi * v / spacing
        bumps = ((1 + np.cos(a)) * (1 + np.cos(b)) / 4) ** 2
        mean = (1.5 / 4) ** 2  # E[((1 + cos a)(1 + cos b) / 4)^2] over a period
        return -(bumps - mean) / (1 - mean)  # dark dots, zero mean
    if texture == "textured":
        noise = ndimage.gaussian_filter(rng.standard_normal(u.shape), 0.8 * period / 4)
        noise -= noise.mean()
        return np.clip(noise / (2.5 * noise.std() + 1e-12), -1, 1)
    return np.zeros_like(u)


def _background(kind: str, size: int, period: float, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == "grain":
        wobble = 0.35 * np.sin(2 * np.pi * xs / (6 * period) + rng.uniform(0, 2 * np.pi))
        pattern = np.sin(2 * np.pi * (ys / (3.5 * period) + wobble))
    elif kind == "blotches":
        pattern = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.2 * period, mode="wrap")
        pattern /= 2.5 * pattern.std() + 1e-12
    elif kind == "blades":
        # Noise stretched vertically: short upright strokes.
        noise = rng.standard_normal((size, size))
        pattern = ndimage.gaussian_filter(noise, (1.5 * period, 0.35 * period), mode="wrap")
        pattern /= 2.5 * pattern.std() + 1e-12
    elif kind == "gradient":
        # Brighter towards the top, no texture: a clear sky.
        tilt = rng.uniform(-0.2, 0.2)
        pattern = 1.0 - 2.0 * (ys + tilt * (xs - size / 2)) / size
    elif kind == "waves":
        # Horizontal ripples whose phase drifts slowly along x.
        phase = rng.uniform(0, 2 * np.pi)
        drift = 0.5 * np.sin(2 * np.pi * xs / (8 * period) + phase)
        pattern = np.sin(2 * np.pi * (ys / (4.5 * period) + drift))
    else:
        pattern = ndimage.gaussian_filter(rng.standard_normal((size, size)), 0.1 * period, mode="wrap")
        pattern /= 2.5 * pattern.std() + 1e-12
    return np.clip(pattern, -1, 1)


def _draw_background(seed: int, size: int, period: float, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """The scene's background name and its picture, uniform over :data:`BACKGROUNDS`.

    The draw among the original three backgrounds and their pattern come from the scene's stream ``rng``,
    as in version 1 of the benchmark, so that the objects drawn after it are the same as they were; a second
    stream of the seed then replaces that background by one of the later ones with probability
    ``(n - 3) / n``. Scenes that keep one of the original three are pixel-identical to version 1.
    """
    names = list(BACKGROUNDS)
    legacy = names[int(rng.integers(_LEGACY_BACKGROUNDS))]
    pattern = _background(BACKGROUNDS[legacy][1], size, period, rng)
    extra = np.random.default_rng([int(seed), 1])
    name = legacy
    if extra.random() < (len(names) - _LEGACY_BACKGROUNDS) / len(names):
        name = names[_LEGACY_BACKGROUNDS + int(extra.integers(len(names) - _LEGACY_BACKGROUNDS))]
        pattern = _background(BACKGROUNDS[name][1], size, period, extra)
    color, _, amplitude = BACKGROUNDS[name]
    image = np.asarray(color, dtype=np.float64)[None, None, :] * (1 + amplitude * pattern)[..., None]
    return name, image


# -------------------------------------------------------------------------------------------- rendering


def _layout(rng: np.random.Generator, size: int, count: int, xs: np.ndarray, ys: np.ndarray):
    """Place ``count`` objects so each keeps >= half its area visible; fewer objects if that fails."""
    labels = rng.choice(np.arange(1, NUM_CLASSES), size=count, replace=False)
    depths = np.sort(rng.choice(_DEPTH_LEVELS, size=count, replace=False))
    for _ in range(60):
        placed = []
        for label in labels:
            radius = rng.uniform(0.13, 0.21) * size
            margin = radius * 1.05
            cx, cy = rng.uniform(margin, size - margin, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            mask = _shape_mask(SHAPE_CLASSES[label], xs - cx, ys - cy, radius, angle)
            placed.append((int(label), (float(cx), float(cy)), float(radius), float(angle), mask))
        # Visible part of each object: not covered by any nearer (later) object.
        covered = np.zeros_like(xs, dtype=bool)
        visible = [0.0] * count
        for i in range(count - 1, -1, -1):
            mask = placed[i][4]
            area = mask.sum()
            visible[i] = float((mask & ~covered).sum() / max(area, 1))
            covered |= mask
        if min(visible) >= _MIN_VISIBLE:
            return placed, depths, visible
    if count == 1:  # pragma: no cover - a single object always fits
        raise AssertionError("could not place a single object")
    return _layout(rng, size, count - 1, xs, ys)


def _describe(objects: tuple[SceneObject, ...], background: str) -> str:
    # Nearest object first: it is the most visible one.
    phrases = [f"a {o.color} {o.texture} {o.shape}" for o in reversed(objects)]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"a photo of {listed} on a {background} background"


def render_scene(seed: int, size: int = 64) -> Scene:
    """Render the shapes scene of ``seed`` with all its condition maps.

    Deterministic: the same ``(seed, size)`` gives identical arrays (numpy ``default_rng(seed)``).
    A 64 px scene renders in a few milliseconds.

    Args:
        seed: Non-negative scene seed (see :mod:`hgc_tune.data` for the seed ranges of the splits).
        size: Image side in pixels, 32..256.

    Returns:
        The :class:`Scene`.

    Raises:
        DatasetError: For a negative seed or a size outside 32..256.

    Example:
        >>> scene = render_scene(0)
        >>> scene.image.shape, scene.seg.shape, scene.canny.shape
        ((64, 64, 3), (64, 64, 3), (64, 64))
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"`seed` must be a non-negative integer, but got seed={seed!r}.")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 32 <= size <= 256:
        raise DatasetError(f"`size` must be an integer in [32, 256], but got size={size!r}.")
    size = int(size)
    rng = np.random.default_rng(int(seed))
    scale = size / 64
    period = max(3.0, 4.0 * scale)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    background, image = _draw_background(int(seed), size, period, rng)

    count = int(rng.integers(1, 5))
    placed, depths, visible = _layout(rng, size, count, xs, ys)
    class_map = np.zeros((size, size), dtype=np.int64)
    depth_map = np.zeros((size, size), dtype=np.float64)
    objects = []
    for (label, (cx, cy), radius, angle, mask), depth, vis in zip(placed, depths, visible, strict=True):
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * (xs - cx) + s * (ys - cy), -s * (xs - cx) + c * (ys - cy)
        texture = _object_texture(label, u, v, period, rng)
        factor = _shade(depth) * (1 + _TEXTURE_AMPLITUDE * texture)
        image[mask] = OBJECT_COLORS[label][None, :] * factor[mask][:, None]
        class_map[mask] = label
        depth_map[mask] = depth
        objects.append(
            SceneObject(
                label=label,
                shape=SHAPE_CLASSES[label],
                color=COLOR_NAMES[label],
                texture=TEXTURE_NAMES[label],
                center=(round(cx, 3), round(cy, 3)),
                radius=round(radius, 3),
                angle=round(angle, 4),
                depth=float(depth),
                visible_fraction=round(vis, 4),
            )
        )
    image_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    objects_t = tuple(objects)
    return Scene(
        seed=int(seed),
        image=image_u8,
        seg=SEG_PALETTE[class_map],
        canny=edges(image_u8).astype(np.uint8) * 255,
        hed=np.rint(soft_edges(image_u8) * 255).astype(np.uint8),
        depth=np.rint(depth_map * 255).astype(np.uint8),
        class_map=class_map,
        prompt=_describe(objects_t, background),
        objects=objects_t,
        background=background,
    )


# --------------------------------------------------------------------------------------------- decoders


def _as_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise DatasetError(f"`{name}` must be an [H, W, 3] array, but got shape {array.shape}.")
    if array.dtype != np.uint8:
        raise DatasetError(f"`{name}` must be uint8, but got dtype {array.dtype}.")
    return array


def _chromaticity(rgb: np.ndarray) -> np.ndarray:
    total = rgb.sum(axis=-1, keepdims=True)
    return rgb / np.maximum(total, 1e-6)


# Background prototypes: neutral grey and each background's tint all decode to label 0.
_PROTOTYPES = np.concatenate(
    [
        _chromaticity(np.array([[1.0, 1.0, 1.0]] + [list(c) for c, _, _ in BACKGROUNDS.values()])),
        _chromaticity(OBJECT_COLORS[1:]),
    ]
)
_PROTOTYPE_LABELS = np.array([0] * (1 + len(BACKGROUNDS)) + list(range(1, NUM_CLASSES)))


def decode_class_map(image: np.ndarray, *, smooth: int = 3) -> np.ndarray:
    """Per-pixel class labels of a (generated) shapes picture, by nearest class chromaticity.

    Chromaticity ``rgb / (r + g + b)`` ignores the brightness changes that textures and depth shading make,
    so each pixel is matched to the nearest class colour (or to grey/background tints, label 0). Pixels too
    dark to have a reliable colour are background. A majority (mode) filter then cleans the label map:
    unlike smoothing the colours first, it never invents a third class where two colours blur together.

    Args:
        image: ``[H, W, 3]`` uint8 picture.
        smooth: Side of the majority filter (0 or 1: none). 3 removes isolated wrong pixels and the thin
            seams of mixed colour that a generated picture has between objects.

    Returns:
        ``[H, W]`` int64 labels in ``[0, NUM_CLASSES)``.
    """
    rgb = _as_rgb(image).astype(np.float64)
    chroma = _chromaticity(rgb)
    distance = ((chroma[:, :, None, :] - _PROTOTYPES[None, None, :, :]) ** 2).sum(axis=-1)
    labels = _PROTOTYPE_LABELS[distance.argmin(axis=-1)]
    labels[rgb.sum(axis=-1) < _DARK_SUM] = 0
    if smooth and smooth > 1:
        labels = _majority(labels, int(smooth))
    return labels.astype(np.int64)


def _majority(labels: np.ndarray, size: int) -> np.ndarray:
    one_hot = labels[None, :, :] == np.arange(NUM_CLASSES)[:, None, None]
    votes = np.stack([ndimage.uniform_filter(m.astype(np.float64), size, mode="nearest") for m in one_hot])
    # A small bonus for the pixel's own label breaks ties in its favour.
    votes += 0.5 / (size * size) * one_hot
    return votes.argmax(axis=0)


def class_map_from_seg(seg_condition: np.ndarray) -> np.ndarray:
    """Class labels of a seg condition map (exact for maps drawn with :data:`SEG_PALETTE`).

    Each pixel takes the label of the nearest palette colour, so lightly compressed or resized maps still
    decode.

    Args:
        seg_condition: ``[H, W, 3]`` uint8 seg condition.

    Returns:
        ``[H, W]`` int64 labels.
    """
    rgb = _as_rgb(seg_condition, "seg_condition").astype(np.int64)
    palette = SEG_PALETTE.astype(np.int64)
    distance = ((rgb[:, :, None, :] - palette[None, None, :, :]) ** 2).sum(axis=-1)
    return distance.argmin(axis=-1).astype(np.int64)


def estimate_depth(image: np.ndarray, *, smooth: int = 3) -> np.ndarray:
    """Depth proxy of a (generated) shapes picture, in [0, 1] (1 = nearest, background 0).

    This is *not* a monocular depth estimator: it inverts the benchmark's rendering rule. Objects at depth
    ``d`` are drawn at ``0.5 + 0.5 * d`` times their class colour (textures average out), so for each
    connected region of one decoded class the mean brightness ratio ``k`` of its pixels against the class
    colour (projection onto it) gives ``d = 2k - 1``. Background (label 0) is 0. On a generated picture it
    measures how well the model kept the depth-to-brightness mapping it was trained on, which is what the
    ``depth`` condition asks of it.

    Args:
        image: ``[H, W, 3]`` uint8 picture.
        smooth: Majority filter side used for the class decoding (see :func:`decode_class_map`).

    Returns:
        ``[H, W]`` float64 depth in [0, 1].
    """
    rgb = _as_rgb(image).astype(np.float64)
    labels = decode_class_map(image, smooth=smooth)
    depth = np.zeros(labels.shape, dtype=np.float64)
    for label in range(1, NUM_CLASSES):
        regions, count = ndimage.label(labels == label)
        if count == 0:
            continue
        base = OBJECT_COLORS[label]
        # Per-pixel projection onto the class colour, then a per-region mean (the textures are zero-mean).
        ratio = (rgb @ base) / float(base @ base)
        means = ndimage.mean(ratio, labels=regions, index=np.arange(1, count + 1))
        region_depth = np.clip(2.0 * np.asarray(means) - 1.0, 0.0, 1.0)
        inside = regions > 0
        depth[inside] = region_depth[regions[inside] - 1]
    return depth


def _grey(image: np.ndarray) -> np.ndarray:
    return _as_rgb(image).astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def edges(image: np.ndarray) -> np.ndarray:
    """Canny edges of a shapes picture with fixed parameters (the ``canny`` condition and its metric).

    skimage's Canny runs on each colour channel (so that edges between equally bright colours are found)
    with Gaussian ``sigma = 1.5 * size / 64``, which smooths the object textures away, and hysteresis
    thresholds ``(0.2, 0.4) * 64 / size`` on [0, 1] intensities; the channel edge maps are OR-ed.

    Args:
        image: ``[H, W, 3]`` uint8 picture.

    Returns:
        ``[H, W]`` bool edge map.
    """
    from skimage.feature import canny

    rgb = _as_rgb(image).astype(np.float64) / 255.0
    scale = rgb.shape[0] / 64
    # A blur `scale` times wider lowers gradients `scale` times: thresholds follow, so a picture and its
    # upscaled copy have the same edges.
    low, high = 0.2 / scale, 0.4 / scale
    out = np.zeros(rgb.shape[:2], dtype=bool)
    for channel in range(3):
        out |= canny(
            rgb[:, :, channel], sigma=1.5 * scale, low_threshold=low, high_threshold=high, mode="nearest"
        )
    return out


def soft_edges(image: np.ndarray) -> np.ndarray:
    """Soft edge strength of a shapes picture in [0, 1] (the ``hed`` condition and its metric).

    A HED stand-in: the Gaussian gradient magnitude (``sigma = 1.2 * size / 64``) of each colour channel,
    maximum over channels, times ``size / 64 / 28`` and clipped, so thick soft lines mark object outlines
    and textures stay faint. Fixed scaling (not per-image normalisation) keeps values comparable across
    pictures.

    Args:
        image: ``[H, W, 3]`` uint8 picture.

    Returns:
        ``[H, W]`` float64 map in [0, 1].
    """
    rgb = _as_rgb(image).astype(np.float64)
    scale = rgb.shape[0] / 64
    magnitude = np.max(
        [ndimage.gaussian_gradient_magnitude(rgb[:, :, c], 1.2 * scale, mode="nearest") for c in range(3)],
        axis=0,
    )
    # Scale-normalised gradient (times `scale`), so every size gets the same line strength.
    return np.clip(magnitude * scale / 28.0, 0.0, 1.0)
