"""The Optuna objective: minimise policy MACs (analytic, ``paper``) under fidelity constraints (the task
metric and the guards, each with its own budget)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from hgc_tune.fidelity._scorer import ConstrainedEstimate, ConstraintScorer
from hgc_tune.generation import GeneratedOutput
from hgc_tune.policy import Policy, Provenance
from hgc_tune.policy._io import policy_to_json
from hgc_tune.policy._macs import macs_provenance
from hgc_tune.search._space import PolicySpace, is_full_compute, policy_key
from hgc_tune.search._storage import record_first_heartbeat
from hgc_tune.search._trials import ATTR, constraint_rows, is_surplus, picture_fidelity

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial, Trial

    from hgc_tune.macs import MacTable

__all__ = ["CONSTRAINT_NAME", "GUARD_PREFIX", "PolicyObjective", "SurplusTrial"]

# The name of the task metric's constraint (``trial.set_constraint``); feasible when <= 0.
CONSTRAINT_NAME = "fidelity_loss"
# A guard's constraint is named ``guard.<metric>``.
GUARD_PREFIX = "guard."


class SurplusTrial(Exception):
    """A trial that started after the study already had ``n_trials`` trials (a race between workers)."""


class PolicyObjective:
    """Optuna objective of a policy search: returns the policy's MACs, records its fidelity under every
    constraint.

    For each trial: the parameters are suggested by the :class:`PolicySpace` (names are policy field paths,
    e.g. ``blocks.interval``, ``controlnet.mode``) and built into a policy; its MACs in both conventions come
    from the MAC table (no run needed); its fidelity comes from generating the calibration samples with the
    policy, ``samples_per_call`` per pipeline call, against the profile's full-compute references, each
    output scored by every constraint (the task metric and the guards) and by SSIM and PSNR to the
    full-compute picture. Evaluation
    is sequential and multi-fidelity: a trial gets another batch only while its verdict is open (one
    constraint's clear failure, or every constraint's clear pass, stops it), and a trial that costs no less
    than one already within budget cannot be the result, so it is only screened on ``min_samples`` samples
    (rounded up to whole batches).
    Each constraint's ``upper bound - budget`` is set with ``trial.set_constraint`` (Optuna 5's successor of
    ``TPESampler(constraints_func=...)``, so the sampler models infeasible trials too; a trial is feasible
    only when every value is ``<= 0``), and the largest is kept as user attribute ``constraint``. A policy
    already evaluated in this study (same compute sets) reuses that result, and one that another process is
    evaluating is waited for, so each policy is evaluated once; the full-compute policy is scored from the
    references.

    Args:
        space: The search space.
        scorer: Scores calibration outputs under every constraint (its budgets are the constraints').
        outputs: ``outputs(policy)`` yields the calibration outputs generated with ``policy``.
        mac_table: The pipeline's per-module MAC table (``hgc_tune.macs.MacTable``).
        n_trials: The study's total number of trials (a trial started beyond it is a surplus trial).
        cfg: Whether generation uses classifier-free guidance (for the MACs).
        early_rejection: Stop evaluating once the verdict is clear (see
            :meth:`~hgc_tune.fidelity._scorer.ConstraintScorer.score`); ``False``: every sample, every trial.
        margins: With ``confidence == 0``: per constraint, reject once its running loss exceeds
            ``budget + margin``; ``None``: ``0``.
        min_samples: Samples evaluated before a trial may stop (and the size of a screen).
        confidence: The confidence with which all constraints' bounds hold together; ``0``: point estimates.
        screen: Only screen trials that cost no less than a trial already within budget.
        name: Prefix of the policies' names.
        worker: Index of this worker process (recorded per trial as user attribute ``worker``).
        samples_per_call: How many samples ``outputs`` generates per pipeline call: the bound is looked at
            after each such batch, and a screen takes whole batches (``min_samples`` rounded up).
    """

    def __init__(
        self,
        space: PolicySpace,
        scorer: ConstraintScorer,
        outputs: Callable[[Policy], Iterable[GeneratedOutput]],
        mac_table: MacTable,
        *,
        n_trials: int,
        cfg: bool = True,
        early_rejection: bool = True,
        margins: list[float] | None = None,
        min_samples: int = 3,
        confidence: float = 0.0,
        screen: bool = True,
        name: str = "policy",
        worker: int = 0,
        samples_per_call: int = 1,
    ) -> None:
        self.space = space
        self.scorer = scorer
        self.outputs = outputs
        self.mac_table = mac_table
        self.n_trials = n_trials
        self.cfg = cfg
        self.early_rejection = early_rejection
        self.margins = margins
        self.min_samples = min_samples
        self.confidence = confidence
        self.screen = screen
        self.name = name
        self.worker = worker
        self.samples_per_call = samples_per_call
        # How often a trial looks again at another process's evaluation of the same policy.
        self.wait_seconds = 1.0

    def _duplicate(self, trial: Trial, key: str) -> FrozenTrial | None:
        """The trial whose evaluation of this policy (``key``) this trial reuses; ``None``: evaluate it here.

        The earliest completed evaluation is reused. While a lower-numbered trial of another process (two
        searches on one study, a peer enqueued twice in a race, a retry) still evaluates the same policy,
        this trial waits for it rather than evaluating the policy a second time; if that trial's worker was
        killed, its trial goes stale, is failed, and this one takes over.
        """
        import optuna
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.RUNNING)
        while True:
            pending = False
            for other in trial.study.get_trials(deepcopy=False, states=states):
                a = other.user_attrs
                if other.number == trial.number or a.get(ATTR.POLICY_KEY) != key:
                    continue
                if other.state == TrialState.COMPLETE:
                    if ATTR.LOSS in a and a.get(ATTR.DUPLICATE_OF) is None:
                        return other
                elif other.number < trial.number:
                    pending = True
            if not pending:
                return None
            time.sleep(self.wait_seconds)
            optuna.storages.fail_stale_trials(trial.study)

    def _incumbent(self, trial: Trial) -> float | None:
        """The MACs of the cheapest completed trial within the budget so far (``None``: none yet)."""
        from optuna.trial import TrialState

        values = [
            t.value
            for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(ATTR.FEASIBLE) and t.value is not None
        ]
        return min(values) if values else None

    def __call__(self, trial: Trial) -> float:
        record_first_heartbeat(trial)  # from here on, a killed worker's trial goes stale and is retried
        try:
            return self._run(trial)
        except SurplusTrial:
            raise
        except Exception as e:
            trial.set_user_attr(ATTR.ERROR, f"{type(e).__name__}: {e}"[:2000])
            _release_memory()
            raise

    def _run(self, trial: Trial) -> float:
        if is_surplus(
            trial.study.get_trials(deepcopy=False), trial.number, trial.datetime_start, self.n_trials
        ):
            trial.set_user_attr(ATTR.SURPLUS, True)
            raise SurplusTrial(f"trial {trial.number} started after the study had {self.n_trials} trials.")
        trial.set_user_attr(ATTR.WORKER, self.worker)
        params = self.space.suggest(trial)
        policy = self.space.build(
            params, name=f"{self.name}-t{trial.number}", provenance=Provenance(source="search")
        )
        macs = macs_provenance(policy, self.mac_table, cfg=self.cfg)
        key = policy_key(policy)
        trial.set_user_attr(
            ATTR.MACS, {c: {k: float(v[k]) for k in ("full", "policy", "reduction")} for c, v in macs.items()}
        )
        trial.set_user_attr(ATTR.POLICY_KEY, key)
        trial.set_user_attr(ATTR.POLICY, policy_to_json(policy))
        trial.set_user_attr(ATTR.METRIC, self.scorer.metrics[0])
        value = float(macs["paper"]["policy"])

        duplicate = self._duplicate(trial, key)
        if duplicate is not None:
            a = duplicate.user_attrs
            estimate = ConstrainedEstimate.from_dict(a[ATTR.ESTIMATE])
            trial.set_user_attr(ATTR.DUPLICATE_OF, duplicate.number)
            if a.get(ATTR.SCREEN):
                trial.set_user_attr(ATTR.SCREEN, True)
        elif is_full_compute(policy):
            estimate = self.scorer.full_compute(confidence=self.confidence)
        else:
            incumbent = self._incumbent(trial) if self.screen and self.early_rejection else None
            screened = incumbent is not None and value >= incumbent
            if screened:
                trial.set_user_attr(ATTR.SCREEN, True)
            estimate = self.scorer.score(
                self.outputs(policy),
                sequential=self.early_rejection,
                margins=self.margins,
                min_samples=self.min_samples,
                confidence=self.confidence,
                max_samples=self._screen_samples if screened else None,
                look_every=self.samples_per_call,
            )
        self._record(trial, estimate)
        return value

    @property
    def _screen_samples(self) -> int:
        """A screen's samples: ``min_samples`` rounded up to whole batches (the batch is generated anyway)."""
        size = self.samples_per_call
        return -(-self.min_samples // size) * size

    def _record(self, trial: Trial, estimate: ConstrainedEstimate) -> None:
        task = estimate.primary
        upper = task.loss_upper
        # A clear failure has one lower bound above its budget, so it always violates its constraint too.
        feasible = estimate.within
        trial.set_user_attr(ATTR.LOSS, float(task.loss))
        trial.set_user_attr(ATTR.LOSS_UPPER, upper if math.isfinite(upper) else None)
        lower = task.lower if task.confidence > 0 else task.loss
        trial.set_user_attr(ATTR.LOSS_LOWER, None if lower is None else float(lower))
        trial.set_user_attr(ATTR.CONFIDENCE, float(estimate.confidence))
        trial.set_user_attr(ATTR.ACCEPTED_EARLY, bool(estimate.accepted_early))
        trial.set_user_attr(ATTR.METRIC_FULL, float(task.full))
        trial.set_user_attr(ATTR.METRIC_POLICY, float(task.policy))
        trial.set_user_attr(ATTR.SAMPLES, int(task.samples))
        trial.set_user_attr(ATTR.SAMPLES_TOTAL, int(task.total))
        trial.set_user_attr(ATTR.REJECTED_EARLY, bool(estimate.rejected_early))
        trial.set_user_attr(ATTR.PER_SAMPLE, [float(v) for v in task.per_sample_policy])
        trial.set_user_attr(ATTR.CONSTRAINTS, constraint_rows(estimate))
        trial.set_user_attr(ATTR.PICTURE, picture_fidelity(estimate))
        trial.set_user_attr(ATTR.ESTIMATE, estimate.to_dict())
        trial.set_user_attr(ATTR.CONSTRAINT, estimate.violation())
        trial.set_user_attr(ATTR.FEASIBLE, feasible)
        for i, (e, budget) in enumerate(zip(estimate.estimates, estimate.budgets)):
            bound = e.loss_upper if math.isfinite(e.loss_upper) else max(1.0, float(e.loss))
            trial.set_constraint(CONSTRAINT_NAME if i == 0 else GUARD_PREFIX + e.metric, bound - budget)


def _release_memory() -> None:
    # After an out-of-memory error the allocator still holds the failed trial's blocks.
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass
