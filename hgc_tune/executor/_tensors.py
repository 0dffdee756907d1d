"""Batch-dimension helpers for cached outputs: shapes only, never values (no host syncs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.utils import BaseOutput

__all__ = ["map_tensors", "copy_tensors", "leading_batch", "fit_batch", "cond_half", "repeat_halves"]


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], obj: Any) -> Any:
    """Apply ``fn`` to every tensor in a nested tuple/list/dict/``BaseOutput``, keeping the structure."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, BaseOutput):
        return type(obj)(**{k: map_tensors(fn, v) for k, v in obj.items()})
    if isinstance(obj, tuple):
        return tuple(map_tensors(fn, v) for v in obj)
    if isinstance(obj, list):
        return [map_tensors(fn, v) for v in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    return obj


def copy_tensors(obj: Any) -> Any:
    """``obj`` with every tensor cloned (an asynchronous device copy, no host sync)."""
    return map_tensors(torch.clone, obj)


def leading_batch(
    args: tuple, kwargs: dict, names: tuple[str, ...] = ("hidden_states", "sample")
) -> int | None:
    """Batch size of a module call: dim 0 of the first positional tensor or of a named keyword tensor."""
    for value in (*args, *(kwargs.get(n) for n in names)):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def fit_batch(stored: Any, batch: int | None) -> Any | None:
    """A stored output adapted to the current batch, or ``None`` if it cannot be.

    Under truncated CFG a module that stored a [uncond, cond] output (2B) is asked for the cond half (B):
    the stored cond half is the right reuse.
    """
    first = next(iter(_tensors(stored)), None)
    if first is None or batch is None or first.shape[0] == batch:
        return stored
    if first.shape[0] == 2 * batch:
        return map_tensors(lambda t: t[batch:] if t.dim() > 0 and t.shape[0] == 2 * batch else t, stored)
    return None


def cond_half(obj: Any, full_batch: int) -> Any:
    """The conditional (second) half of every tensor whose dim 0 is ``full_batch``."""
    half = full_batch // 2
    return map_tensors(lambda t: t[half:] if t.dim() > 0 and t.shape[0] == full_batch else t, obj)


def repeat_halves(obj: Any) -> Any:
    """Every tensor repeated along dim 0: the cond result stands for [uncond, cond]."""
    return map_tensors(lambda t: torch.cat([t, t]) if t.dim() > 0 else t, obj)


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, tuple | list):
        for v in obj:
            yield from _tensors(v)
