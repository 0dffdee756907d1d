"""Benchmarks: full versus policy generation timed alternately in one run."""

from __future__ import annotations

from hgc_tune.bench._timing import BenchResult, time_alternating

__all__ = ["BenchResult", "time_alternating"]
