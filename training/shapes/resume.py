"""What lets a training run stop and go on later: EMA weights, atomic checkpoints and a stop signal.

A checkpoint holds everything the training loop needs to continue exactly where it stopped: the weights
being trained, their EMA copies, the optimizer's moments, the learning-rate schedule's position (iteration
done and iterations planned), the divergence guard's state, the data/noise generator and torch's global RNG,
and the loss curves so far. It is written to a temporary file and renamed into place, so a kill at any
moment leaves either the previous checkpoint or the new one, never a torn file. Checkpoints are this
project's own files (``torch.save`` of tensors and plain containers) and are loaded with
``weights_only=True`` and nothing else: a file that this restricted loader cannot read (truncated, garbage, a
pickle of other objects) is refused with :class:`~hgc_tune.errors.TrainingCheckpointError`, never unpickled
another way.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hgc_tune._atomic import atomic_write
from hgc_tune.errors import TrainingCheckpointError

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpointer",
    "Ema",
    "StopRequested",
    "first_line",
    "stop_on_signals",
    "stop_requested",
]

CHECKPOINT_FILE = "checkpoint.pt"


class StopRequested(Exception):
    """SIGTERM or SIGINT arrived: the loop saved a checkpoint and stops."""


class Ema:
    """Exponential moving averages of some modules' floating-point parameters and buffers.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early averages are not
    dominated by the initial weights. Sampling from the averages instead of the last weights removes most of
    the step-to-step noise of a short, small-batch training run.
    """

    def __init__(self, modules: Sequence[Any], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"`decay` must be in (0, 1), but got decay={decay}.")
        self.modules = list(modules)
        self.decay = decay
        self.updates = 0
        self.shadows = [{k: v.detach().clone() for k, v in _floats(m)} for m in self.modules]

    def update(self) -> None:
        """Move every average toward the current weights."""
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        with torch.no_grad():
            for module, shadow in zip(self.modules, self.shadows, strict=True):
                for name, value in _floats(module):
                    shadow[name].lerp_(value.detach(), 1.0 - decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the modules hold the averages; the trained weights come back after it."""
        saved = [{k: v.detach().clone() for k, v in _floats(m)} for m in self.modules]
        try:
            self.copy_to_modules()
            yield
        finally:
            with torch.no_grad():
                for module, state in zip(self.modules, saved, strict=True):
                    for name, value in _floats(module):
                        value.copy_(state[name])

    def copy_to_modules(self) -> None:
        """Overwrite the modules' weights with the averages (the end of a stage: the averages ship)."""
        with torch.no_grad():
            for module, shadow in zip(self.modules, self.shadows, strict=True):
                for name, value in _floats(module):
                    value.copy_(shadow[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadows": self.shadows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        for shadow, saved in zip(self.shadows, state["shadows"], strict=True):
            for name, value in shadow.items():
                value.copy_(saved[name])


def _floats(module) -> Iterator[tuple[str, Any]]:
    for name, value in module.state_dict(keep_vars=True).items():
        if value.is_floating_point():
            yield name, value


class Checkpointer:
    """Saves a stage's loop state to ``folder/checkpoint.pt`` at most every ``interval_seconds``.

    Attributes:
        folder: Where the checkpoint lives (the run's ``checkpoint/`` folder).
        interval_seconds: Time between periodic saves (0: after every iteration, for tests).
        saved_at: Iterations done at each save in this process (tests read it).
    """

    def __init__(self, folder: Path, interval_seconds: float) -> None:
        self.folder = Path(folder)
        self.interval_seconds = float(interval_seconds)
        self.last = time.monotonic()
        self.saved_at: list[int] = []

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def due(self) -> bool:
        """Whether the interval since the last save has passed."""
        return time.monotonic() - self.last >= self.interval_seconds

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (the package's one atomic writer: temporary file, fsync, rename)."""
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))
        self.last = time.monotonic()
        self.saved_at.append(int(state.get("done", -1)))

    def load(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` when there is none.

        Raises:
            TrainingCheckpointError: The file is not one ``torch.load(weights_only=True)`` reads as a dict.
        """
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - whatever the restricted loader rejects is not a checkpoint
            raise TrainingCheckpointError(
                f"{self.path} is not a readable training checkpoint ({first_line(e)}); delete {self.folder} "
                "and start the run again without --resume."
            ) from e
        if not isinstance(state, dict):
            raise TrainingCheckpointError(
                f"{self.path} holds a {type(state).__name__}, not a training checkpoint; delete "
                f"{self.folder} and start the run again without --resume."
            )
        return state

    def clear(self) -> None:
        """Remove the checkpoint (its stage finished and saved its models)."""
        self.path.unlink(missing_ok=True)


def first_line(error: BaseException, limit: int = 120) -> str:
    """``Type: message`` on one line, cut at ``limit`` characters (torch's load errors run to paragraphs)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""


_STOP = _StopFlag()


def stop_requested() -> str:
    """The name of the signal (SIGTERM/SIGINT) that arrived while :func:`stop_on_signals` was active, or
    ``""``."""
    return _STOP.signal_name if _STOP.requested else ""


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into a request that the training loop honours at its next iteration (it saves
    a checkpoint first); the previous handlers come back on exit. A second signal stops at once."""
    previous = {}
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            # A process forked while this handler was installed (a rendering worker) must die as by default:
            # a worker that only sets a flag outlives ``Pool.terminate()``, which then waits for ever. A pool
            # initializer restoring the default is not enough: terminate can come before it has run.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if _STOP.requested:
            raise KeyboardInterrupt
        _STOP.requested = True
        _STOP.signal_name = signal.Signals(signum).name

    _STOP.requested = False
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: signals cannot be caught here
        previous.clear()
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _STOP.requested = False
