"""A pool of pre-rendered training scenes held as uint8 tensors (on the training device)."""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hgc_tune.models._shapes import SHAPES_CONDITIONS

__all__ = ["ScenePool", "render_pool"]


@dataclass
class ScenePool:
    """Rendered scenes, channel-first uint8 tensors of one device.

    Attributes:
        images: ``[N, 3, H, W]`` uint8 pictures.
        conditions: condition type -> ``[N, C, H, W]`` uint8 map (C = 1 for grey maps, 3 for ``seg``).
        prompt_ids: ``[N]`` int64 index into :attr:`prompts`.
        prompts: The distinct prompts.
        seeds: The scene seeds, in order.
    """

    images: Any
    conditions: dict[str, Any]
    prompt_ids: Any
    prompts: list[str]
    seeds: list[int]

    def __len__(self) -> int:
        return len(self.seeds)

    def condition_batch(self, condition: str, index) -> Any:
        """The conditions of ``index``: float ``[B, 3, H, W]`` in [0, 1], as the pipeline feeds them."""
        maps = self.conditions[condition][index].float().div_(255.0)
        return maps.expand(-1, 3, -1, -1) if maps.shape[1] == 1 else maps

    def image_batch(self, index) -> Any:
        """The pictures of ``index`` as a float ``[B, 3, H, W]`` tensor in [-1, 1] (the VAE's range)."""
        return self.images[index].float().div_(127.5).sub_(1.0)


def _arrays(render: Callable[[int], Any], seed: int) -> tuple[int, list[np.ndarray], str]:
    """Render one scene and keep only what training needs (small to send between processes)."""
    scene = render(seed)
    maps = [np.ascontiguousarray(scene.image, dtype=np.uint8)]
    maps += [np.ascontiguousarray(getattr(scene, c), dtype=np.uint8) for c in SHAPES_CONDITIONS]
    return seed, maps, str(scene.prompt)


def _render_one(args: tuple[Callable[[int], Any], int]) -> tuple[int, list[np.ndarray], str]:
    return _arrays(*args)


def _default_signals() -> None:
    """A worker dies on SIGTERM: a forked worker inherits the trainer's handler, which only sets a flag, and
    would then outlive ``Pool.terminate()`` and hang it (seen once on a loaded machine)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def render_pool(
    render: Callable[[int], Any],
    seeds: Sequence[int],
    *,
    workers: int = 0,
    deadline: float | None = None,
    min_scenes: int = 1,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> ScenePool:
    """Render ``seeds`` (in worker processes when ``workers > 1``) into a :class:`ScenePool`.

    Args:
        render: ``seed -> scene`` (picklable when ``workers > 1``).
        seeds: Scene seeds, rendered in order.
        workers: Worker processes; 0 or 1 renders in this process.
        deadline: A ``time.monotonic()`` value; rendering stops there (keeping the scenes done, at least
            ``min_scenes``), so a slow renderer cannot eat the training budget.
        min_scenes: Scenes rendered even past the deadline.
        device: Where the tensors go.
        log: Progress lines.
    """
    results: list[tuple[int, list[np.ndarray], str]] = []
    started = time.monotonic()
    step = max(1, len(seeds) // 10)

    def consume(iterator) -> None:
        for item in iterator:
            results.append(item)
            n = len(results)
            if log is not None and n % step == 0:
                log(f"  rendered {n}/{len(seeds)} scenes ({time.monotonic() - started:.1f} s)")
            if deadline is not None and n >= min_scenes and time.monotonic() > deadline:
                if log is not None:
                    log(f"  render deadline reached: keeping {n} of {len(seeds)} scenes")
                return

    jobs = [(render, int(s)) for s in seeds]
    if workers > 1:
        # fork: the renderer need not be importable by name in a fresh interpreter; rendering happens before
        # any CUDA context exists in this process.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers, initializer=_default_signals) as pool:
            consume(pool.imap(_render_one, jobs, chunksize=32))
            pool.terminate()
    else:
        consume(map(_render_one, jobs))

    prompts: dict[str, int] = {}
    prompt_ids = [prompts.setdefault(p, len(prompts)) for _, _, p in results]

    def stack(k: int):
        arrays = [maps[k] if maps[k].ndim == 3 else maps[k][:, :, None] for _, maps, _ in results]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)

    return ScenePool(
        images=stack(0),
        conditions={c: stack(i + 1) for i, c in enumerate(SHAPES_CONDITIONS)},
        prompt_ids=torch.tensor(prompt_ids, dtype=torch.int64, device=device),
        prompts=list(prompts),
        seeds=[s for s, _, _ in results],
    )
