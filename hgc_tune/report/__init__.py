"""Reports: PNG figures and a self-contained ``index.html`` that show why a caching policy reuses what it
reuses (block similarity, cross-attention drift, ControlNet residual change, the policy over the heatmap),
what it costs (MACs per step, the search's trade-off against peer schedules) and what its images look like.

Example:
    >>> from hgc_tune.report import build_report
    >>> result = build_report("runs/tiny-seg", "reports/tiny-seg", policy="policies/tiny-seg.json",
    ...                       pareto="policies/tiny-seg.pareto.json", samples=2)  # doctest: +SKIP
    >>> sorted(result.figures)  # doctest: +SKIP
    ['attention_drift', 'controlnet_residuals', 'policy_grid', 'samples', ...]
"""

from __future__ import annotations

from hgc_tune.report._build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
