"""The two step-to-step heatmaps of a profile: block similarity and cross-attention drift."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from hgc_tune.report._labels import COMPONENT_TITLES, component_of, module_label, natural_order

if TYPE_CHECKING:
    from hgc_tune.profile import Profile


class _BlockSimilarityInfo(NamedTuple):
    """One component's blocks over the steps.

    Attributes:
        name: What the figure calls the component (``U-Net``, ``ControlNet``, a given title).
        keys: The block keys, in :func:`~hgc_tune.report._labels.natural_order` (empty: none to draw).
        rows: Their row labels, relative to the component.
        cos: Mean cosine similarity to the previous step, ``[rows, steps]``.
        rel_percent: Mean relative L1 change to the previous step in percent, ``[rows, steps]``.
        cos_limits: The colour range of ``cos``.
        rel_max: The top of the colour range of ``rel_percent``.
        num_steps: Steps of the profile.
        num_samples: Samples the means are over.
    """

    name: str
    keys: list[str]
    rows: list[str]
    cos: np.ndarray
    rel_percent: np.ndarray
    cos_limits: tuple[float, float]
    rel_max: float
    num_steps: int
    num_samples: int


class _AttentionDriftInfo(NamedTuple):
    """The cross-attention (``attn2``) modules over the steps.

    Attributes:
        keys: The ``attn2`` keys, in natural order (empty: none to draw).
        rows: Their row labels (module paths without ``.attn2``).
        rel_percent: Mean relative L1 change of the head-averaged map in percent, ``[rows, steps]``.
        rel_max: The top of the colour range of ``rel_percent``.
        js: Mean Jensen-Shannon divergence, in units of ``10^js_exponent`` nats, ``[rows, steps]``.
        js_exponent: The power of ten ``js`` is scaled by (0: plain nats).
        js_max: The top of the colour range of ``js``.
        separators: Row indices where the U-Net rows end and the ControlNet rows begin.
        num_steps: Steps of the profile.
        num_samples: Samples the means are over.
    """

    keys: list[str]
    rows: list[str]
    rel_percent: np.ndarray
    rel_max: float
    js: np.ndarray
    js_exponent: int
    js_max: float
    separators: list[int]
    num_steps: int
    num_samples: int

    @property
    def js_unit(self) -> str:
        """The unit of ``js``: ``nats`` or ``×10⁻³ nats``."""
        return "nats" if self.js_exponent == 0 else f"×10{_superscript(self.js_exponent)} nats"


def _get_block_similarity_info(
    profile: Profile, component: str, *, title: str | None = None
) -> _BlockSimilarityInfo:
    """The blocks of ``component`` (``unet``, ``controlnet`` or one of several, ``controlnet.nets.1``: that
    net whole and its blocks) with their step-to-step cosine similarity and relative L1 change."""
    keys = natural_order([k for k in profile.block_keys if k == component or k.startswith(component + ".")])
    empty = np.zeros((0, profile.num_steps))
    cos = profile.stat_matrix("mean_cos", keys) if keys else empty
    rel = profile.stat_matrix("mean_rel_l1", keys) * 100 if keys else empty
    return _BlockSimilarityInfo(
        name=title or COMPONENT_TITLES.get(component, component),
        keys=keys,
        rows=[_relative_label(k, component) for k in keys],
        cos=cos,
        rel_percent=rel,
        cos_limits=_cos_limits(cos),
        rel_max=_max(rel, 1e-6),
        num_steps=profile.num_steps,
        num_samples=profile.num_samples,
    )


def _get_attention_drift_info(profile: Profile) -> _AttentionDriftInfo:
    """Every ``attn2`` module with its map's step-to-step relative L1 change and Jensen-Shannon divergence
    (scaled by a power of ten so the largest shows as ``x.xx``)."""
    keys = natural_order(profile.attention_keys)
    if keys:
        rel = profile.stat_matrix("mean_map_rel_l1", keys) * 100
        js, exponent = _scaled(profile.stat_matrix("mean_js", keys))
    else:
        rel = js = np.zeros((0, profile.num_steps))
        exponent = 0
    return _AttentionDriftInfo(
        keys=keys,
        rows=[module_label(k).removesuffix(".attn2") for k in keys],
        rel_percent=rel,
        rel_max=_max(rel, 1e-6),
        js=js,
        js_exponent=exponent,
        js_max=_max(js, 1e-12),
        separators=_component_separators(keys),
        num_steps=profile.num_steps,
        num_samples=profile.num_samples,
    )


def _relative_label(key: str, component: str) -> str:
    """A heatmap row label within ``component`` (``controlnet.nets.1.mid_block`` -> ``mid``)."""
    if "." not in component:
        return module_label(key, drop_component=True)
    if key == component:
        return "controlnet (whole)"
    return module_label("controlnet." + key[len(component) + 1 :], drop_component=True)


def _component_separators(keys: Sequence[str]) -> list[int]:
    """The row indices where one component's rows (U-Net) give way to the next's (ControlNet)."""
    return [i for i in range(1, len(keys)) if component_of(keys[i]) != component_of(keys[i - 1])]


def _cos_limits(values: np.ndarray) -> tuple[float, float]:
    """The colour range of a cosine heatmap: from its lowest value (at most 0.999) to 1."""
    low = float(np.nanmin(values)) if np.isfinite(values).any() else 0.0
    return (min(low, 0.999), 1.0)


def _max(values: np.ndarray, floor: float) -> float:
    """The largest finite value, at least ``floor`` (``floor`` when there is none)."""
    return max(float(np.nanmax(values)), floor) if np.isfinite(values).any() else floor


def _scaled(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``values × 10^-e`` so the largest is in ``[1, 10)``, and ``e`` (0 when already ``>= 0.1``)."""
    top = _max(np.abs(values), 0.0)
    if top == 0.0 or top >= 0.1:
        return values, 0
    exponent = math.floor(math.log10(top))
    return values / 10.0**exponent, exponent


def _superscript(exponent: int) -> str:
    return str(exponent).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
