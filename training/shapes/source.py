"""Where training and evaluation scenes come from: the shapes benchmark, behind a small seam for tests."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hgc_tune.data._benchmark import split_seeds
from hgc_tune.data._shapes import render_scene

__all__ = ["SceneSource", "shapes_source"]


@dataclass(frozen=True)
class SceneSource:
    """A scene renderer and the seeds of its training and held-out scenes.

    Attributes:
        render: ``seed -> scene``; a scene has uint8 ``image`` (H, W, 3), ``seg``, ``canny``, ``hed``,
            ``depth`` ((H, W) or (H, W, 3)) and a ``prompt``. Must be picklable (a module-level function or
            a ``functools.partial`` of one) so that worker processes can render.
        train_seeds: ``n -> n`` seeds of the training split.
        heldout_seeds: ``n -> n`` seeds of scenes never trained on (the self-check's).
        task_models: Keyword arguments for :class:`hgc_tune.fidelity.TaskEvaluator` (segmenter,
            depth_estimator, ...); empty means the shapes benchmark's built-ins.
        split_note: Where the seeds come from, for the training report.
    """

    render: Callable[[int], Any]
    train_seeds: Callable[[int], Sequence[int]]
    heldout_seeds: Callable[[int], Sequence[int]]
    task_models: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    split_note: str = ""


def shapes_source() -> SceneSource:
    """The shapes benchmark at 64 px: its ``train`` split for training, ``heldout`` for the self-check."""
    return SceneSource(
        render=functools.partial(render_scene, size=64),
        train_seeds=functools.partial(split_seeds, "train"),
        heldout_seeds=functools.partial(split_seeds, "heldout"),
        split_note="hgc_tune.data._benchmark.split_seeds: train for training, heldout for the self-check",
    )
