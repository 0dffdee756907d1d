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

from hgc_tune.errors import ReportError
from hgc_tune.report._build import FIGURES, INDEX_FILE, SUMMARY_FILE, ReportResult, build_report
from hgc_tune.report._figures import (
    DPI,
    plot_attention_drift,
    plot_block_similarity,
    plot_controlnet_residuals,
    plot_policy_grid,
    plot_samples,
    plot_step_macs,
    plot_tradeoff,
    save_figure,
)
from hgc_tune.report._grid import (
    COMPUTE,
    COND_ONLY,
    DROPPED,
    INSIDE_REUSED,
    REUSE,
    STATE_NAMES,
    PolicyGrid,
    policy_grid,
)
from hgc_tune.report._html import ReportFigure, render_html
from hgc_tune.report._labels import format_macs, format_percent, module_label, natural_order
from hgc_tune.report._pareto import (
    FULL_COMPUTE_PEER,
    PARETO_FORMAT,
    ParetoData,
    ParetoPoint,
    load_pareto,
    pareto_data_from_json,
)
from hgc_tune.report._samples import generate_policy_images, pipeline_for_profile, sample_indices
from hgc_tune.report._summary import fidelity_by_split, report_summary

__all__ = [
    "COMPUTE",
    "COND_ONLY",
    "DPI",
    "DROPPED",
    "FIGURES",
    "FULL_COMPUTE_PEER",
    "INDEX_FILE",
    "INSIDE_REUSED",
    "PARETO_FORMAT",
    "REUSE",
    "STATE_NAMES",
    "SUMMARY_FILE",
    "ParetoData",
    "ParetoPoint",
    "PolicyGrid",
    "ReportError",
    "ReportFigure",
    "ReportResult",
    "build_report",
    "fidelity_by_split",
    "format_macs",
    "format_percent",
    "generate_policy_images",
    "load_pareto",
    "module_label",
    "natural_order",
    "pareto_data_from_json",
    "pipeline_for_profile",
    "plot_attention_drift",
    "plot_block_similarity",
    "plot_controlnet_residuals",
    "plot_policy_grid",
    "plot_samples",
    "plot_step_macs",
    "plot_tradeoff",
    "policy_grid",
    "render_html",
    "report_summary",
    "sample_indices",
    "save_figure",
]
