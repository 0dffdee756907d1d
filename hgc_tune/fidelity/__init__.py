"""Fidelity metrics: how much a caching policy degrades generation, as a relative loss.

The fidelity loss of a policy is the relative degradation of a metric against the same samples run at full
compute (``(m_full − m_policy) / m_full`` for higher-is-better metrics, ``(m_policy − m_full) / m_full`` for
lower-is-better ones). *Task* metrics compare outputs with the input condition, following ControlNet++'s
controllability protocol (arXiv 2404.07987): ``seg`` → :func:`miou`, ``canny`` → :func:`edge_f1`,
``hed``/``lineart`` → SSIM of soft edges, ``depth`` → :func:`rmse`. *Reference* metrics compare with the
full-compute output: :func:`latent_rel_error`, :func:`psnr`, :func:`ssim`. *Prompt* metrics
(:data:`PROMPT_METRICS`) compare each output with its prompt: the CLIP score of a :class:`ClipScorer`
(:func:`load_clip_scorer`), a proxy for prompt adherence. Samples are paired (same seed at
full compute and under the policy), and :func:`paired_loss_bound` gives the loss with a one-sided confidence
bound; a policy is within a budget when that bound is. Several constraints, each with its own budget, are
scored on the same outputs by a :class:`ConstraintScorer` (a :class:`ConstrainedEstimate`); their bounds share
the confidence by Bonferroni, each at ``1 − (1 − c)/k``, and a policy is within budget only when every
bound is. :func:`evaluate_policy` measures a policy on a dataset
(every sample generated at full compute and under the policy), as a :class:`FidelityEstimate`'s figures. On
the shapes benchmark, :func:`background_adherence` reads the background a prompt names back from a picture
(a proxy of prompt adherence, which no condition map carries). :func:`prompt_metric_for` names the
metric that guards a model's prompt (the background reader for ``shapes``, a given CLIP model for a
checkpoint) as a :class:`PromptMetric`, and warns when a checkpoint has none.

Example:
    >>> from hgc_tune.fidelity import TaskEvaluator, evaluate_pairs
    >>> ev = TaskEvaluator("seg")  # shapes benchmark task models  # doctest: +SKIP
    >>> evaluate_pairs(full_images, policy_images, conditions, ev)["loss"]  # doctest: +SKIP
    0.012
"""

from __future__ import annotations

from hgc_tune.fidelity._background import (
    background_adherence,
    background_score,
    named_background,
    read_background,
)
from hgc_tune.fidelity._clip import ClipScorer, load_clip_scorer
from hgc_tune.fidelity._confidence import LossBound, paired_loss_bound
from hgc_tune.fidelity._evaluate import FidelityResult, TaskEvaluator, evaluate_pairs
from hgc_tune.fidelity._evaluate_policy import evaluate_policy
from hgc_tune.fidelity._metrics import edge_f1, latent_rel_error, miou, psnr, rmse, ssim
from hgc_tune.fidelity._prompt import PromptEvaluator
from hgc_tune.fidelity._prompt_guard import PromptMetric, prompt_metric_for
from hgc_tune.fidelity._registry import METRICS, PROMPT_METRICS, Metric, relative_loss
from hgc_tune.fidelity._scorer import ConstrainedEstimate, ConstraintScorer, FidelityEstimate
from hgc_tune.fidelity._task_models import load_segmenter

__all__ = [
    "METRICS",
    "PROMPT_METRICS",
    "ClipScorer",
    "ConstrainedEstimate",
    "ConstraintScorer",
    "PromptMetric",
    "FidelityEstimate",
    "FidelityResult",
    "LossBound",
    "Metric",
    "PromptEvaluator",
    "TaskEvaluator",
    "background_adherence",
    "background_score",
    "edge_f1",
    "evaluate_pairs",
    "evaluate_policy",
    "latent_rel_error",
    "load_clip_scorer",
    "load_segmenter",
    "miou",
    "named_background",
    "paired_loss_bound",
    "prompt_metric_for",
    "psnr",
    "read_background",
    "relative_loss",
    "rmse",
    "ssim",
]
