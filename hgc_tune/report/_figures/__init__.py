"""The report's figures: matplotlib ``Figure`` objects (no pyplot state, Agg rendering) styled with seaborn.

One module per figure family, each drawing what the matching ``_get_..._info`` function of
:mod:`hgc_tune.report._figure_info` chose (the shape of Optuna's ``optuna.visualization.matplotlib``). Every
``plot_...`` function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes it as a PNG.
Colours read the same way on every heatmap: yellow = stable from one step to the next (cache-friendly),
dark = changing. Step 0 has no previous step and is drawn grey.
"""

from __future__ import annotations

from hgc_tune.report._figures._base import DPI, save_figure
from hgc_tune.report._figures._heatmaps import plot_attention_drift, plot_block_similarity
from hgc_tune.report._figures._policy_grid import plot_policy_grid
from hgc_tune.report._figures._residuals import plot_controlnet_residuals
from hgc_tune.report._figures._samples import plot_samples
from hgc_tune.report._figures._step_macs import plot_step_macs
from hgc_tune.report._figures._tradeoff import plot_tradeoff

__all__ = [
    "DPI",
    "plot_attention_drift",
    "plot_block_similarity",
    "plot_controlnet_residuals",
    "plot_policy_grid",
    "plot_samples",
    "plot_step_macs",
    "plot_tradeoff",
    "save_figure",
]
