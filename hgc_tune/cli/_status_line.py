"""The console status line: which task is in which stage, and an estimate of the time left.

:class:`StatusBoard` takes the progress events of tasks that run in lanes (processes side by side, each
running its tasks one after the other) and writes one line, e.g.::

    demo 2:31 | seg: trial 7/20 | canny: validation 15/36 | 1/4 done | ~4 min left (estimate)

``k/n`` is the item in progress out of the most the stage runs: a trial, or a generated sample (profile,
validation, test). :class:`StatusPrinter` shows the line on a stream (stderr): redrawn in place on a terminal,
one plain line per change of stage (or every 30 s) elsewhere, e.g. in a CI log. :class:`LiveStatus` keeps it
up to date from a background thread while the calling thread works (``hgc-tune search``).

**The time left is an estimate.** The line shows the longest lane's; a lane's is the sum over its tasks. A
running stage's remaining items take the seconds per item measured in it since its first report (a resumed
stage's earlier items do not count). A stage not started yet takes its planned items times the seconds per
item measured in the same stage of another task, or else times its planned samples per item times the measured
seconds per generated sample (profile, validation or test); plus the seconds the stage took to start in
another task (loading a pipeline). The planned items are upper bounds (a trial's sequential test usually stops
before the last calibration sample, the validation stops at the first policy that holds), so the estimate
tends to be high at first and settles as the stages are measured.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from hgc_tune._progress import PROFILE, REPORT, TEST, TRIALS, VALIDATION, ProgressCallback
from hgc_tune.cli._progress_file import DONE, ProgressEvent

__all__ = ["LiveStatus", "PlannedStage", "StatusBoard", "StatusPrinter", "search_plan"]

# A report draws its sample images (4 by default) and its figures: about 6 generated samples' time.
REPORT_SAMPLES = 6.0
# Stages whose items are generated samples: they measure the seconds per sample the other estimates use.
_SAMPLE_STAGES = (TEST, VALIDATION, PROFILE)


@dataclass(frozen=True)
class PlannedStage:
    """A stage a task will run: at most ``items`` items, each costing about ``samples_per_item`` generated
    samples (a prior, used until the stage itself is measured)."""

    stage: str
    items: int
    samples_per_item: float = 1.0


def search_plan(calibration: int, trials: int, validation: int, tries: int, test: int) -> list[PlannedStage]:
    """The stages of a search: ``trials`` trials on ``calibration`` samples, up to ``tries`` policies checked
    on ``validation`` samples (after their references), the chosen one on ``test`` samples (likewise)."""
    # A trial's sequential test stops early more often than not: take half the calibration samples.
    plan = [PlannedStage(TRIALS, trials, max(calibration / 2, 1.0))]
    if validation:
        plan.append(PlannedStage(VALIDATION, validation * (1 + tries)))
    if test:
        plan.append(PlannedStage(TEST, 2 * test))
    return plan


def demo_plan(calibration: int, trials: int, validation: int, tries: int, test: int) -> list[PlannedStage]:
    """The stages of one condition type of ``hgc-tune demo``: profile, search, report."""
    return [
        PlannedStage(PROFILE, calibration),
        *search_plan(calibration, trials, validation, tries, test),
        PlannedStage(REPORT, 1, REPORT_SAMPLES),
    ]


@dataclass
class _Task:
    plan: Sequence[PlannedStage]
    stage: str | None = None
    done: int = 0
    total: int = 0
    stage_start: float = 0.0
    start_done: int = 0
    last_progress: float = 0.0
    last_event: float | None = None
    previous_stage_end: float | None = None  # the previous stage's last report
    finished: bool = False
    exit_code: int | None = None  # the lane's, when it ended before this task did

    @property
    def running(self) -> bool:
        return self.stage is not None and not self.finished and self.exit_code is None

    def seconds_per_item(self) -> float | None:
        """Measured in the running stage since it started; ``None`` before its first item."""
        if self.done <= self.start_done:
            return None
        return (self.last_progress - self.stage_start) / (self.done - self.start_done)

    def later_stages(self) -> Sequence[PlannedStage]:
        names = [p.stage for p in self.plan]
        if self.stage is None:
            return self.plan
        return self.plan[names.index(self.stage) + 1 :] if self.stage in names else ()


class StatusBoard:
    """What each task is doing, fed with :class:`ProgressEvent` s, as one status line.

    Args:
        title: The line's first word (the command).
        lanes: The tasks of each lane, in the order the lane runs them.
        plans: Each task's planned stages.
        started: When the work started (``time.time()``).
    """

    def __init__(
        self,
        title: str,
        lanes: Sequence[Sequence[str]],
        plans: Mapping[str, Sequence[PlannedStage]],
        started: float,
    ) -> None:
        self.title = title
        self.lanes = [list(lane) for lane in lanes]
        self.started = started
        self._tasks = {name: _Task(tuple(plans.get(name, ()))) for lane in self.lanes for name in lane}
        self._rates: dict[str, float] = {}  # stage -> seconds per item, the latest measured
        self._setup: dict[str, float] = {}  # stage -> seconds before its first item (loading), the latest
        self._samples_per_item = {p.stage: p.samples_per_item for plan in plans.values() for p in plan}

    def update(self, event: ProgressEvent) -> None:
        task = self._tasks.get(event.task)
        if task is None or task.finished or task.exit_code is not None:
            return
        if event.stage == DONE:
            task.finished = True
            return
        if event.stage != task.stage:
            task.stage, task.start_done, task.previous_stage_end = event.stage, event.done, task.last_event
            self._start_stage(task, event.time)
        elif task.done == task.start_done and event.done == task.done:
            # No item done yet: the stage was still setting up (loading a pipeline); measure from here.
            self._start_stage(task, event.time)
        elif event.done != task.done:
            task.last_progress = event.time
        task.done, task.total = event.done, event.total
        task.last_event = event.time
        rate = task.seconds_per_item()
        if rate is not None:
            self._rates[event.stage] = rate

    def _start_stage(self, task: _Task, now: float) -> None:
        task.stage_start = task.last_progress = now
        if task.previous_stage_end is not None:
            self._setup[str(task.stage)] = now - task.previous_stage_end

    def lane_exited(self, lane: int, code: int) -> None:
        """Lane ``lane``'s process ended with ``code``: its tasks that did not report :data:`DONE` failed."""
        for name in self.lanes[lane]:
            task = self._tasks[name]
            if not task.finished:
                task.exit_code = code

    def stages(self) -> tuple[tuple[str, str], ...]:
        """Each task's stage, ``done`` or ``failed`` (a change of these is worth a line in a log)."""
        return tuple((name, _state(task)) for name, task in self._tasks.items())

    def line(self, now: float) -> str:
        parts = [f"{self.title} {_clock(now - self.started)}"]
        for name, task in self._tasks.items():
            if task.running:
                parts.append(f"{name}: {_stage_text(task)}")
            elif task.exit_code is not None:
                parts.append(f"{name}: failed (exit {task.exit_code})" if task.stage else f"{name}: not run")
        finished = sum(task.finished for task in self._tasks.values())
        if len(self._tasks) > 1:
            parts.append(f"{finished}/{len(self._tasks)} done")
        elif finished:
            parts.append("done")
        if any(task.running for task in self._tasks.values()):
            left = self.seconds_left(now)
            parts.append("time left: estimating" if left is None else f"~{_duration(left)} left (estimate)")
        elif not any(task.stage for task in self._tasks.values()) and not finished:
            parts.append("starting")
        return " | ".join(parts)

    def seconds_left(self, now: float) -> float | None:
        """The estimated seconds until every lane is done (see the module's docstring); ``None``: nothing
        measured yet to estimate from."""
        lanes = []
        for lane in self.lanes:
            seconds = 0.0
            for name in lane:
                task = self._tasks[name]
                if task.finished or task.exit_code is not None:
                    continue
                left = self._task_left(task, now)
                if left is None:
                    return None
                seconds += left
            lanes.append(seconds)
        return max(lanes, default=0.0)

    def _task_left(self, task: _Task, now: float) -> float | None:
        seconds = 0.0
        if task.stage is not None:
            rate = task.seconds_per_item() or self._item_seconds(task.stage)
            if rate is None:
                return None
            items = max(task.total - task.done, 0)
            # The item in progress has been running since the last report: count down within it.
            seconds = max(rate * items - (now - task.last_progress), rate * (items - 1), 0.0)
        for planned in task.later_stages():
            rate = self._item_seconds(planned.stage, planned.samples_per_item)
            if rate is None:
                return None
            seconds += rate * planned.items + self._setup.get(planned.stage, 0.0)
        return seconds

    def _item_seconds(self, stage: str, samples_per_item: float | None = None) -> float | None:
        if stage in self._rates:
            return self._rates[stage]
        per_sample = next((self._rates[s] for s in _SAMPLE_STAGES if s in self._rates), None)
        if per_sample is None and TRIALS in self._rates:
            per_sample = self._rates[TRIALS] / self._samples_per_item.get(TRIALS, 1.0)
        if per_sample is None:
            return None
        if samples_per_item is None:
            samples_per_item = self._samples_per_item.get(stage, 1.0)
        return per_sample * samples_per_item


def _state(task: _Task) -> str:
    if task.finished:
        return DONE
    return "failed" if task.exit_code is not None else task.stage or ""


def _stage_text(task: _Task) -> str:
    if task.total <= 0:
        return str(task.stage)
    return f"{task.stage} {min(task.done + 1, task.total)}/{task.total}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(int(seconds), 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(round(seconds), 1)} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class StatusPrinter:
    """Shows a :class:`StatusBoard`'s line on ``stream``.

    On a terminal the line is redrawn in place (carriage return) at most every ``refresh`` seconds, cut to the
    terminal's width so that it never wraps; elsewhere (a log file, CI) a plain line is printed when a task
    changes stage, and otherwise at most every ``interval`` seconds.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        width: int | None = None,
        refresh: float = 1.0,
        interval: float = 30.0,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.width = width
        self.refresh = refresh
        self.interval = interval
        self._last: float | None = None
        self._stages: tuple = ()
        self._drawn = 0

    def show(self, board: StatusBoard, now: float, *, force: bool = False) -> bool:
        """Print the line if it is due; returns whether it printed."""
        stages = board.stages()
        if not force and self._last is not None:
            if self.tty and now - self._last < self.refresh:
                return False
            if not self.tty and stages == self._stages and now - self._last < self.interval:
                return False
        line = board.line(now)
        if self.tty:
            width = self.width or shutil.get_terminal_size().columns
            line = line[: max(width - 1, 20)]
            self.stream.write("\r" + line + " " * max(self._drawn - len(line), 0))
            self._drawn = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last, self._stages = now, stages
        return True

    def close(self, board: StatusBoard, now: float) -> None:
        """The final line (in a log, unless it says what the last one said); on a terminal, ended so that
        what follows starts on a line of its own."""
        self.show(board, now, force=self.tty)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class LiveStatus:
    """A status line kept up to date every ``tick`` seconds by a background thread, for work that runs in this
    process; use it as a context manager and pass :meth:`reporter` to the work as its progress callback."""

    def __init__(
        self,
        board: StatusBoard,
        printer: StatusPrinter,
        *,
        clock: Callable[[], float] = time.time,
        tick: float = 1.0,
    ) -> None:
        self.board = board
        self.printer = printer
        self.clock = clock
        self.tick = tick
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hgc-tune-status", daemon=True)

    def reporter(self, task: str) -> ProgressCallback:
        def report(stage: str, done: int, total: int) -> None:
            self.update(ProgressEvent(task, stage, done, total, self.clock()))

        return report

    def update(self, event: ProgressEvent) -> None:
        with self._lock:
            self.board.update(event)
            self.printer.show(self.board, event.time)

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            with self._lock:
                self.printer.show(self.board, self.clock())

    def __enter__(self) -> LiveStatus:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self.printer.close(self.board, self.clock())
