"""MACs counted while a pipeline actually runs, at module level, from a :class:`MacTable`.

Counting has two halves. While the denoisers run, PyTorch forward hooks on every module of the U-Net and
the ControlNet record how many images each module really computed (:class:`ModuleRuns`): a leaf computed
when it was called; a module with children when any leaf below it ran during its call (a cached block or
attention module returns without running its children, so it computed nothing). Afterwards, each module's
*own* MACs (its table entry less its children's) times its images give the MACs executed. The runs do not
depend on the resolution, so the table can be built after the run, at the size the run used.

This checks the executor and the analytic policy MACs against what really executes; the executor's
``apply_policy(..., count_macs=True)`` reports it per call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from hgc_tune.macs._table import DENOISERS, MacTable

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

__all__ = ["ExecutedMacs", "ModuleRunCounter", "ModuleRuns", "count_executed_macs"]


class ModuleRuns:
    """What the denoisers' modules computed while a :class:`ModuleRunCounter` was attached.

    Attributes:
        images: Module key (``unet.mid_block``, …) -> images it computed: the batch of every forward that
            really ran it, summed. Modules that computed nothing are absent.
        called: Denoiser (``unet``, ``controlnet``) -> images it was called with, whatever a policy then
            skipped: what it computes at full compute.
        latent_size: ``(height, width)`` of the U-Net's latent at its latest call, ``None`` before one.
    """

    def __init__(self) -> None:
        self.images: dict[str, int] = {}
        self.called: dict[str, int] = dict.fromkeys(DENOISERS, 0)
        self.latent_size: tuple[int, int] | None = None
        self._leaf_calls = 0
        self._marks: list[int] = []

    def macs(
        self, table: MacTable, children: Mapping[str, tuple[str, ...]], convention: str
    ) -> dict[str, int]:
        """MACs executed per denoiser: each module's own MACs times the images it computed.

        Args:
            table: The pipeline's MAC table, at the resolution of the runs.
            children: Module key -> its direct children's keys (:attr:`ModuleRunCounter.children`).
            convention: ``paper`` or ``complete``.
        """
        out = dict.fromkeys(DENOISERS, 0)
        for key, images in self.images.items():
            out[key.split(".", 1)[0]] += images * _own_macs(table, key, children.get(key, ()), convention)
        return out

    def full_macs(self, table: MacTable, convention: str) -> dict[str, int]:
        """MACs per denoiser of the same calls at full compute (every call computes everything)."""
        return {d: n * table.macs(d, convention) if n else 0 for d, n in self.called.items()}


def _own_macs(table: MacTable, key: str, children: tuple[str, ...], convention: str) -> int:
    if key not in table.per_image:
        return 0
    return table.macs(key, convention) - sum(
        table.macs(c, convention) for c in children if c in table.per_image
    )


def _batch(args: tuple, kwargs: dict) -> int:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return 1


class ModuleRunCounter:
    """Forward hooks on every module of a pipeline's U-Net and ControlNet that record, into
    ``runs()``, the images each module computed (see :class:`ModuleRuns`).

    The hooks are objects, not closures, so a pipeline carrying them can be deep-copied and pickled (the
    copy counts into its own copy of the counter). Every forward of the denoisers then goes through one or
    two Python hooks per module: count when you need the figures, not while you time.

    Args:
        pipe: The pipeline (with a policy applied or not).
        runs: Returns the :class:`ModuleRuns` to record into (called once per hooked forward, so that a
            caller can keep one per thread).
    """

    def __init__(self, pipe: ControlNetPipeline, runs: Callable[[], ModuleRuns]) -> None:
        self.runs = runs
        self.children: dict[str, tuple[str, ...]] = {}
        self._handles: list[Any] = []
        try:
            for component in DENOISERS:
                self._attach(getattr(pipe, component), component)
        except BaseException:
            self.remove()
            raise

    def _attach(self, model: torch.nn.Module, component: str) -> None:
        for path, module in model.named_modules():
            key = f"{component}.{path}" if path else component
            children = tuple(f"{key}.{name}" for name, _ in module.named_children())
            self.children[key] = children
            if not children:
                self._handles.append(module.register_forward_hook(_LeafHook(self, key), with_kwargs=True))
                continue
            pre = _DenoiserPreHook(self, component) if not path else _MarkHook(self)
            self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            self._handles.append(module.register_forward_hook(_ParentHook(self, key), with_kwargs=True))

    def remove(self) -> None:
        """Detach every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class _LeafHook:
    def __init__(self, counter: ModuleRunCounter, key: str) -> None:
        self.counter = counter
        self.key = key

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        runs = self.counter.runs()
        runs._leaf_calls += 1
        runs.images[self.key] = runs.images.get(self.key, 0) + _batch(args, kwargs)


class _MarkHook:
    """Notes how many leaves had run when a module with children was entered."""

    def __init__(self, counter: ModuleRunCounter) -> None:
        self.counter = counter

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        runs = self.counter.runs()
        runs._marks.append(runs._leaf_calls)


class _DenoiserPreHook(_MarkHook):
    """On a whole denoiser: also counts the images it is called with, before any policy hook sees them."""

    def __init__(self, counter: ModuleRunCounter, component: str) -> None:
        super().__init__(counter)
        self.component = component

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        super().__call__(module, args, kwargs)
        runs = self.counter.runs()
        runs.called[self.component] += _batch(args, kwargs)
        if self.component == "unet":
            sample = args[0] if args else kwargs.get("sample")
            if isinstance(sample, torch.Tensor) and sample.dim() == 4:
                runs.latent_size = (int(sample.shape[-2]), int(sample.shape[-1]))


class _ParentHook:
    def __init__(self, counter: ModuleRunCounter, key: str) -> None:
        self.counter = counter
        self.key = key

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        runs = self.counter.runs()
        if runs._leaf_calls > runs._marks.pop():
            runs.images[self.key] = runs.images.get(self.key, 0) + _batch(args, kwargs)


class ExecutedMacs:
    """The running count of :func:`count_executed_macs`; read ``total`` and ``by_component`` after (or
    during) the runs."""

    def __init__(self, runs: ModuleRuns, counter: ModuleRunCounter, table: MacTable, convention: str) -> None:
        self.runs = runs
        self._counter = counter
        self._table = table
        self._convention = convention

    @property
    def by_component(self) -> dict[str, int]:
        """Denoiser (``unet``, ``controlnet``) -> MACs it executed."""
        return self.runs.macs(self._table, self._counter.children, self._convention)

    @property
    def total(self) -> int:
        return sum(self.by_component.values())


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
    runs = ModuleRuns()
    counter = ModuleRunCounter(pipe, lambda: runs)
    try:
        yield ExecutedMacs(runs, counter, table, convention)
    finally:
        counter.remove()
