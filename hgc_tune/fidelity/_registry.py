"""The metric registry: what each metric name means and how its value turns into a fidelity loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from hgc_tune.errors import FidelityError
from hgc_tune.fidelity import _background, _clip, _metrics

__all__ = [
    "CONDITION_TYPES",
    "METRICS",
    "PROMPT_METRICS",
    "Metric",
    "check_metric_fits",
    "default_metric",
    "get_metric",
    "lookup_metric",
    "relative_loss",
]

CONDITION_TYPES: tuple[str, ...] = ("seg", "canny", "hed", "lineart", "depth")
"""Condition types that have a task metric; every other type (or none) falls back to a reference metric."""


def relative_loss(m_full: float, m_policy: float, higher_is_better: bool) -> float:
    """Relative degradation of a metric from full compute to a policy.

    ``(m_full − m_policy) / m_full`` for a higher-is-better metric, ``(m_policy − m_full) / m_full`` for
    a lower-is-better one. Positive means the policy is worse; a policy that scores better than full
    compute gets a negative loss (not clamped, so the caller sees it).

    Args:
        m_full: the metric at full compute; the denominator, so it must be finite and ``> 0``.
        m_policy: the metric under the policy.
        higher_is_better: the metric's direction.

    Raises:
        FidelityError: ``m_full <= 0`` (no epsilon is added: a full-compute score of 0 means the metric
            cannot measure degradation on these samples, and a fudge would hide that) or a value not finite.

    Example:
        >>> relative_loss(0.80, 0.78, higher_is_better=True)  # mIoU 0.80 -> 0.78
        0.025000000000000022
    """
    m_full, m_policy = float(m_full), float(m_policy)
    if not math.isfinite(m_full):
        raise FidelityError(f"`m_full` must be finite, but got m_full={m_full}.")
    if not math.isfinite(m_policy):
        raise FidelityError(f"`m_policy` must be finite, but got m_policy={m_policy}.")
    if m_full <= 0.0:
        raise FidelityError(
            f"a relative loss needs the full-compute value `m_full` > 0 (it is the denominator), but got "
            f"m_full={m_full}; the metric cannot measure degradation on these samples, so pick another "
            "metric or other samples."
        )
    diff = m_full - m_policy if higher_is_better else m_policy - m_full
    return diff / m_full


@dataclass(frozen=True)
class Metric:
    """One fidelity metric.

    Attributes:
        name: the registry name (``miou``, ``psnr``, …), used in policies' provenance and on the CLI.
        fn: the pure metric function ``fn(pred, target) -> float`` on arrays. For task metrics the
            arguments are the maps a task model extracts from the output and from the condition (class
            maps, edge maps, soft-edge maps, depth maps); for reference metrics they are the policy's
            output and the full-compute output (images or latents); for prompt metrics they are what a
            scorer extracts from the output and from its prompt (CLIP's image and text embeddings).
        higher_is_better: the metric's direction.
        kind: ``"task"`` (compares against the input condition), ``"reference"`` (against the
            full-compute output) or ``"prompt"`` (against the sample's prompt, scored at full compute and
            under the policy like a task metric; see :data:`PROMPT_METRICS`).
        condition_types: the condition types a task metric fits; empty for reference and prompt metrics,
            which fit every type.
        ideal: a reference metric's value for the full-compute output compared with itself (SSIM 1, PSNR
            its cap, latent error 0); ``None`` for task metrics, whose full-compute value is measured.
        loss_mode: how ``(m_full, m_policy)`` becomes a loss: ``"relative"`` = :func:`relative_loss`;
            ``"absolute"`` = the plain degradation ``m_policy − m_full`` (lower-is-better) or
            ``m_full − m_policy``, for a metric that is already relative and whose full value is 0.
        description: one line for help texts and reports.
    """

    name: str
    fn: Callable[..., float]
    higher_is_better: bool
    kind: Literal["task", "reference", "prompt"]
    condition_types: frozenset[str] = frozenset()
    ideal: float | None = None
    loss_mode: Literal["relative", "absolute"] = "relative"
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("task", "reference", "prompt"):
            raise FidelityError(
                f"`kind` must be 'task', 'reference' or 'prompt', but got kind={self.kind!r}."
            )
        if self.loss_mode not in ("relative", "absolute"):
            raise FidelityError(
                f"`loss_mode` must be 'relative' or 'absolute', but got loss_mode={self.loss_mode!r}."
            )
        if self.kind == "reference" and self.ideal is None:
            raise FidelityError(
                f"the reference metric {self.name!r} needs `ideal` (its value against itself)."
            )
        if self.kind == "task" and not self.condition_types:
            raise FidelityError(f"the task metric {self.name!r} needs the `condition_types` it fits.")
        if self.kind == "prompt" and self.condition_types:
            raise FidelityError(
                f"the prompt metric {self.name!r} fits every condition type, so it takes no "
                f"`condition_types`, but got condition_types={sorted(self.condition_types)}."
            )

    def fits(self, condition_type: str | None) -> bool:
        """Whether this metric can score outputs generated under ``condition_type``."""
        return self.kind != "task" or condition_type in self.condition_types

    def loss(self, m_full: float, m_policy: float) -> float:
        """The fidelity loss of a policy whose (mean) metric is ``m_policy`` against ``m_full``.

        Task metrics and the reference SSIM/PSNR use :func:`relative_loss`; for reference metrics
        ``m_full`` is :attr:`ideal`, so SSIM's loss is ``1 − ssim`` and PSNR's is ``(cap − psnr) / cap``,
        both in ``[0, ∞)``. ``latent_rel_error`` is already relative and its ideal is 0, so its loss is
        the policy's error itself.
        """
        if self.loss_mode == "relative":
            return relative_loss(m_full, m_policy, self.higher_is_better)
        diff = float(m_full) - float(m_policy)
        return diff if self.higher_is_better else -diff


def _build_registry() -> dict[str, Metric]:
    metrics = [
        Metric(
            name="miou",
            fn=_metrics.miou,
            higher_is_better=True,
            kind="task",
            condition_types=frozenset({"seg"}),
            description="mIoU of a segmentation of the output vs the condition's class map",
        ),
        Metric(
            name="edge_f1",
            fn=_metrics.edge_f1,
            higher_is_better=True,
            kind="task",
            condition_types=frozenset({"canny"}),
            description="F1 of Canny edges of the output vs the condition's edge map (1 px tolerance)",
        ),
        Metric(
            name="edge_ssim",
            fn=_metrics.ssim,
            higher_is_better=True,
            kind="task",
            condition_types=frozenset({"hed", "lineart"}),
            description="SSIM of the output's soft-edge map vs the condition",
        ),
        Metric(
            name="depth_rmse",
            fn=_metrics.rmse,
            higher_is_better=False,
            kind="task",
            condition_types=frozenset({"depth"}),
            description="RMSE of the output's estimated depth vs the condition depth, both in [0, 1]",
        ),
        Metric(
            name="latent_rel_error",
            fn=_metrics.latent_rel_error,
            higher_is_better=False,
            kind="reference",
            ideal=0.0,
            loss_mode="absolute",
            description="||z_policy − z_full|| / ||z_full|| of the final latents",
        ),
        Metric(
            name="psnr",
            fn=_metrics.psnr,
            higher_is_better=True,
            kind="reference",
            ideal=_metrics.PSNR_CAP_DB,
            description=f"PSNR of the output vs the full output, capped at {_metrics.PSNR_CAP_DB:g} dB",
        ),
        Metric(
            name="ssim",
            fn=_metrics.ssim,
            higher_is_better=True,
            kind="reference",
            ideal=1.0,
            description="SSIM of the output vs the full-compute output",
        ),
    ]
    return {m.name: m for m in metrics}


METRICS: Mapping[str, Metric] = MappingProxyType(_build_registry())
"""Every task and reference metric by name (read-only)."""

PROMPT_METRICS: Mapping[str, Metric] = MappingProxyType(
    {
        "clip": Metric(
            name="clip",
            fn=_clip.clip_score,
            higher_is_better=True,
            kind="prompt",
            description="CLIP score 100·max(cos(image, prompt), 0) of the output with its prompt "
            "(ControlNet++'s protocol; a proxy for prompt adherence)",
        ),
        "background": Metric(
            name="background",
            fn=_background.background_score,
            higher_is_better=True,
            kind="prompt",
            # A score in [0, 1] like a rate: its loss is the drop in points (0.015 = 1.5 points), defined
            # whatever the full-compute mean, even 0.
            loss_mode="absolute",
            description="shapes benchmark: how surely the picture shows the background its prompt names, in "
            "[0, 1] (a proxy for prompt adherence; the loss is the drop of the mean, in points)",
        ),
    }
)
"""Prompt-adherence metrics by name (read-only): each scores an output against the prompt it was generated
from, so it guards what the condition does not carry. They are per sample and reference-free: each sample is
scored at full compute and under the policy, and the loss and its bound follow as for a task metric
(``paired_loss_bound(full, policy, PROMPT_METRICS["clip"])``: the relative drop of the mean score).

``background`` is the shapes benchmark's proxy (:func:`~hgc_tune.fidelity.background_score`): how surely
the background a prompt names is read back from the picture, in ``[0, 1]`` (the soft form of the 0/1
:func:`~hgc_tune.fidelity.background_adherence`, so that paired differences have a spread and the bound is
not understated on rare flips). Its mean is rate-like, so its loss is the absolute drop
(``loss_mode="absolute"``: 0.015 = 1.5 points), not a drop relative to the full-compute mean, which would
make the same loss weigh more on a condition type the model follows the prompt less on, and be undefined at
0.

``clip`` needs a CLIP model, so its scores come from a :class:`~hgc_tune.fidelity.ClipScorer`
(``scorer(images, prompts)``, one score per pair) rather than from ``fn`` on images; ``fn`` is the formula
on the two embeddings. They are kept apart from :data:`METRICS` because :func:`get_metric` and the task
evaluator take one output and its condition or reference, not its prompt.
"""

_DEFAULTS: Mapping[str, str] = MappingProxyType(
    {"seg": "miou", "canny": "edge_f1", "hed": "edge_ssim", "lineart": "edge_ssim", "depth": "depth_rmse"}
)
_FALLBACK = "ssim"


def get_metric(metric: str | Metric) -> Metric:
    """The :class:`Metric` named ``metric`` (a :class:`Metric` is returned as is).

    Raises:
        FidelityError: an unknown name; the message lists the known ones.
    """
    if isinstance(metric, Metric):
        return metric
    try:
        return METRICS[metric]
    except (KeyError, TypeError):
        raise FidelityError(
            f"unknown fidelity metric metric={metric!r}; known metrics: {', '.join(sorted(METRICS))}."
        ) from None


def lookup_metric(metric: str | Metric) -> Metric:
    """The :class:`Metric` named ``metric`` among :data:`METRICS` and :data:`PROMPT_METRICS`.

    Raises:
        FidelityError: an unknown name; the message lists the known ones.
    """
    if isinstance(metric, Metric):
        return metric
    for registry in (METRICS, PROMPT_METRICS):
        if isinstance(metric, str) and metric in registry:
            return registry[metric]
    known = sorted({*METRICS, *PROMPT_METRICS})
    raise FidelityError(f"unknown fidelity metric metric={metric!r}; known metrics: {', '.join(known)}.")


def default_metric(condition_type: str | None) -> Metric:
    """The metric used for ``condition_type`` when none is asked for.

    ``seg`` → ``miou``, ``canny`` → ``edge_f1``, ``hed``/``lineart`` → ``edge_ssim``, ``depth`` →
    ``depth_rmse`` (ControlNet++'s controllability protocol); any other type, or ``None``, → the
    reference ``ssim`` against the full-compute output.
    """
    return METRICS[_FALLBACK if condition_type is None else _DEFAULTS.get(condition_type, _FALLBACK)]


def check_metric_fits(metric: str | Metric, condition_type: str | None) -> Metric:
    """Check that ``metric`` can score ``condition_type`` outputs and return the :class:`Metric`.

    Reference metrics fit every condition type; a task metric fits only the types it was made for.

    Raises:
        FidelityError: an unknown metric, or a task metric that does not fit ``condition_type``.
    """
    m = get_metric(metric)
    if not m.fits(condition_type):
        fitting = sorted(n for n, x in METRICS.items() if x.fits(condition_type))
        raise FidelityError(
            f"the task metric metric={m.name!r} scores condition types {sorted(m.condition_types)}, "
            f"not condition_type={condition_type!r}; metrics that fit {condition_type!r}: "
            f"{', '.join(fitting)}."
        )
    return m
