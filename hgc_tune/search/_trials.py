"""Trial bookkeeping: what a trial recorded (:class:`TrialRecord`) and which trials count toward ``n_trials``.

A study holds ``n_trials`` trials in total, shared by every worker. A trial counts when it is running or
finished, except a *surplus* trial (one that started after ``n_trials`` others had, in a race between
workers; it is failed at once without work) and a *replaced* trial (a stale trial of a killed worker that was
enqueued again; its retry counts instead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from hgc_tune.fidelity._scorer import ConstrainedEstimate

__all__ = [
    "ATTR",
    "TrialRecord",
    "close_leftover_waiting",
    "close_waiting",
    "constraint_rows",
    "counted_trials",
    "duplicate_waiting_peers",
    "finished_count",
    "is_surplus",
    "picture_fidelity",
    "present_peers",
    "replaced_numbers",
    "trial_records",
]


class ATTR:
    """Names of the user attributes a search trial records."""

    PEER = "peer"
    PEER_ALIASES = "peer_aliases"
    POLICY = "policy"
    POLICY_KEY = "policy_key"
    MACS = "macs"
    LOSS = "loss"
    LOSS_UPPER = "loss_upper"
    LOSS_LOWER = "loss_lower"
    CONFIDENCE = "confidence"
    ACCEPTED_EARLY = "accepted_early"
    SCREEN = "screen"
    CONSTRAINT = "constraint"
    FEASIBLE = "feasible"
    METRIC = "metric"
    METRIC_FULL = "metric_full"
    METRIC_POLICY = "metric_policy"
    SAMPLES = "samples"
    SAMPLES_TOTAL = "samples_total"
    REJECTED_EARLY = "rejected_early"
    PER_SAMPLE = "per_sample_policy"
    DUPLICATE_OF = "duplicate_of"
    ERROR = "error"
    SURPLUS = "surplus"
    WORKER = "worker"
    CONSTRAINTS = "constraints"
    PICTURE = "picture"
    ESTIMATE = "estimate"


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def constraint_rows(estimate: ConstrainedEstimate) -> list[dict[str, Any]]:
    """One row per constraint of an estimate: ``metric``, ``budget``, ``loss``, ``loss_upper``,
    ``loss_lower`` (``None``: unbounded), ``level`` (each bound's confidence), ``full``, ``policy``,
    ``holds``."""
    rows = []
    for e, budget, holds in zip(estimate.estimates, estimate.budgets, estimate.holds()):
        point = e.confidence == 0.0
        rows.append(
            {
                "metric": e.metric,
                "budget": float(budget),
                "loss": float(e.loss),
                "loss_upper": float(e.loss) if point else _finite_or_none(e.upper),
                "loss_lower": float(e.loss) if point else _finite_or_none(e.lower),
                "level": float(e.confidence),
                "full": float(e.full),
                "policy": float(e.policy),
                "holds": bool(holds) and not estimate.rejected_early,
            }
        )
    return rows


def picture_fidelity(estimate: ConstrainedEstimate) -> dict[str, float]:
    """Mean SSIM and PSNR of the policy's pictures to the full-compute ones (those that were measured)."""
    out = {}
    for name in ("ssim", "psnr"):
        value = estimate.reported_mean(name)
        if value is not None:
            out[name] = value
    return out


def replaced_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of stale trials that were enqueued again (their retries replace them)."""
    return {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs} | {
        n for t in trials for n in t.system_attrs.get("retry_history", [])
    }


def _counts(trial: FrozenTrial, replaced: set[int]) -> bool:
    from optuna.trial import TrialState

    if trial.state == TrialState.WAITING:
        return False
    if trial.state == TrialState.FAIL and (trial.user_attrs.get(ATTR.SURPLUS) or trial.number in replaced):
        return False
    return True


def counted_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count toward ``n_trials`` (running or finished, not surplus, not replaced)."""
    replaced = replaced_numbers(trials)
    return [t for t in trials if _counts(t, replaced)]


def finished_count(trials: Sequence[FrozenTrial]) -> int:
    """How many counted trials are finished."""
    return sum(1 for t in counted_trials(trials) if t.state.is_finished())


def is_surplus(trials: Sequence[FrozenTrial], number: int, start: datetime | None, n_trials: int) -> bool:
    """Whether trial ``number`` (started at ``start``) came after ``n_trials`` counted trials had started."""
    far = datetime.max

    def order(t: FrozenTrial) -> tuple[datetime, int]:
        return (t.datetime_start or far, t.number)

    mine = (start or far, number)
    earlier = [t for t in counted_trials(trials) if t.number != number and order(t) < mine]
    return len(earlier) >= n_trials


def _stands(trial: FrozenTrial, replaced: set[int]) -> bool:
    """Whether ``trial`` stands for its point: not surplus, and not a stale trial replaced by its retry."""
    from optuna.trial import TrialState

    return not trial.user_attrs.get(ATTR.SURPLUS) and not (
        trial.state == TrialState.FAIL and trial.number in replaced
    )


def present_peers(trials: Sequence[FrozenTrial]) -> set[str]:
    """The peer names (aliases included) that a waiting, running or finished trial stands for."""
    replaced = replaced_numbers(trials)
    names: set[str] = set()
    for t in trials:
        if _stands(t, replaced):
            names.update(
                n for n in [t.user_attrs.get(ATTR.PEER), *t.user_attrs.get(ATTR.PEER_ALIASES, [])] if n
            )
    return names


def duplicate_waiting_peers(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Waiting peer trials whose peer an earlier trial already stands for (two processes enqueued the peers
    of a new study at once)."""
    from optuna.trial import TrialState

    replaced = replaced_numbers(trials)
    first: dict[str, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        peer = t.user_attrs.get(ATTR.PEER)
        if peer and _stands(t, replaced):
            first.setdefault(peer, t.number)
    return [
        t
        for t in trials
        if t.state == TrialState.WAITING
        and t.user_attrs.get(ATTR.PEER)
        and first[t.user_attrs[ATTR.PEER]] < t.number
    ]


def close_waiting(study: Study, trials: Sequence[FrozenTrial]) -> int:
    """Fail the waiting ``trials`` as surplus: they will not run and do not count. Each is claimed the way
    Optuna pops a waiting trial (WAITING -> RUNNING succeeds in one process only), so a trial another
    process has just started is left to it. Returns how many this process closed.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    # Optuna has no public call that fails a chosen waiting trial; its storage API does (pinned Optuna).
    storage, study_id = study._storage, study._study_id
    closed = 0
    for t in trials:
        if t.state != TrialState.WAITING:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                continue
        except UpdateFinishedTrialError:
            continue
        try:
            storage.set_trial_user_attr(trial_id, ATTR.SURPLUS, True)
        finally:  # a claimed trial never stays RUNNING: it has no heartbeat that would let it go stale
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        closed += 1
    return closed


def close_leftover_waiting(study: Study, n_trials: int) -> int:
    """Once the study holds ``n_trials`` counted trials and none runs, close the trials still waiting (peers
    beyond ``n_trials``, a stale trial's retry that came too late) so none waits forever; a resumed search
    with more trials enqueues the peers again. Returns how many this process closed."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if len(counted_trials(trials)) < n_trials or any(t.state == TrialState.RUNNING for t in trials):
        return 0
    return close_waiting(study, [t for t in trials if t.state == TrialState.WAITING])


@dataclass(frozen=True)
class TrialRecord:
    """What one search trial measured, read back from its user attributes.

    Attributes:
        number: The Optuna trial number.
        state: ``COMPLETE``, ``FAIL``, ``RUNNING``, ….
        params: The trial's parameters.
        peer: The peer schedule the trial was enqueued as, if any.
        macs: Per convention (``paper``, ``complete``): ``full``, ``policy`` and ``reduction``.
        loss: The calibration fidelity loss (partial when ``rejected_early``).
        loss_upper: Its one-sided upper confidence bound at ``confidence`` (``None``: unbounded).
        loss_lower: Its one-sided lower confidence bound (``None``: unbounded).
        confidence: The confidence level of the bound (``0``: the point estimate).
        metric_full: Mean metric at full compute over the evaluated samples.
        metric_policy: Mean metric under the policy over the evaluated samples.
        samples: Calibration samples evaluated.
        rejected_early: Whether evaluation stopped early because the loss broke the budget clearly (its lower
            confidence bound lies above the budget).
        accepted_early: Whether evaluation stopped early because the upper bound was within the budget.
        screen: Whether the trial was only screened on a few samples (it cost no less than a trial already
            within the budget, so it could not be the result).
        feasible: Every constraint's upper bound is within its budget on the calibration samples evaluated.
        duplicate_of: The earlier trial with the same policy whose result this one reuses.
        policy_key: Digest of what the policy computes (:func:`hgc_tune.search._space.policy_key`).
        policy_json: The policy (``hgc_tune.policy._io.policy_to_json``) or ``None``.
        error: The failure message of a failed trial.
        replaced: A stale trial of a killed worker that was enqueued again.
        constraints: Every constraint's figures (:func:`constraint_rows`; the first is the task metric's,
            whose figures the fields above repeat).
        picture: Mean SSIM and PSNR of the policy's pictures to the full-compute ones.
    """

    number: int
    state: str
    params: Mapping[str, Any] = field(default_factory=dict)
    peer: str | None = None
    macs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    loss: float | None = None
    loss_upper: float | None = None
    loss_lower: float | None = None
    confidence: float = 0.0
    metric_full: float | None = None
    metric_policy: float | None = None
    samples: int | None = None
    rejected_early: bool = False
    accepted_early: bool = False
    screen: bool = False
    feasible: bool = False
    duplicate_of: int | None = None
    policy_key: str | None = None
    policy_json: Mapping[str, Any] | None = None
    error: str | None = None
    replaced: bool = False
    constraints: tuple[Mapping[str, Any], ...] = ()
    picture: Mapping[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE" and self.loss is not None

    def plausible(self, budget: float) -> bool:
        """Completed and not a failure (the task metric's lower bound is within ``budget``, and every
        guard's within its own): the budgets may hold."""
        lower = self.loss_lower if self.loss_lower is not None else -float("inf")
        guards = all(
            row.get("loss_lower") is None or row["loss_lower"] <= row["budget"]
            for row in self.constraints[1:]
        )
        return self.complete and not self.rejected_early and lower <= budget and guards

    @property
    def reduction(self) -> float | None:
        """MAC reduction in the ``paper`` convention."""
        return self.macs.get("paper", {}).get("reduction")

    def policy(self):
        """The trial's :class:`hgc_tune.policy.Policy`."""
        from hgc_tune.policy._io import policy_from_json

        if self.policy_json is None:
            return None
        return policy_from_json(self.policy_json).policies[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "params": dict(self.params),
            "peer": self.peer,
            "macs": {c: dict(v) for c, v in self.macs.items()},
            "loss": self.loss,
            "loss_upper": self.loss_upper,
            "loss_lower": self.loss_lower,
            "confidence": self.confidence,
            "metric_full": self.metric_full,
            "metric_policy": self.metric_policy,
            "samples": self.samples,
            "rejected_early": self.rejected_early,
            "accepted_early": self.accepted_early,
            "screen": self.screen,
            "feasible": self.feasible,
            "duplicate_of": self.duplicate_of,
            "policy_key": self.policy_key,
            "policy_name": None if self.policy_json is None else self.policy_json["policies"][0]["name"],
            "error": self.error,
            "replaced": self.replaced,
            "constraints": [dict(c) for c in self.constraints],
            "picture": dict(self.picture),
        }


def trial_records(trials: Sequence[FrozenTrial]) -> list[TrialRecord]:
    """Records of every trial except surplus ones, in trial-number order."""
    replaced = replaced_numbers(trials)
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        a = t.user_attrs
        if a.get(ATTR.SURPLUS):
            continue
        out.append(
            TrialRecord(
                number=t.number,
                state=t.state.name,
                params=dict(t.params),
                peer=a.get(ATTR.PEER),
                macs=a.get(ATTR.MACS, {}),
                loss=a.get(ATTR.LOSS),
                loss_upper=a.get(ATTR.LOSS_UPPER, a.get(ATTR.LOSS)),
                loss_lower=a.get(ATTR.LOSS_LOWER, a.get(ATTR.LOSS)),
                confidence=float(a.get(ATTR.CONFIDENCE, 0.0)),
                metric_full=a.get(ATTR.METRIC_FULL),
                metric_policy=a.get(ATTR.METRIC_POLICY),
                samples=a.get(ATTR.SAMPLES),
                rejected_early=bool(a.get(ATTR.REJECTED_EARLY, False)),
                accepted_early=bool(a.get(ATTR.ACCEPTED_EARLY, False)),
                screen=bool(a.get(ATTR.SCREEN, False)),
                feasible=t.state.name == "COMPLETE" and bool(a.get(ATTR.FEASIBLE, False)),
                duplicate_of=a.get(ATTR.DUPLICATE_OF),
                policy_key=a.get(ATTR.POLICY_KEY),
                policy_json=a.get(ATTR.POLICY),
                error=a.get(ATTR.ERROR),
                replaced=t.number in replaced and t.state.name == "FAIL",
                constraints=tuple(a.get(ATTR.CONSTRAINTS, ())),
                picture=dict(a.get(ATTR.PICTURE, {})),
            )
        )
    return out
