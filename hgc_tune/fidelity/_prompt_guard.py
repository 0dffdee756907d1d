"""Which metric guards a model's prompt adherence, and the record of it that profiles and policies keep.

A task metric checks the condition; what only the prompt carries needs a metric of its own. For the embedded
``shapes`` model that is :func:`~hgc_tune.fidelity.background_adherence` (the background only the prompt
names, read back from the picture: a proxy); for a real checkpoint it is the CLIP score of a
:class:`~hgc_tune.fidelity.ClipScorer` given by the user (ControlNet++'s protocol, a proxy too). A real
checkpoint without one is *unguarded*: :func:`prompt_metric_for` warns with
:class:`~hgc_tune.errors.PromptUnguardedWarning`, and the record says so. The random-weight presets (``tiny``,
``sd15``, ``tiny-sdxl``, ``sdxl``) draw noise, which no prompt metric could read: they are neither guarded
nor warned about.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hgc_tune.errors import FidelityError, PromptUnguardedWarning
from hgc_tune.fidelity._confidence import paired_loss_bound
from hgc_tune.fidelity._registry import PROMPT_METRICS, Metric

if TYPE_CHECKING:
    from hgc_tune._typing import ArrayInput
    from hgc_tune.fidelity._clip import ClipScorer

__all__ = ["PromptMetric", "is_real_checkpoint", "prompt_fidelity", "prompt_metric_for"]

# The model whose prompt the background reader can read: its prompts name a benchmark background.
_SHAPES = "shapes"


def is_real_checkpoint(model: str) -> bool:
    """Whether ``model`` names a checkpoint (a local diffusers folder or a hub id) rather than one of the
    embedded presets (``shapes`` and the random-weight ones)."""
    from hgc_tune.models._presets import PRESETS

    return model not in PRESETS


@dataclass(frozen=True)
class PromptMetric:
    """The metric that guards a model's prompt adherence, or none.

    Attributes:
        metric: The :class:`~hgc_tune.fidelity.Metric` (``kind="prompt"``), or ``None``: unguarded.
        model: The CLIP model's path or hub id (CLIP score only).
        digest: A digest of the CLIP model's weights (CLIP score only).
        scorer: ``scorer(images, prompts)`` -> one score per pair, or ``None``.
    """

    metric: Metric | None = None
    model: str | None = None
    digest: str | None = None
    scorer: Callable[[Sequence[Any], Sequence[str]], np.ndarray] | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def guarded(self) -> bool:
        """Whether there is a prompt metric."""
        return self.metric is not None and self.scorer is not None

    def scores(self, images: Sequence[ArrayInput], prompts: Sequence[str]) -> np.ndarray:
        """One score per image–prompt pair (float64).

        Raises:
            FidelityError: No prompt metric, or ``images`` and ``prompts`` differ in length.
        """
        if self.scorer is None or self.metric is None:
            raise FidelityError("the prompt is unguarded: there is no prompt metric to score with.")
        if len(images) != len(prompts):
            raise FidelityError(
                f"`images` and `prompts` must have one entry per sample, but got len(images)={len(images)} "
                f"and len(prompts)={len(prompts)}."
            )
        return np.asarray(self.scorer(images, prompts), dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """The record profiles, policies and reports keep: ``guarded``, ``metric`` (its name or ``None``),
        ``model`` and ``digest`` (the CLIP model's, else ``None``)."""
        return {
            "guarded": self.guarded,
            "metric": None if self.metric is None else self.metric.name,
            "model": self.model,
            "digest": self.digest,
        }


def _background_scores(images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
    from hgc_tune.fidelity._prompt import PromptEvaluator

    return np.asarray(PromptEvaluator("background").score_many(images, prompts))


def prompt_metric_for(model: str, clip: ClipScorer | None = None, *, warn: bool = True) -> PromptMetric:
    """The prompt metric of ``model``: the CLIP score of ``clip`` when given; else, for ``shapes``, the
    background reader; else none, with a :class:`~hgc_tune.errors.PromptUnguardedWarning` for a real
    checkpoint (``warn=False``: silently).

    Example:
        >>> prompt_metric_for("shapes").to_json()
        {'guarded': True, 'metric': 'background', 'model': None, 'digest': None}
        >>> prompt_metric_for("tiny").guarded
        False
    """
    if clip is not None:
        return PromptMetric(PROMPT_METRICS["clip"], model=clip.source, digest=clip.digest, scorer=clip)
    if model == _SHAPES:
        return PromptMetric(PROMPT_METRICS["background"], scorer=_background_scores)
    if warn and is_real_checkpoint(model):
        warnings.warn(
            f"prompt unguarded: model {model!r} is a checkpoint and no CLIP model scores its prompt "
            "adherence, so a policy may lose what only the prompt carries; pass --clip PATH|ID (e.g. "
            "openai/clip-vit-large-patch14).",
            PromptUnguardedWarning,
            stacklevel=2,
        )
    return PromptMetric()


def prompt_fidelity(
    prompt_metric: PromptMetric,
    full_images: Sequence[ArrayInput],
    policy_images: Sequence[ArrayInput],
    prompts: Sequence[str],
    *,
    confidence: float,
) -> dict[str, Any]:
    """The prompt metric at full compute and under a policy on the same samples, paired: the means, the
    relative loss of the means and its one-sided upper bound at ``confidence``, per-sample scores.

    Returns:
        :meth:`PromptMetric.to_json` plus ``full``, ``policy``, ``loss``, ``loss_upper`` (``None``:
        unbounded), ``confidence``, ``samples``, ``per_sample_full`` and ``per_sample_policy``; or, where the
        samples cannot be scored (a prompt that names no benchmark background, a full-compute mean of 0),
        :meth:`PromptMetric.to_json` plus ``unscored``: why.

    Raises:
        FidelityError: An unguarded metric.
    """
    if prompt_metric.metric is None:
        raise FidelityError("the prompt is unguarded: there is no prompt metric to measure.")
    try:
        full = [float(v) for v in prompt_metric.scores(full_images, prompts)]
        policy = [float(v) for v in prompt_metric.scores(policy_images, prompts)]
        bound = paired_loss_bound(full, policy, prompt_metric.metric, confidence)
    except FidelityError as e:
        return {**prompt_metric.to_json(), "unscored": str(e)}
    return {
        **prompt_metric.to_json(),
        "full": float(np.mean(full)),
        "policy": float(np.mean(policy)),
        "loss": bound.loss,
        "loss_upper": bound.upper if math.isfinite(bound.upper) else None,
        "confidence": bound.confidence,
        "samples": len(full),
        "per_sample_full": full,
        "per_sample_policy": policy,
    }
