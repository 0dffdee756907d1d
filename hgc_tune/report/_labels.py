"""Module ordering, short module labels and number formatting shared by the figures and the HTML page."""

from __future__ import annotations

import re

__all__ = [
    "COMPONENT_TITLES",
    "component_of",
    "format_macs",
    "format_percent",
    "module_label",
    "natural_order",
]

COMPONENT_TITLES: dict[str, str] = {"unet": "U-Net", "controlnet": "ControlNet"}
# Readers meet the U-Net first; within a component, the order data flows through it.
_COMPONENT_RANK = {"unet": 0, "controlnet": 1}
_STAGE_RANK = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
# Long diffusers path parts -> short forms, so 20+ attn2 rows stay legible on a heatmap axis.
_ABBREVIATIONS = (
    ("down_blocks", "down"),
    ("up_blocks", "up"),
    ("mid_block", "mid"),
    ("attentions", "attn"),
    ("transformer_blocks", "tb"),
)


def component_of(key: str) -> str:
    """``unet`` or ``controlnet``: the first part of a module key."""
    return key.split(".", 1)[0]


def _sort_key(key: str) -> tuple:
    parts = key.split(".")
    rank: list[tuple[int, int | str]] = [(_COMPONENT_RANK.get(parts[0], 9), parts[0])]
    for part in parts[1:]:
        if part in _STAGE_RANK:
            rank.append((0, _STAGE_RANK[part]))
        elif part.isdigit():
            rank.append((0, int(part)))
        else:
            rank.append((1, part))
    return tuple(rank)


def natural_order(keys: list[str]) -> list[str]:
    """Module keys ordered U-Net before ControlNet, then down, mid, up, then by index (``up.10`` after
    ``up.2``); the whole ``controlnet`` comes before its blocks."""
    return sorted(keys, key=_sort_key)


def module_label(key: str, *, drop_component: bool = False) -> str:
    """A short label for a module key: ``unet.up_blocks.2.attentions.1.transformer_blocks.0.attn2`` ->
    ``unet.up.2.attn.1.tb.0.attn2``; ``drop_component`` removes the leading ``unet.``/``controlnet.``
    (the whole ``controlnet`` stays ``controlnet (whole)``)."""
    if key == "controlnet":
        return "controlnet (whole)" if drop_component else key
    label = key
    for long, short in _ABBREVIATIONS:
        label = re.sub(rf"(^|\.){long}(?=\.|$)", rf"\1{short}", label)
    if drop_component:
        label = label.split(".", 1)[1] if "." in label else label
    return label


def format_macs(value: float) -> str:
    """MACs with an SI suffix: ``18.22T``, ``512.0G``, ``3.1M``."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def format_percent(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage (``0.634`` -> ``63.4%``); ``None`` or NaN -> an en dash."""
    if value is None or value != value:
        return "–"
    return f"{100 * value:.{digits}f}%"
