"""Progress callbacks: how a long stage says how far it got, to whoever shows it (the CLI's status line).

A stage calls ``on_progress(stage, done, total)`` when it starts and after each item: ``stage`` is one of the
names below, ``done`` the items finished so far and ``total`` the most items the stage will run. ``total`` may
shrink while the stage runs (a sequential check that stops early, or references read from the cache, need
fewer samples) but never grows. The callback must be cheap: it runs between generations.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["PROFILE", "REPORT", "TEST", "TRIALS", "VALIDATION", "ProgressCallback"]

ProgressCallback = Callable[[str, int, int], None]

# The stages, in the order a condition type goes through them.
PROFILE = "profile"  # items: calibration samples generated with the observation hooks
TRIALS = "trial"  # items: trials finished in the study (every worker's)
VALIDATION = "validation"  # items: validation samples generated (full-compute references, then candidates)
TEST = "test"  # items: test samples generated (full-compute references, then the chosen policy)
REPORT = "report"  # one item: the report written
