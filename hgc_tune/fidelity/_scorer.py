"""Scoring a policy's outputs against full-compute references of the same samples, one sample at a time.

The fidelity loss is a loss of means: ``metric.loss(mean m_full, mean m_policy)`` over the samples, reported
with its paired one-sided upper confidence bound (:func:`hgc_tune.fidelity.paired_loss_bound`).
:class:`FidelityScorer` scores one metric; :class:`ConstraintScorer` scores several constraints (the task
metric, prompt adherence, fidelity to the full-compute picture), each with its own budget, on the same
outputs, and reports SSIM and PSNR to the full-compute picture beside them. It consumes the policy's outputs
lazily and tests sequentially: a policy gets more samples only while its verdict is open, so a clear failure
(one constraint's lower bound above its budget) or a clear pass (every upper bound within its budget) stops
generating early. The ``k`` bounds share the confidence ``c`` by Bonferroni: each is taken at
``1 − (1 − c)/k`` (:func:`~hgc_tune.fidelity._confidence.bonferroni_level`), so all hold together with
confidence at least ``c``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from hgc_tune.errors import FidelityError, SearchError
from hgc_tune.fidelity._confidence import bonferroni_level, check_confidence, paired_loss_bound

if TYPE_CHECKING:
    from hgc_tune.fidelity._evaluate import TaskEvaluator
    from hgc_tune.fidelity._prompt import PromptEvaluator
    from hgc_tune.generation import GeneratedOutput

__all__ = ["ConstrainedEstimate", "ConstraintScorer", "FidelityEstimate", "FidelityScorer"]

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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FidelityEstimate:
        """The inverse of :meth:`to_dict` (unknown keys are left out)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for key in ("per_sample_full", "per_sample_policy"):
            values[key] = tuple(values.get(key, ()))
        return cls(**values)


class FidelityScorer:
    """Scores policy outputs against full-compute references of the same samples.

    A task metric compares each output with its condition, a prompt metric with its prompt (both are
    measured at full compute too), a reference metric with the full-compute output.

    Args:
        evaluator: A :class:`hgc_tune.fidelity.TaskEvaluator` (fixes the metric and task models), or a
            :class:`~hgc_tune.fidelity._prompt.PromptEvaluator` for a prompt metric.
        references: The full-compute outputs, one per sample.
        conditions: What each output is compared with, one per sample: the condition images (uint8
            ``H×W×3`` arrays), or the prompts for a prompt metric.

    Raises:
        SearchError: Lengths differ, there are no samples, or a task or prompt metric with a relative loss
            scores 0 or less at full compute (its relative loss would be undefined).
    """

    def __init__(
        self,
        evaluator: TaskEvaluator | PromptEvaluator,
        references: Sequence[GeneratedOutput],
        conditions: Sequence[Any],
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
        if self.metric.kind in ("task", "prompt"):
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
                    "itself), but got ideal=None; a reference metric needs one."
                )
            self.full_scores = [float(ideal)] * len(self.references)

    def __len__(self) -> int:
        return len(self.references)

    def score_one(self, index: int, output: GeneratedOutput) -> float:
        """The policy-side metric of sample ``index``."""
        if self.metric.kind in ("task", "prompt"):
            return float(self.evaluator.score(output.image, self.conditions[index]))
        # a reference metric: only a TaskEvaluator scores one (checked in __init__ through `ideal`)
        evaluator = cast("TaskEvaluator", self.evaluator)
        if self.metric.name in _LATENT_METRICS:
            return float(evaluator.score(output.latent, reference=self.references[index].latent))
        return float(evaluator.score(output.image, reference=self.references[index].image))

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

        The one-constraint case of :meth:`ConstraintScorer.score` (``k = 1``: the bound is taken at
        ``confidence`` itself); ``budget=None`` scores every sample.
        """
        constraints = ConstraintScorer([self], [math.inf if budget is None else budget])
        return constraints.score(
            outputs,
            sequential=budget is not None,
            margins=[margin],
            min_samples=min_samples,
            confidence=confidence,
            max_samples=max_samples,
            accept_early=accept_early,
            on_sample=on_sample,
            look_every=look_every,
        ).estimates[0]


@dataclass(frozen=True)
class ConstrainedEstimate:
    """The fidelity of a policy under several constraints, scored on the same outputs.

    Attributes:
        estimates: One :class:`FidelityEstimate` per constraint (the first is the task metric's), each bounded
            at :attr:`level`.
        budgets: Each constraint's loss budget, same order.
        confidence: The confidence ``c`` with which every bound holds together (``0``: point estimates).
        reported: Metrics reported beside the constraints, not bounded (SSIM and PSNR to the full-compute
            picture): their means over the same samples.
        rejected_early: Evaluation stopped because one constraint's lower bound was above its budget.
        accepted_early: Evaluation stopped because every upper bound was within its budget.
    """

    estimates: tuple[FidelityEstimate, ...]
    budgets: tuple[float, ...]
    confidence: float = 0.0
    reported: tuple[FidelityEstimate, ...] = ()
    rejected_early: bool = False
    accepted_early: bool = False

    def __post_init__(self) -> None:
        if not self.estimates or len(self.estimates) != len(self.budgets):
            raise FidelityError(
                f"one budget per constraint (at least one) is needed, but got {len(self.estimates)} "
                f"estimates and {len(self.budgets)} budgets."
            )

    @property
    def k(self) -> int:
        """The number of constraints."""
        return len(self.estimates)

    @property
    def level(self) -> float:
        """The confidence level of each bound: :func:`~hgc_tune.fidelity._confidence.bonferroni_level`."""
        return bonferroni_level(self.confidence, self.k)

    @property
    def primary(self) -> FidelityEstimate:
        """The first constraint's estimate (the task metric's, in a search)."""
        return self.estimates[0]

    @property
    def samples(self) -> int:
        return self.primary.samples

    @property
    def within(self) -> bool:
        """Whether every constraint's upper bound is within its budget (and no clear failure cut it short)."""
        return not self.rejected_early and all(self.holds())

    def holds(self) -> tuple[bool, ...]:
        """Per constraint: whether its upper bound is within its budget."""
        return tuple(e.loss_upper <= b for e, b in zip(self.estimates, self.budgets))

    def violation(self) -> float:
        """The largest ``upper bound − budget`` over the constraints: ``<= 0`` when the policy is within
        budget. An unbounded loss (one sample) counts as a loss of 1 (a sampler needs a finite number)."""
        return max(
            (e.loss_upper if math.isfinite(e.loss_upper) else max(1.0, float(e.loss))) - b
            for e, b in zip(self.estimates, self.budgets)
        )

    def reported_mean(self, metric: str) -> float | None:
        """The policy's mean of a reported metric (``ssim``, ``psnr``), or of a constraint's; ``None``: not
        scored."""
        for e in (*self.reported, *self.estimates):
            if e.metric == metric:
                return float(e.policy)
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (see :meth:`FidelityEstimate.to_dict`)."""
        return {
            "estimates": [e.to_dict() for e in self.estimates],
            "budgets": [float(b) for b in self.budgets],
            "confidence": float(self.confidence),
            "level": float(self.level),
            "k": self.k,
            "reported": [e.to_dict() for e in self.reported],
            "rejected_early": bool(self.rejected_early),
            "accepted_early": bool(self.accepted_early),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConstrainedEstimate:
        """The inverse of :meth:`to_dict`."""
        return cls(
            estimates=tuple(FidelityEstimate.from_dict(e) for e in d["estimates"]),
            budgets=tuple(float(b) for b in d["budgets"]),
            confidence=float(d.get("confidence", 0.0)),
            reported=tuple(FidelityEstimate.from_dict(e) for e in d.get("reported", ())),
            rejected_early=bool(d.get("rejected_early", False)),
            accepted_early=bool(d.get("accepted_early", False)),
        )


class ConstraintScorer:
    """Scores policy outputs under several constraints at once: one generation, ``k`` metrics.

    Args:
        scorers: One :class:`FidelityScorer` per constraint, on the same samples and references.
        budgets: Each constraint's loss budget, same order.
        reported: Scorers of metrics reported beside (SSIM and PSNR to the full-compute picture); they never
            stop the evaluation.

    Raises:
        SearchError: No constraint, a budget per constraint missing, or scorers of different samples.
    """

    def __init__(
        self,
        scorers: Sequence[FidelityScorer],
        budgets: Sequence[float],
        *,
        reported: Sequence[FidelityScorer] = (),
    ) -> None:
        if not scorers or len(scorers) != len(budgets):
            raise SearchError(
                f"one budget per constraint (at least one) is needed, but got {len(scorers)} scorers and "
                f"{len(budgets)} budgets."
            )
        sizes = {len(s) for s in (*scorers, *reported)}
        if len(sizes) != 1:
            raise SearchError(
                f"every scorer must score the same samples, but they hold {sorted(sizes)} samples."
            )
        self.scorers = list(scorers)
        self.budgets = tuple(float(b) for b in budgets)
        self.reported = list(reported)

    def __len__(self) -> int:
        return len(self.scorers[0])

    @property
    def k(self) -> int:
        """The number of constraints."""
        return len(self.scorers)

    @property
    def metrics(self) -> list[str]:
        """The constraints' metric names, in order."""
        return [s.metric.name for s in self.scorers]

    def full_compute(self, *, confidence: float = 0.0) -> ConstrainedEstimate:
        """The estimate of a policy that changes nothing (its outputs are the references)."""
        level = bonferroni_level(check_confidence(confidence), self.k)
        return ConstrainedEstimate(
            estimates=tuple(s.full_compute(confidence=level) for s in self.scorers),
            budgets=self.budgets,
            confidence=confidence,
            reported=tuple(s.full_compute() for s in self.reported),
        )

    def score(
        self,
        outputs: Iterable[GeneratedOutput],
        *,
        sequential: bool = True,
        margins: Sequence[float] | None = None,
        min_samples: int = 3,
        confidence: float = 0.0,
        max_samples: int | None = None,
        accept_early: bool = True,
        on_sample: Callable[[int, float], None] | None = None,
        look_every: int = 1,
    ) -> ConstrainedEstimate:
        """Score policy outputs in sample order, stopping as soon as the verdict on every budget is clear.

        Each output is scored by every constraint (and every reported metric). After each sample
        ``n >= min_samples`` that ends a look (``n`` a multiple of ``look_every``) and before the last, with
        ``sequential``:

        - ``confidence > 0`` (sequential test): each constraint's paired bounds on the ``n`` samples so far
          are computed at the Bonferroni level ``1 − (1 − confidence)/k``; a lower bound above its budget
          stops with ``rejected_early`` (a clear failure of that constraint fails the policy), and every
          upper bound within its budget stops with ``accepted_early`` (a clear pass). Otherwise the next
          sample is generated.
        - ``confidence == 0`` (point estimate): a running loss above ``budget + margin`` of any constraint
          stops with ``rejected_early``.

        Args:
            outputs: The policy's outputs, in sample order (consumed lazily; closed when scoring stops).
            sequential: Stop early on a clear verdict; ``False`` scores every sample.
            margins: With ``confidence == 0``, per constraint, how far above its budget the running loss must
                be to reject; ``None``: ``0``.
            min_samples: Samples to evaluate before stopping early.
            confidence: The confidence ``c`` with which all ``k`` bounds hold together, in ``[0, 1)``.
            max_samples: Score at most this many samples (a screen); ``None``: all.
            accept_early: Stop on a clear pass; ``False``: only a clear failure stops early, so a pass is
                decided on every sample (a check with one look at the end cannot pass by optional stopping).
            on_sample: Called with ``(index, value)`` (the first constraint's value) after each sample.
            look_every: Look at the bounds only after every ``look_every`` samples: the outputs of one
                batched pipeline call arrive together, so a look after each batch (``look_every`` its size)
                costs no generation that a look after each sample would save.
        """
        try:
            confidence = check_confidence(confidence)
        except FidelityError as e:
            raise SearchError(str(e)) from e
        level = bonferroni_level(confidence, self.k)
        margins = [0.0] * self.k if margins is None else [float(m) for m in margins]
        n_total = len(self)
        limit = n_total if max_samples is None else max(1, min(int(max_samples), n_total))
        policy: list[list[float]] = [[] for _ in self.scorers]
        shown: list[list[float]] = [[] for _ in self.reported]
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
                for scorer, values in zip((*self.scorers, *self.reported), (*policy, *shown)):
                    value = scorer.score_one(index, output)
                    if not math.isfinite(value):
                        raise FidelityError(
                            f"metric {scorer.metric.name!r} is not finite for the policy's sample {index}."
                        )
                    values.append(value)
                if on_sample is not None:
                    on_sample(index, policy[0][-1])
                n = index + 1
                if n >= limit:
                    break
                if not sequential or n < min_samples or n % look_every:
                    continue
                try:
                    if confidence > 0.0:
                        verdicts = [
                            paired_loss_bound(s.full_scores[:n], values, s.metric, level).verdict(budget)
                            for s, values, budget in zip(self.scorers, policy, self.budgets)
                        ]
                        rejected = "fail" in verdicts
                        accepted = accept_early and all(v == "pass" for v in verdicts)
                    else:
                        rejected = any(
                            s._loss(n, values) > budget + margin
                            for s, values, budget, margin in zip(self.scorers, policy, self.budgets, margins)
                        )
                except FidelityError:  # a partial full-compute mean of 0: no estimate yet
                    continue
                if rejected or accepted:
                    break
        n = len(policy[0])
        if n == 0:
            raise SearchError("no policy outputs were produced.")
        if not (rejected or accepted) and n != limit:
            raise SearchError(f"got {n} outputs for {limit} samples.")
        return ConstrainedEstimate(
            estimates=tuple(
                s._estimate(values, level, rejected=rejected, accepted=accepted)
                for s, values in zip(self.scorers, policy)
            ),
            budgets=self.budgets,
            confidence=confidence,
            reported=tuple(s._estimate(values, 0.0) for s, values in zip(self.reported, shown)),
            rejected_early=rejected,
            accepted_early=accepted,
        )
