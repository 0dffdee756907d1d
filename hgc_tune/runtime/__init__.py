"""Run context (step index, number of steps, CFG) and the hook registry the executor uses."""

from __future__ import annotations

from hgc_tune.runtime._compile import compile_regions
from hgc_tune.runtime._context import (
    RunContext,
    attach_run_context,
    calling_pipeline,
    release_run_context,
    run_context,
)
from hgc_tune.runtime._registry import foreign_hooks, has_hook, register_hook, remove_hook, repair_hook

__all__ = [
    "RunContext",
    "attach_run_context",
    "calling_pipeline",
    "compile_regions",
    "foreign_hooks",
    "has_hook",
    "register_hook",
    "release_run_context",
    "remove_hook",
    "repair_hook",
    "run_context",
]
