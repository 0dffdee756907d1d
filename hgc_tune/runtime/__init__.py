"""Run context (step index, number of steps, CFG) and the hook registry the executor uses."""

from __future__ import annotations

from hgc_tune.runtime._compile import compile_regions
from hgc_tune.runtime._context import RunContext, attach_run_context, release_run_context, run_context
from hgc_tune.runtime._registry import has_hook, register_hook, remove_hook

__all__ = [
    "RunContext",
    "attach_run_context",
    "compile_regions",
    "has_hook",
    "register_hook",
    "release_run_context",
    "remove_hook",
    "run_context",
]
