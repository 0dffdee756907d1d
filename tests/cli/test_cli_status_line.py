"""The status line: events -> text, the time-left arithmetic, and how often it is printed (a fake clock)."""

from __future__ import annotations

import io
import threading

import pytest

from hgc_tune.cli._progress_file import DONE, ProgressEvent
from hgc_tune.cli._status_line import (
    LiveStatus,
    PlannedStage,
    StatusBoard,
    StatusPrinter,
    demo_plan,
    search_plan,
)

# profile: 2 samples; trials: 4, each about 1.5 samples; report: one item of about 6 samples
PLAN = [PlannedStage("profile", 2), PlannedStage("trial", 4, 1.5), PlannedStage("report", 1, 6.0)]


def _board() -> StatusBoard:
    return StatusBoard("demo", [["seg", "hed"], ["canny"]], {t: PLAN for t in ("seg", "hed", "canny")}, 100.0)


def _feed(board: StatusBoard, task: str, *events: tuple[str, int, int, float]) -> None:
    for stage, done, total, time in events:
        board.update(ProgressEvent(task, stage, done, total, time))


def test_the_line_names_each_running_task_its_stage_and_the_item_in_progress():
    board = _board()
    assert board.line(100.0) == "demo 0:00 | 0/3 done | starting"
    _feed(board, "seg", ("profile", 0, 2, 100.0))
    assert board.line(101.0) == "demo 0:01 | seg: profile 1/2 | 0/3 done | time left: estimating"
    _feed(board, "seg", ("profile", 1, 2, 102.0), ("profile", 2, 2, 104.0), ("trial", 0, 4, 105.0))
    _feed(board, "canny", ("trial", 2, 4, 106.0))  # a resumed study: trial 3 of 4 runs
    line = board.line(165.0)
    assert line.startswith("demo 1:05 | seg: trial 1/4 | canny: trial 3/4 | 0/3 done | ~")
    assert line.endswith(" left (estimate)")
    _feed(board, "canny", ("report", 1, 1, 110.0), (DONE, 1, 1, 110.0))
    assert "canny" not in board.line(111.0) and "1/3 done" in board.line(111.0)


def test_time_left_from_measured_rates_and_the_plan():
    board = _board()
    # seg's profile: 2 samples in 4 s, 2 s each; its trials start 1 s after its profile ended (setup)
    _feed(board, "seg", ("profile", 0, 2, 100.0), ("profile", 1, 2, 102.0), ("profile", 2, 2, 104.0))
    _feed(board, "seg", ("trial", 0, 4, 105.0))
    # seg: 4 trials at 2 s/sample x 1.5 = 12 s, report 2 x 6 = 12 s -> 24 s
    # hed (queued after seg): profile 2 x 2 = 4 s, trials 12 s + 1 s setup, report 12 s -> 29 s; lane 53 s
    # canny (the other lane, not started): 29 s
    assert board.seconds_left(105.0) == pytest.approx(53.0)
    # the first trial took 4 s: trials are now costed at 4 s each, here and for hed
    _feed(board, "seg", ("trial", 1, 4, 109.0))
    # seg: 3 trials x 4 s less the 1 s the running one has had = 11 s, report 12 s -> 23 s
    # hed: 4 + (16 + 1) + 12 = 33 s
    assert board.seconds_left(110.0) == pytest.approx(56.0)
    # a trial that overruns does not drive the estimate below the trials still to come
    assert board.seconds_left(130.0) == pytest.approx(2 * 4 + 12 + 33)


def test_time_left_is_unknown_until_something_is_measured():
    board = _board()
    _feed(board, "seg", ("profile", 0, 2, 100.0))
    assert board.seconds_left(150.0) is None
    assert board.line(150.0).endswith("time left: estimating")


def test_setup_before_the_first_item_is_not_counted_in_the_items_rate():
    board = _board()
    _feed(board, "seg", ("profile", 0, 2, 100.0))  # the demo: profiling starts (the pipeline loads)
    _feed(board, "seg", ("profile", 0, 2, 140.0), ("profile", 1, 2, 142.0))  # the profiler's own reports
    # 2 s per sample, not 42: 1 profile sample 2 s, trials 4 x 3 s, report 12 s, hed 4 + 12 + 12, canny
    assert board.seconds_left(142.0) == pytest.approx(2 + 12 + 12 + 28)


def test_a_lane_that_exits_early_shows_its_task_failed_and_the_rest_not_run():
    board = _board()
    _feed(board, "seg", ("profile", 0, 2, 100.0), ("profile", 1, 2, 102.0))
    _feed(board, "canny", ("profile", 0, 2, 100.0))
    board.lane_exited(0, -9)
    line = board.line(103.0)
    assert "seg: failed (exit -9)" in line and "hed: not run" in line and "canny: profile 1/2" in line
    assert board.stages() == (("seg", "failed"), ("hed", "failed"), ("canny", "profile"))
    board.update(ProgressEvent("seg", "profile", 2, 2, 104.0))  # a late event changes nothing
    assert "seg: failed (exit -9)" in board.line(104.0)
    # the failed lane has no time left; canny's profile has run 2 s of its 2 x 2 s (seg's rate), then
    # trials 12 s and report 12 s
    assert board.seconds_left(102.0) == pytest.approx(2 + 12 + 12)


def test_plans_of_the_search_and_the_demo():
    plan = search_plan(calibration=8, trials=20, validation=12, tries=2, test=12)
    assert [(p.stage, p.items, p.samples_per_item) for p in plan] == [
        ("trial", 20, 4.0),
        ("validation", 36, 1.0),
        ("test", 24, 1.0),
    ]
    assert [p.stage for p in search_plan(8, 20, 0, 2, 0)] == ["trial"]
    stages = [p.stage for p in demo_plan(8, 20, 12, 2, 12)]
    assert stages == ["profile", "trial", "validation", "test", "report"]


def test_on_a_terminal_the_line_is_redrawn_in_place_at_most_every_refresh_seconds():
    board = _board()
    _feed(board, "seg", ("profile", 0, 2, 100.0))
    stream = io.StringIO()
    printer = StatusPrinter(stream, tty=True, width=30, refresh=1.0)
    assert printer.show(board, 100.0)
    assert not printer.show(board, 100.5)
    assert printer.show(board, 101.0)
    printer.close(board, 101.2)  # the final line is drawn whatever the time, then ended
    draws = stream.getvalue().split("\r")[1:]
    assert len(draws) == 3 and stream.getvalue().endswith("\n")
    assert all(len(d.rstrip("\n")) <= 29 for d in draws)  # cut to the width: the line never wraps
    assert draws[0] == "demo 0:00 | seg: profile 1/2 "[:29]


def test_in_a_log_a_line_is_printed_on_a_change_of_stage_or_every_interval():
    board = _board()
    _feed(board, "seg", ("profile", 0, 2, 100.0))
    stream = io.StringIO()
    printer = StatusPrinter(stream, tty=False, interval=30.0)
    assert printer.show(board, 100.0)
    _feed(board, "seg", ("profile", 1, 2, 110.0))
    assert not printer.show(board, 110.0)  # the same stage, within 30 s
    _feed(board, "seg", ("trial", 0, 4, 120.0))
    assert printer.show(board, 120.0)  # another stage
    assert not printer.show(board, 149.0)
    assert printer.show(board, 150.0)
    printer.close(board, 151.0)  # says what the last line said: not again
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in stream.getvalue()
    assert lines[1].startswith("demo 0:20 | seg: trial 1/4")


class _Terminal(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.draws = threading.Semaphore(0)

    def isatty(self) -> bool:
        return True

    def flush(self) -> None:
        self.draws.release()


def test_live_status_redraws_from_its_thread_while_the_caller_works():
    board = StatusBoard("search", [["seg"]], {"seg": PLAN}, 0.0)
    terminal = _Terminal()
    clock = iter(float(t) for t in range(10_000))
    with LiveStatus(board, StatusPrinter(terminal, width=200), clock=lambda: next(clock), tick=0.01) as live:
        live.reporter("seg")("trial", 0, 4)
        for _ in range(3):  # the thread draws again without any report
            assert terminal.draws.acquire(timeout=10)
        live.reporter("seg")(DONE, 1, 1)
    assert "seg: trial 1/4" in terminal.getvalue()
    assert terminal.getvalue().rstrip().endswith("done") and terminal.getvalue().endswith("\n")
