"""Progress events as JSON lines in a file: how a ``demo`` child process, and the ``profile`` and ``search``
it runs, tell the parent process how far they got.

One line per event, e.g. ``{"task": "seg", "stage": "trial", "done": 7, "total": 20, "time": 1767000000.5}``.
The writer appends each line with one write and closes the file, so a child that dies leaves whole lines (at
worst one partial last line); the reader follows the file and returns whole lines only, so a line still being
written is read on the next poll, and a malformed one is skipped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DONE", "EventReader", "EventWriter", "ProgressEvent"]

# The stage a task reports when it has run to the end (the stages of hgc_tune._progress come before it).
DONE = "done"


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report of a task.

    Attributes:
        task: What runs (a condition type in the demo).
        stage: A stage of :mod:`hgc_tune._progress`, or :data:`DONE`.
        done: The stage's items finished.
        total: The most items the stage will run.
        time: When it happened, ``time.time()`` (comparable between the processes of one machine).
    """

    task: str
    stage: str
    done: int
    total: int
    time: float

    def to_line(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def from_line(cls, line: str) -> ProgressEvent | None:
        """The event of one line, ``None`` for a malformed line (a status display must not fail on one)."""
        try:
            raw = json.loads(line)
            return cls(
                str(raw["task"]), str(raw["stage"]), int(raw["done"]), int(raw["total"]), float(raw["time"])
            )
        except (ValueError, TypeError, KeyError):
            return None


class EventWriter:
    """A progress callback (``(stage, done, total)``, see :mod:`hgc_tune._progress`) appending ``task``'s
    events to ``path``."""

    def __init__(
        self, path: str | os.PathLike[str], task: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.task = task
        self.clock = clock

    def __call__(self, stage: str, done: int, total: int) -> None:
        line = ProgressEvent(self.task, stage, done, total, self.clock()).to_line().encode()
        # One write of one line in append mode: lines of several writers never interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


class EventReader:
    """Follows an event file: each :meth:`read` returns the events of the whole lines appended since."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def read(self) -> list[ProgressEvent]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:  # the child has not written yet
            return []
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        events = (ProgressEvent.from_line(line.decode("utf-8", errors="replace")) for line in lines)
        return [event for event in events if event is not None]
