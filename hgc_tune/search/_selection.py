"""Choosing the policy: the candidates among the trials, checked on the validation split (the promising ones
first, cheapest first), and the chosen one measured on the test split (which takes no part in the choice).
Both splits score every constraint of the search on the same outputs; a policy holds only when every
constraint's bound does."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hgc_tune._progress import TEST, VALIDATION, ProgressCallback
from hgc_tune.errors import SearchError
from hgc_tune.fidelity._scorer import ConstrainedEstimate, ConstraintScorer
from hgc_tune.generation import GenerationJob, iter_outputs
from hgc_tune.generation._inputs import condition_array, jobs_from_samples
from hgc_tune.search._constraints import ConstraintPlan
from hgc_tune.search._heldout import heldout_key, heldout_references
from hgc_tune.search._session import SearchSession
from hgc_tune.search._trials import TrialRecord, constraint_rows, picture_fidelity

__all__ = ["Selection", "select_policy"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Selection:
    """What the selection found.

    Attributes:
        best: The cheapest trial within the budget on the calibration split (``None``: none is).
        chosen: The trial whose policy is the result (``None``: none holds).
        validated: Whether a validation split was used.
        validation: The checks on the validation split, cheapest candidate first (see
            :attr:`hgc_tune.search.SearchResult.validation`).
        validation_estimate: The chosen trial's estimate on the validation split (``None``: not validated).
        test: The chosen trial's check on the test split (``None``: no test split or no choice).
        test_estimate: Its estimate there.
        message: Why there is no policy, when there is none.
    """

    best: TrialRecord | None
    chosen: TrialRecord | None
    validated: bool = False
    validation: tuple[dict[str, Any], ...] = ()
    validation_estimate: ConstrainedEstimate | None = None
    test: dict[str, Any] | None = None
    test_estimate: ConstrainedEstimate | None = None
    message: str | None = None


def select_policy(
    session: SearchSession,
    records: Sequence[TrialRecord],
    heldout: Sequence[Any] | None,
    test: Sequence[Any] | None,
    note: Callable[[str], None],
    *,
    on_progress: ProgressCallback | None = None,
) -> Selection:
    """Choose the trial whose policy the search returns, and measure it on ``test``.

    Without a validation split (``heldout``) the cheapest trial within the budget on calibration is chosen;
    with one, the candidates are checked sequentially on it, in the order of :func:`_candidates`, and the
    first whose bounds hold every budget is chosen. ``note`` receives progress lines; ``on_progress`` the
    generated samples of the validation and the test stage (see :mod:`hgc_tune._progress`).
    """
    config = session.config
    best, candidates = _candidates(records, config.budget, config.max_validation_tries, heldout is not None)
    validation: tuple = ()
    chosen = None
    estimate = None
    message = None
    bound = "upper bound" if config.confidence > 0 else "point estimate"
    budgets = ", ".join(f"{c.metric.name} {c.budget:g}" for c in _plan(session).constraints)
    if not candidates:
        message = (
            "no policy cheaper than full compute may meet every budget on the calibration split "
            f"(budgets: {budgets}; {bound} of each loss, {len(records)} trials); raise a budget, profile "
            "more calibration samples, or run more trials."
        )
    elif heldout is not None:
        counter = _SampleCounter(VALIDATION, on_progress)
        chosen, estimate, tries = _validate(session, candidates, heldout, note, counter)
        validation = tuple(tries)
        if chosen is None:
            message = (
                f"none of the {len(tries)} plausible policies tried holds every budget ({budgets}) on the "
                f"validation split ({bound} of each loss: "
                + "; ".join(
                    f"trial {t['trial']}: "
                    + ", ".join(f"{c['metric']} {_fmt(c['loss_upper'])}" for c in t["constraints"])
                    for t in tries
                )
                + "); raise a budget, use more validation samples, or run more trials."
            )
    else:
        chosen = candidates[0]
    test_row = None
    test_estimate = None
    if chosen is not None and test is not None:
        test_estimate, test_row = _test(session, chosen, test, note, _SampleCounter(TEST, on_progress))
    return Selection(
        best=best,
        chosen=chosen,
        validated=heldout is not None,
        validation=validation,
        validation_estimate=estimate,
        test=test_row,
        test_estimate=test_estimate,
        message=message,
    )


def _plan(session: SearchSession) -> ConstraintPlan:
    if session.constraints is None:
        raise SearchError("the search session has no constraints; build it with prepare_search.")
    return session.constraints


class _SampleCounter:
    """Counts the samples a validation or test stage generates, for an ``on_progress`` callback.

    The stage first plans the most it may generate; what it then does not generate (references read from the
    cache, a check that stops early or was stored) is taken off the total, so that ``done`` ends at ``total``.
    """

    def __init__(self, stage: str, on_progress: ProgressCallback | None) -> None:
        self.stage = stage
        self.on_progress = on_progress
        self.done = self.total = 0

    def plan(self, samples: int) -> None:
        self.total += samples
        self._report()

    def skip(self, samples: int) -> None:
        if samples > 0:
            self.total -= samples
            self._report()

    def generated(self) -> None:
        self.done += 1
        self._report()

    def counted(self, outputs: Iterable[_T]) -> Iterator[_T]:
        """``outputs``, each counted as generated when it is taken."""
        for output in outputs:
            self.generated()
            yield output

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.stage, self.done, self.total)


def _split_scorer(
    session: SearchSession,
    samples: Sequence[Any],
    what: str,
    progress: Callable[[str], None],
    counter: _SampleCounter,
    checks: int,
) -> tuple[ConstraintScorer, list[GenerationJob], str]:
    """A scorer of ``samples`` under every constraint against their full-compute outputs (cached beside the
    profile) and its key; ``counter`` plans the references and ``checks`` policies on every sample."""
    jobs = jobs_from_samples(samples, seed=session.config.seed + 100_000, task=session.profile.task)
    if not jobs:
        raise SearchError(f"the {what} split is empty; pass {what} samples or skip it.")
    counter.plan(len(jobs) * (1 + checks))
    settings = session.settings

    def on_reference(index: int) -> None:
        progress(f"{what} reference")
        counter.generated()

    key = heldout_key(session.pipe, jobs, settings)
    references, cached = heldout_references(
        session.pipe, jobs, settings, cache_dir=session.folder, on_output=on_reference
    )
    if cached:
        counter.skip(len(jobs))
    height, width = settings.height, settings.width
    conditions = [condition_array(job.condition, height, width) for job in jobs]
    prompts = [job.prompt for job in jobs]
    scorer = _plan(session).scorer(session.condition_type, references, conditions, prompts, session.clip)
    return scorer, jobs, key


def _stored_estimate(session: SearchSession, attr: str, key: str) -> ConstrainedEstimate | None:
    stored = session.study.user_attrs.get(attr)
    if isinstance(stored, dict) and stored.get("key") == key:
        return ConstrainedEstimate.from_dict(stored)
    return None


def _check_row(number: int, estimate: ConstrainedEstimate, cached: bool) -> dict[str, Any]:
    """The task metric's figures (``loss``, ``loss_upper``, …), every constraint's (``constraints``), SSIM
    and PSNR to the full-compute pictures (``picture``), and whether every constraint holds (``holds``)."""
    task = estimate.primary
    return {
        "trial": number,
        "loss": task.loss,
        "loss_upper": task.to_dict()["upper"] if task.confidence > 0 else task.loss,
        "confidence": estimate.confidence,
        "full": task.full,
        "policy": task.policy,
        "samples": task.samples,
        "rejected_early": estimate.rejected_early,
        "accepted_early": estimate.accepted_early,
        "holds": estimate.within,
        "cached": cached,
        "constraints": constraint_rows(estimate),
        "picture": picture_fidelity(estimate),
    }


def _validate(
    session: SearchSession,
    candidates: list[TrialRecord],
    samples: Sequence[Any],
    progress: Callable[[str], None],
    counter: _SampleCounter,
) -> tuple[TrialRecord | None, ConstrainedEstimate | None, list[dict[str, Any]]]:
    """Test candidates sequentially on the validation split, in order; the first whose upper bounds
    all hold their budgets is chosen. Returns (chosen, estimate, tries)."""
    config = session.config
    checked = candidates[: config.max_validation_tries]
    scorer, jobs, key = _split_scorer(session, samples, "validation", progress, counter, len(checked))
    tries = []
    for index, record in enumerate(checked):
        attr = f"hgc.heldout.{record.number}"
        estimate = _stored_estimate(session, attr, key)
        cached = estimate is not None
        if estimate is None:
            progress(f"validate trial {record.number}")
            start = counter.done
            estimate = scorer.score(
                counter.counted(iter_outputs(session.pipe, record.policy(), jobs, session.settings)),
                sequential=config.early_rejection,
                margins=config.margins(scorer.budgets),
                min_samples=config.early_rejection_min_samples,
                confidence=config.confidence,
                # A pass must hold on every validation sample: stopping at the first look whose bound is
                # within the budget would let noise pass a policy (optional stopping). Failures stop early.
                accept_early=False,
                look_every=session.settings.samples_per_call,
            )
            session.study.set_user_attr(attr, {"key": key, **estimate.to_dict()})
            counter.skip(len(jobs) - (counter.done - start))  # a failure stops early
        else:
            counter.skip(len(jobs))
        row = _check_row(record.number, estimate, cached)
        tries.append(row)
        if row["holds"]:
            counter.skip(len(jobs) * (len(checked) - index - 1))  # the cheaper policy holds: no more checks
            return record, estimate, tries
    return None, None, tries


def _test(
    session: SearchSession,
    record: TrialRecord,
    samples: Sequence[Any],
    progress: Callable[[str], None],
    counter: _SampleCounter,
) -> tuple[ConstrainedEstimate, dict[str, Any]]:
    """The chosen policy on every test sample (no early stop: this is the reported figure)."""
    config = session.config
    scorer, jobs, key = _split_scorer(session, samples, "test", progress, counter, 1)
    attr = f"hgc.test.{record.number}"
    estimate = _stored_estimate(session, attr, key)
    cached = estimate is not None
    if estimate is None:
        progress(f"test trial {record.number}")
        estimate = scorer.score(
            counter.counted(iter_outputs(session.pipe, record.policy(), jobs, session.settings)),
            sequential=False,
            confidence=config.confidence,
        )
        session.study.set_user_attr(attr, {"key": key, **estimate.to_dict()})
    else:
        counter.skip(len(jobs))
    return estimate, _check_row(record.number, estimate, cached)


def _candidates(
    records: Sequence[TrialRecord], budget: float, tries: int, validated: bool
) -> tuple[TrialRecord | None, list[TrialRecord]]:
    """The calibration winner and the candidates for the policy, in the order they are checked.

    Without a validation split the calibration verdict decides: the trials within the budget, cheapest
    first. With one, every plausible trial (not a failure on calibration) is a candidate. Those whose point
    estimates are all within their budgets come first, cheapest first: their bounds straddle a budget only
    because a few calibration samples bound loosely, and the validation samples may narrow them. Then the
    rest, cheapest first: a loss above its budget on calibration seldom falls below it on validation, and
    trying such a policy first would spend the ``tries`` that a cheap promising one needs. The calibration
    winner is never left unchecked: it takes the last of the ``tries`` when other trials would use them
    all. One trial per policy, and only policies cheaper than full compute.
    """

    def order(r: TrialRecord) -> tuple:
        upper = r.loss_upper if r.loss_upper is not None else math.inf
        return (not _within_by_point(r, budget), r.macs["paper"]["policy"], upper, r.loss, r.number)

    unique = [r for r in records if r.duplicate_of is None]
    feasible = sorted((r for r in unique if r.feasible), key=order)
    best = feasible[0] if feasible else None
    pool = sorted((r for r in unique if r.plausible(budget)), key=order) if validated else feasible
    seen: set[str | None] = set()
    candidates = []
    for r in pool:
        if r.policy_key in seen or r.macs["paper"]["reduction"] <= 0:
            continue
        seen.add(r.policy_key)
        candidates.append(r)
    if validated and best is not None and best in candidates[tries:]:
        candidates.remove(best)
        candidates.insert(tries - 1, best)
    return best, candidates


def _within_by_point(record: TrialRecord, budget: float) -> bool:
    """Every constraint's calibration point estimate is within its budget (the task metric's is
    ``record.loss``; the guards' are in ``record.constraints[1:]``)."""
    if record.loss is None or record.loss > budget:
        return False
    return all(row.get("loss") is None or row["loss"] <= row["budget"] for row in record.constraints[1:])


def _fmt(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:.4g}"
