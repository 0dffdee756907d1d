"""MACs counted while a pipeline actually runs, at module level, from a :class:`MacTable`.

Each module's *own* MACs (its table entry less its children's) are added, times the batch of its input,
every time it really computes. A module computed when it is a leaf that was called, or when any module
below it ran during its call: a cached block or attention module returns without running its children, so
it adds nothing. This checks the executor and the analytic policy MACs against what really executes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from hgc_tune.macs._table import DENOISERS, MacTable

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

__all__ = ["ExecutedMacs", "count_executed_macs"]


class ExecutedMacs:
    """The running count; ``total`` and ``by_component`` are read after (or during) the runs."""

    def __init__(self) -> None:
        self.by_component: dict[str, int] = dict.fromkeys(DENOISERS, 0)
        self._leaf_calls = 0

    @property
    def total(self) -> int:
        return sum(self.by_component.values())


def _batch(args: tuple, kwargs: dict) -> int:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return 1


@contextlib.contextmanager
def count_executed_macs(
    pipe: ControlNetPipeline, table: MacTable, convention: str = "paper"
) -> Iterator[ExecutedMacs]:
    """Count the U-Net and ControlNet MACs executed inside the ``with`` block.

    Args:
        pipe: The pipeline (hooked by a policy or not).
        table: Its MAC table (same resolution as the runs).
        convention: ``paper`` or ``complete``.

    Yields:
        An :class:`ExecutedMacs` whose ``total`` compares with ``policy_macs(...)["policy"]``.
    """
    count = ExecutedMacs()
    handles = []
    for component in DENOISERS:
        model = getattr(pipe, component)
        for path, module in model.named_modules():
            key = f"{component}.{path}" if path else component
            children = list(module.children())
            own = table.macs(key, convention) if key in table.per_image else 0
            own -= sum(
                table.macs(f"{key}.{name}", convention)
                for name, _ in module.named_children()
                if f"{key}.{name}" in table.per_image
            )
            if not children:
                handles.append(
                    module.register_forward_hook(_leaf_hook(count, component, own), with_kwargs=True)
                )
            elif own > 0:
                marks: list[int] = []
                handles.append(module.register_forward_pre_hook(_mark_hook(count, marks)))
                handles.append(
                    module.register_forward_hook(_parent_hook(count, component, own, marks), with_kwargs=True)
                )
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def _leaf_hook(count: ExecutedMacs, component: str, own: int):
    def hook(module, args, kwargs, output):
        count._leaf_calls += 1
        count.by_component[component] += own * _batch(args, kwargs)

    return hook


def _mark_hook(count: ExecutedMacs, marks: list[int]):
    def hook(module, args):
        marks.append(count._leaf_calls)

    return hook


def _parent_hook(count: ExecutedMacs, component: str, own: int, marks: list[int]):
    def hook(module, args, kwargs, output):
        if count._leaf_calls > marks.pop():
            count.by_component[component] += own * _batch(args, kwargs)

    return hook
