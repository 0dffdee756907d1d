"""Timing of full versus policy generation, alternated in one run (these machines are noisy)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["BenchResult", "time_alternating", "machine_name"]


@dataclass(frozen=True)
class BenchResult:
    """Milliseconds per image (median over repeats) of two generators timed alternately."""

    baseline_ms: float
    policy_ms: float
    baseline_runs_ms: tuple[float, ...]
    policy_runs_ms: tuple[float, ...]
    images_per_run: int
    machine: str

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.policy_ms

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup}


def machine_name(device: str) -> str:
    """A short description of the machine a benchmark ran on."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def _timed(fn: Callable[[], Any], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def time_alternating(
    baseline: Callable[[], Any],
    policy: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    images_per_run: int = 1,
    device: str = "cpu",
) -> BenchResult:
    """Time ``baseline`` and ``policy`` alternately (ABAB…) after ``warmup`` runs of each.

    Alternation spreads drifts of the machine (clock, other load) over both sides equally.
    """
    for _ in range(warmup):
        baseline()
        policy()
    base_runs: list[float] = []
    policy_runs: list[float] = []
    for i in range(repeats):
        # alternate which side goes first so neither always follows the other
        order = ((base_runs, baseline), (policy_runs, policy))
        for runs, fn in order if i % 2 == 0 else order[::-1]:
            runs.append(_timed(fn, device) / images_per_run)
    return BenchResult(
        baseline_ms=statistics.median(base_runs),
        policy_ms=statistics.median(policy_runs),
        baseline_runs_ms=tuple(base_runs),
        policy_runs_ms=tuple(policy_runs),
        images_per_run=images_per_run,
        machine=machine_name(device),
    )
