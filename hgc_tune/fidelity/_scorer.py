"""Scoring a policy's outputs against full-compute references of the same samples, one sample at a time.

The fidelity loss is a loss of means: ``metric.loss(mean m_full, mean m_policy)`` over the samples, reported
with its paired one-sided upper confidence bound (:func:`hgc_tune.fidelity.paired_loss_bound`).
:class:`FidelityScorer` consumes the policy's outputs lazily and tests sequentially: a policy gets more
samples only while its bound straddles the budget, so a clear failure (lower bound above the budget) or a
clear pass (upper bound within it) stops generating early.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hgc_tune.errors import FidelityError, SearchError
from hgc_tune.fidelity._confidence import check_confidence, paired_loss_bound

if TYPE_CHECKING:
    from hgc_tune.fidelity._evaluate import TaskEvaluator
    from hgc_tune.generation import GeneratedOutput

__all__ = ["FidelityEstimate", "FidelityScorer"]

# Metrics that compare final latents rather than decoded images.
_LATENT_METRICS = frozenset({"latent_rel_error"})


@dataclass(frozen=True)
class FidelityEstimate:
    """The fidelity of a policy on (a prefix of) a set of samples.

    Attributes:
        metric: The metric's name.
        full: Mean metric at full compute over the evaluated samples.
        policy: Mean metric under the policy over the evaluated samples.
        loss: ``metric.loss(full, policy)``, the loss of the means.
        samples: How many samples were evaluated.
        total: How many samples there were.
        rejected_early: Whether evaluation stopped early because the loss broke the budget clearly.
        per_sample_full: The full-compute metric of each evaluated sample.
        per_sample_policy: The policy's metric of each evaluated sample.
        upper: The one-sided upper confidence bound of ``loss`` at ``confidence`` (``None``: unbounded).
        lower: The one-sided lower confidence bound (``None``: unbounded).
        confidence: The confidence level of the bounds (``0``: they equal the loss).
        accepted_early: Whether evaluation stopped early because the upper bound was already within budget.
    """

    metric: str
    full: float
    policy: float
    loss: float
    samples: int
    total: int
    rejected_early: bool = False
    per_sample_full: tuple[float, ...] = field(default=())
    per_sample_policy: tuple[float, ...] = field(default=())
    upper: float | None = None
    lower: float | None = None
    confidence: float = 0.0
    accepted_early: bool = False

    @property
    def loss_upper(self) -> float:
        """The upper confidence bound of the loss (``inf`` when one sample cannot bound it; the loss itself
        for an estimate made without a confidence level)."""
        if self.upper is None:
            return self.loss if self.confidence == 0.0 else math.inf
        return float(self.upper)

    def within(self, budget: float) -> bool:
        """Whether the upper bound of the loss is within ``budget`` (and the estimate was not cut short by a
        clear failure)."""
        return not self.rejected_early and self.loss_upper <= budget

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (an unbounded ``upper``/``lower`` becomes ``None``)."""
        d = asdict(self)
        d["per_sample_full"] = list(self.per_sample_full)
        d["per_sample_policy"] = list(self.per_sample_policy)
        for key in ("upper", "lower"):
            if d[key] is not None and not math.isfinite(d[key]):
                d[key] = None
        return d


class FidelityScorer:
    """Scores policy outputs against full-compute references of the same samples.

    Args:
        evaluator: A :class:`hgc_tune.fidelity.TaskEvaluator` (fixes the metric and task models).
        references: The full-compute outputs, one per sample.
        conditions: The condition images (uint8 ``H×W×3`` arrays), one per sample.

    Raises:
        SearchError: Lengths differ, there are no samples, or a task metric scores 0 or less at full compute
            (its relative loss would be undefined).
    """

    def __init__(
        self, evaluator: TaskEvaluator, references: Sequence[GeneratedOutput], conditions: Sequence[Any]
    ) -> None:
        if not references:
            raise SearchError("the fidelity scorer needs at least one sample, but got none.")
        if len(conditions) != len(references):
            raise SearchError(
                f"one condition per reference is needed, but got {len(conditions)} conditions and "
                f"{len(references)} references."
            )
        self.evaluator = evaluator
        self.metric = evaluator.metric
        self.references = list(references)
        self.conditions = list(conditions)
        if self.metric.kind == "task":
            self.full_scores = [evaluator.score(r.image, c) for r, c in zip(self.references, self.conditions)]
            bad = [i for i, v in enumerate(self.full_scores) if not math.isfinite(v)]
            if bad:
                raise SearchError(
                    f"metric {self.metric.name!r} is not finite at full compute for samples {bad}."
                )
            mean = float(np.mean(self.full_scores))
            if self.metric.loss_mode == "relative" and mean <= 0:
                raise SearchError(
                    f"metric {self.metric.name!r} scores {mean:g} at full compute on these samples, so a "
                    "relative loss is undefined; pick a reference metric (ssim, psnr, latent_rel_error)."
                )
        else:
            ideal = self.metric.ideal
            if ideal is None:
                raise FidelityError(
                    f"metric {self.metric.name!r} ({self.metric.kind}) has no `ideal` (its value against "
                    "itself), but got ideal=None; a scorer needs a task or reference metric."
                )
            self.full_scores = [float(ideal)] * len(self.references)

    def __len__(self) -> int:
        return len(self.references)

    def score_one(self, index: int, output: GeneratedOutput) -> float:
        """The policy-side metric of sample ``index``."""
        if self.metric.kind == "task":
            return float(self.evaluator.score(output.image, self.conditions[index]))
        if self.metric.name in _LATENT_METRICS:
            return float(self.evaluator.score(output.latent, reference=self.references[index].latent))
        return float(self.evaluator.score(output.image, reference=self.references[index].image))

    def _loss(self, n: int, policy_scores: Sequence[float]) -> float:
        return float(
            self.metric.loss(float(np.mean(self.full_scores[:n])), float(np.mean(policy_scores[:n])))
        )

    def _estimate(
        self, policy: Sequence[float], confidence: float, *, rejected: bool = False, accepted: bool = False
    ) -> FidelityEstimate:
        n = len(policy)
        bound = paired_loss_bound(self.full_scores[:n], policy, self.metric, confidence)
        return FidelityEstimate(
            metric=self.metric.name,
            full=float(np.mean(self.full_scores[:n])),
            policy=float(np.mean(policy)),
            loss=bound.loss,
            samples=n,
            total=len(self),
            rejected_early=rejected,
            per_sample_full=tuple(self.full_scores[:n]),
            per_sample_policy=tuple(float(v) for v in policy),
            upper=bound.upper if math.isfinite(bound.upper) else None,
            lower=bound.lower if math.isfinite(bound.lower) else None,
            confidence=bound.confidence,
            accepted_early=accepted,
        )

    def full_compute(self, *, confidence: float = 0.0) -> FidelityEstimate:
        """The estimate of a policy that changes nothing (its outputs are the references)."""
        policy = [self.score_one(i, r) for i, r in enumerate(self.references)]
        return self._estimate(policy, confidence)

    def score(
        self,
        outputs: Iterable[GeneratedOutput],
        *,
        budget: float | None = None,
        margin: float = 0.0,
        min_samples: int = 3,
        confidence: float = 0.0,
        max_samples: int | None = None,
        accept_early: bool = True,
        on_sample: Callable[[int, float], None] | None = None,
        look_every: int = 1,
    ) -> FidelityEstimate:
        """Score policy outputs in sample order, stopping as soon as the verdict on the budget is clear.

        After each sample ``n >= min_samples`` that ends a look (``n`` a multiple of ``look_every``; the
        samples of a batched pipeline call arrive together, so a look after each batch costs no generation
        that a look after each sample would save) and before the last, with ``budget`` given:

        - ``confidence > 0`` (sequential test): the paired bounds of the loss on the ``n`` samples so far are
          computed; a lower bound above ``budget`` stops with ``rejected_early`` (a clear failure), an upper
          bound within ``budget`` stops with ``accepted_early`` (a clear pass). Otherwise the bound straddles
          the budget and the next sample is generated.
        - ``confidence == 0`` (point estimate): a running loss above ``budget + margin`` stops with
          ``rejected_early``.

        Args:
            outputs: The policy's outputs, in sample order (consumed lazily; closed when scoring stops).
            budget: The loss budget; ``None`` scores every sample.
            margin: With ``confidence == 0``, how far above the budget the running loss must be to reject.
            min_samples: Samples to evaluate before stopping early.
            confidence: One-sided confidence level of the bounds, in ``[0, 1)``.
            max_samples: Score at most this many samples (a screen); ``None``: all.
            accept_early: Stop on a clear pass; ``False``: only a clear failure stops early, so a pass is
                decided on every sample (a check with one look at the end cannot pass by optional stopping).
            on_sample: Called with ``(index, value)`` after each sample.
            look_every: Look at the bounds only after every ``look_every`` samples (the batch size of the
                outputs' generation).
        """
        try:
            confidence = check_confidence(confidence)
        except FidelityError as e:
            raise SearchError(str(e)) from e
        n_total = len(self)
        limit = n_total if max_samples is None else max(1, min(int(max_samples), n_total))
        policy: list[float] = []
        rejected = accepted = False
        it = iter(outputs)
        with contextlib.ExitStack() as stack:
            # A generator (iter_outputs) is closed when scoring stops, which removes the policy it applied.
            close = getattr(it, "close", None)
            if close is not None:
                stack.callback(close)
            for index, output in enumerate(it):
                if index >= n_total:
                    raise SearchError(f"got more outputs than the {n_total} samples.")
                value = self.score_one(index, output)
                if not math.isfinite(value):
                    raise FidelityError(
                        f"metric {self.metric.name!r} is not finite for the policy's sample {index}."
                    )
                policy.append(value)
                if on_sample is not None:
                    on_sample(index, value)
                n = len(policy)
                if n >= limit:
                    break
                if budget is None or n < min_samples or n % look_every:
                    continue
                try:
                    if confidence > 0.0:
                        verdict = paired_loss_bound(
                            self.full_scores[:n], policy, self.metric, confidence
                        ).verdict(budget)
                        rejected, accepted = verdict == "fail", accept_early and verdict == "pass"
                    else:
                        rejected = self._loss(n, policy) > budget + margin
                except FidelityError:  # a partial full-compute mean of 0: no estimate yet
                    continue
                if rejected or accepted:
                    break
        n = len(policy)
        if n == 0:
            raise SearchError("no policy outputs were produced.")
        if not (rejected or accepted) and n != limit:
            raise SearchError(f"got {n} outputs for {limit} samples.")
        return self._estimate(policy, confidence, rejected=rejected, accepted=accepted)
