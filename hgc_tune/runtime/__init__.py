"""Run context (step index, number of steps, CFG) and the hook registry the executor uses."""

from __future__ import annotations

from hgc_tune.runtime._compile import compile_regions
from hgc_tune.runtime._context import RunContext, attach_run_context, release_run_context, run_context

__all__ = ["RunContext", "attach_run_context", "compile_regions", "release_run_context", "run_context"]
