"""MAC accounting: per-module MACs of a pipeline in two labelled conventions, and of whole generations.

One multiply-accumulate = 1. ``paper``: fvcore's default count (``fvcore.nn.FlopCountAnalysis``), which skips
``aten::scaled_dot_product_attention``; for SD1.5 + ControlNet, 512², 20 steps with CFG, its U-Net +
ControlNet total is the HGC paper's 18.22T (arXiv 2511.11031). ``complete``: ``paper`` plus the attention
products QKᵀ and AV.

Example:
    >>> from hgc_tune.models import load_pipeline
    >>> table = count_pipeline_macs(load_pipeline("tiny"), height=64, width=64, model_name="tiny")
    >>> macs = table.generation_macs(steps=20, cfg=True, convention="paper")
    >>> sum(macs["blocks"].values()) == macs["total"]
    True
"""

from __future__ import annotations

from hgc_tune.macs._executed import ExecutedMacs, count_executed_macs
from hgc_tune.macs._pipeline import count_pipeline_macs
from hgc_tune.macs._table import MacTable

__all__ = ["ExecutedMacs", "MacTable", "count_executed_macs", "count_pipeline_macs"]
