"""hgc-tune: Hybrid-Grained Cache for Stable Diffusion + ControlNet.

Block-level reuse of U-Net and ControlNet features across denoising steps and prompt-level reuse of
cross-attention within windows of steps (HGC, arXiv 2511.11031), with a profiler, an Optuna policy search
under a fidelity budget, a strict policy file format and an executor that applies it to any diffusers
``StableDiffusionControlNetPipeline``.

The public API is re-exported here lazily, so ``import hgc_tune`` (and ``hgc-tune --help``) does not import
torch or diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "HgcTuneError": "hgc_tune.errors",
    "load_pipeline": "hgc_tune.models",
    "model_fingerprint": "hgc_tune.models",
    "RunContext": "hgc_tune.runtime",
    "run_context": "hgc_tune.runtime",
    "MacTable": "hgc_tune.macs",
    "count_pipeline_macs": "hgc_tune.macs",
    "Policy": "hgc_tune.policy",
    "PolicyFile": "hgc_tune.policy",
    "load_policy": "hgc_tune.policy",
    "save_policy": "hgc_tune.policy",
    "apply_policy": "hgc_tune.executor",
    "PolicyHandle": "hgc_tune.executor",
    "policy_handle": "hgc_tune.executor",
    "policy_macs": "hgc_tune.policy",
    "Profile": "hgc_tune.profile",
    "profile_pipeline": "hgc_tune.profile",
    "open_dataset": "hgc_tune.data",
    "Dataset": "hgc_tune.data",
    "TaskEvaluator": "hgc_tune.fidelity",
    "paired_loss_bound": "hgc_tune.fidelity",
    "SearchConfig": "hgc_tune.search",
    "search_policy": "hgc_tune.search",
    "build_report": "hgc_tune.report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hgc_tune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
