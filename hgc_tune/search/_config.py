"""``SearchConfig``: every knob of a policy search, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hgc_tune.errors import HgcTuneError, SearchError
from hgc_tune.fidelity._confidence import check_confidence

__all__ = ["SearchConfig", "DEFAULT_CATCH"]

# Per-trial failures that are recorded as FAIL while the search goes on: out-of-memory (a RuntimeError
# subclass in torch), numerical trouble, and hgc-tune's own errors (e.g. a metric that is not finite).
DEFAULT_CATCH: tuple[type[Exception], ...] = (RuntimeError, ArithmeticError, HgcTuneError)

_ATTENTION_STATS = ("map_rel_l1", "out_rel_l1", "js")


def _int(value: object, name: str, minimum: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SearchError(
            f"`{name}` must be {kind}{' or None' if optional else ''}, but got {name}={value!r}."
        )


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SearchError(f"`{name}` must be a finite number, but got {name}={value!r}.")
    return float(value)


def _guards(guards: object) -> tuple[tuple[str, float], ...]:
    """``guards`` as a tuple of ``(name, budget)`` pairs, each checked."""
    from hgc_tune.search._constraints import GUARD_NAMES

    if isinstance(guards, str | bytes) or not isinstance(guards, tuple | list):
        raise SearchError(
            f"`guards` must be a tuple of (metric, budget) pairs or None, but got guards={guards!r}."
        )
    out: list[tuple[str, float]] = []
    for guard in guards:
        if not isinstance(guard, tuple | list) or len(guard) != 2:
            raise SearchError(f"each guard must be a (metric, budget) pair, but got {guard!r}.")
        name, budget = guard
        if name not in GUARD_NAMES:
            raise SearchError(
                f"a guard's metric must be one of {list(GUARD_NAMES)}, but got {name!r} "
                f"(in guards={guards!r})."
            )
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0.0 < budget < 1.0:
            raise SearchError(f"the budget of guard {name!r} must be in (0, 1), but got {budget!r}.")
        if any(name == seen for seen, _ in out):
            raise SearchError(
                f"guard {name!r} is given twice (each metric has one budget): guards={guards!r}."
            )
        out.append((name, float(budget)))
    return tuple(out)


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one policy search (see :func:`hgc_tune.search.search_policy`).

    Attributes:
        budget: The largest fidelity loss of the search's metric a policy may have, in ``(0, 1)``
            (``0.015`` = 1.5%).
        metric: Fidelity metric name (``hgc_tune.fidelity.METRICS``); ``None``: the condition type's default
            (its task metric).
        guards: Further constraints, ``((name, budget), …)``, each metric with its own budget in ``(0, 1)``:
            ``prompt`` (the model's prompt-adherence metric), ``background``, ``clip``, ``ssim``, ``psnr`` or
            ``latent_rel_error`` (see :mod:`hgc_tune.search._constraints`). ``None``: the default, prompt
            adherence at 1.5% when the model has a prompt metric (the shapes model, or any with ``clip``);
            ``()``: the search's metric alone.
        clip: A CLIP model (local directory or hub id) to score prompt adherence with (the CLIP score);
            ``None``: none.
        confidence: One-sided confidence with which every constraint's upper bound holds together, in
            ``[0, 1)``; a policy is within budget when every bound is. With ``k`` constraints each bound is
            taken at ``1 − (1 − confidence)/k`` (Bonferroni). ``0``: point estimates.
        n_trials: Trials the study should hold in total (all workers together; a resumed study runs the
            remainder). Enqueued peer schedules count as trials. With one worker, the same seed and trial
            count give the same trials, hence the same policy, on any machine.
        timeout: Stop starting new trials after this many seconds (per process); ``None``: no limit (the
            default: a time limit makes the result depend on the machine's speed).
        seed: Seed of the TPE sampler (worker ``i`` uses ``seed + i``).
        storage: Optuna storage: an RDB URL (``sqlite:///runs/NAME/study.db``,
            ``postgresql+psycopg2://…``, ``mysql+pymysql://…``) or ``journal:PATH`` (Optuna's JournalFile
            storage); ``None``: a SQLite file beside the profile (in memory when the profile has no folder).
        study_name: Study name; ``None``: ``<model>-<condition>-<metric>-budget<budget>``.
        worker_index: Index of this worker process among several on one storage (offsets the seed).
        peers: Peer schedule names to enqueue as the first trials (``deepcache-n3-b0``, ``tgate-g10``, …);
            ``None``: :func:`~hgc_tune.search._space.default_peer_names` for the profile's step count.
        search_guidance: Include the guidance window (``guidance.cfg_until``) in the search space. ``False``:
            every policy runs full CFG at every step, so its MAC saving is caching only; the default peers
            then leave out those that truncate CFG, and naming one in ``peers`` is refused.
        attention_stat: Profile statistic behind the cross-attention thresholds (``map_rel_l1``,
            ``out_rel_l1`` or ``js``; the ``mean_`` aggregate is used).
        calibration_samples: Use only the first ``k`` profiled samples; ``None``: all.
        early_rejection: Sequential evaluation: stop evaluating a trial once its verdict is clear (a clear
            failure or, with ``confidence > 0``, a clear pass); ``False``: every sample for every trial.
        early_rejection_min_samples: Samples evaluated before a trial may stop early (and a screen's size).
        early_rejection_margin: With ``confidence == 0`` only: reject once the running loss exceeds
            ``budget + margin``; ``None``: margin equal to the budget (reject at twice the budget).
        screen: Only screen (on ``early_rejection_min_samples`` samples) a trial that costs no less than one
            already within the budget: it cannot be the result, so its samples go to cheaper candidates.
        max_validation_tries: Plausible trials (not clear failures; those within budget by their point
            estimates first, each group cheapest first) tried on the validation
            split before giving up.
        heartbeat_interval: Seconds between heartbeats of a running trial (RDB and journal storages); a
            trial whose heartbeat is older than ``grace_period`` is failed and retried.
        grace_period: Seconds after which a silent running trial is stale; ``None``: twice the interval.
        max_retry: How often a stale trial is retried.
        startup_trials: Trials before TPE starts modelling (random sampling until then; enqueued peers count).
        num_steps: The step count the caller expects; a profile made for another count is refused.
        check_reference: Before searching, regenerate the first calibration sample at full compute and refuse
            a pipeline that does not reproduce the profile's reference output (other weights, other settings).
        samples_per_call: How many samples one pipeline call generates in trials, validation and test;
            ``None``: the profile's (recorded when it was made), so an all-compute trial reproduces the
            references bit for bit. Another size still searches, but its outputs differ from the references
            in the last bits even at full compute. The chosen policy is the same for the same seed and size.
        catch: Exception types recorded as a failed trial (the search goes on); others abort the search.
        storage_timeout: Seconds to wait for the storage's database server to connect and answer; a server
            that refuses or stays silent fails the search in one line (``StorageUnreachableError``).
    """

    budget: float
    metric: str | None = None
    guards: tuple[tuple[str, float], ...] | None = None
    clip: str | None = None
    confidence: float = 0.95
    n_trials: int = 50
    timeout: float | None = None
    seed: int = 0
    storage: str | None = None
    study_name: str | None = None
    worker_index: int = 0
    peers: tuple[str, ...] | None = None
    search_guidance: bool = True
    attention_stat: str = "map_rel_l1"
    calibration_samples: int | None = None
    early_rejection: bool = True
    early_rejection_min_samples: int = 3
    early_rejection_margin: float | None = None
    screen: bool = True
    max_validation_tries: int = 3
    heartbeat_interval: int = 30
    grace_period: int | None = None
    max_retry: int = 2
    startup_trials: int = 10
    num_steps: int | None = None
    check_reference: bool = True
    samples_per_call: int | None = None
    catch: tuple[type[Exception], ...] = DEFAULT_CATCH
    storage_timeout: float = 10.0

    def __post_init__(self) -> None:
        budget = self.budget
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0.0 < budget < 1.0:
            raise SearchError(f"`budget` must be in (0, 1), but got budget={budget!r}.")
        object.__setattr__(self, "budget", float(budget))
        try:
            object.__setattr__(self, "confidence", check_confidence(self.confidence))
        except HgcTuneError as e:
            raise SearchError(str(e)) from e
        _int(self.n_trials, "n_trials", 1)
        if self.timeout is not None and _number(self.timeout, "timeout") <= 0:
            raise SearchError(f"`timeout` must be positive or None, but got timeout={self.timeout!r}.")
        if _number(self.storage_timeout, "storage_timeout") <= 0:
            raise SearchError(
                f"`storage_timeout` must be a positive number of seconds, but got "
                f"storage_timeout={self.storage_timeout!r}."
            )
        _int(self.seed, "seed", 0)
        _int(self.worker_index, "worker_index", 0)
        _int(self.calibration_samples, "calibration_samples", 1, optional=True)
        _int(self.early_rejection_min_samples, "early_rejection_min_samples", 2 if self.confidence else 1)
        _int(self.max_validation_tries, "max_validation_tries", 1)
        _int(self.heartbeat_interval, "heartbeat_interval", 1)
        _int(self.grace_period, "grace_period", 1, optional=True)
        _int(self.max_retry, "max_retry", 0)
        _int(self.startup_trials, "startup_trials", 0)
        _int(self.num_steps, "num_steps", 1, optional=True)
        _int(self.samples_per_call, "samples_per_call", 1, optional=True)
        if (
            self.early_rejection_margin is not None
            and _number(self.early_rejection_margin, "early_rejection_margin") < 0
        ):
            raise SearchError(
                f"`early_rejection_margin` must be >= 0 or None, but got "
                f"early_rejection_margin={self.early_rejection_margin!r}."
            )
        if self.attention_stat not in _ATTENTION_STATS:
            raise SearchError(
                f"`attention_stat` must be one of {list(_ATTENTION_STATS)}, but got "
                f"attention_stat={self.attention_stat!r}."
            )
        if self.peers is not None:
            if isinstance(self.peers, str) or not all(isinstance(p, str) for p in self.peers):
                raise SearchError(
                    f"`peers` must be a tuple of peer names or None, but got peers={self.peers!r}."
                )
            object.__setattr__(self, "peers", tuple(self.peers))
        if self.guards is not None:
            object.__setattr__(self, "guards", _guards(self.guards))
        if self.clip is not None and (not isinstance(self.clip, str) or not self.clip):
            raise SearchError(
                f"`clip` must be a CLIP model's path or hub id, or None, but got clip={self.clip!r}."
            )
        if self.metric is not None and not isinstance(self.metric, str):
            raise SearchError(f"`metric` must be a metric name or None, but got metric={self.metric!r}.")
        if self.study_name is not None and (not isinstance(self.study_name, str) or not self.study_name):
            raise SearchError(
                f"`study_name` must be a non-empty string or None, but got {self.study_name!r}."
            )
        if not isinstance(self.catch, tuple) or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in self.catch
        ):
            raise SearchError(f"`catch` must be a tuple of exception classes, but got catch={self.catch!r}.")

    @property
    def margin(self) -> float:
        """The early-rejection margin in loss units."""
        return self.budget if self.early_rejection_margin is None else float(self.early_rejection_margin)

    def margins(self, budgets: tuple[float, ...]) -> list[float]:
        """The early-rejection margin of each constraint (its own budget unless a margin is set)."""
        if self.early_rejection_margin is None:
            return [float(b) for b in budgets]
        return [float(self.early_rejection_margin)] * len(budgets)

    @property
    def grace(self) -> int:
        """Seconds after which a running trial without a heartbeat is stale."""
        return self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
