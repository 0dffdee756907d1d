"""``search_policy``: the Optuna study of one profiled pipeline, its held-out validation, its Pareto front."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hgc_tune.errors import FidelityError, HgcTuneError, ProfileError, SearchError
from hgc_tune.policy._io import pareto_path
from hgc_tune.search._config import SearchConfig
from hgc_tune.search._fidelity import (
    FidelityEstimate,
    FidelityScorer,
    GenerationJob,
    GenerationSettings,
    _condition_array,
    generate_output,
    iter_outputs,
)
from hgc_tune.search._heldout import heldout_key, heldout_references
from hgc_tune.search._objective import PolicyObjective, SurplusTrial
from hgc_tune.search._pareto import pareto_to_json, write_pareto
from hgc_tune.search._space import FULL_COMPUTE, PolicySpace, default_peer_names, policy_key
from hgc_tune.search._storage import default_storage_url, open_storage, redact_storage
from hgc_tune.search._trials import TrialRecord, counted_trials, finished_count, trial_records

__all__ = [
    "SearchResult",
    "SearchSession",
    "pareto_front",
    "load_search_profile",
    "prepare_search",
    "run_search",
    "run_search_worker",
    "search_policy",
    "write_search_outputs",
]

# 2: trials record a confidence bound and their feasibility is that of the bound.
_STUDY_FORMAT = 2
# Relative latent error above which the pipeline is taken not to be the profiled one.
_REFERENCE_TOLERANCE = 1e-2
# How often a worker whose share is done looks at the other workers' running trials.
_POLL_SECONDS = 1.0


# ----------------------------------------------------------------------------------------------- inputs


def load_search_profile(profile: Any) -> tuple[Any, Path | None]:
    """Load a profile folder (or take a :class:`~hgc_tune.profile.Profile`) for a search.

    Returns:
        ``(profile, folder)``; ``folder`` is ``None`` for a profile object.

    Raises:
        SearchError: No profile there ("run `hgc-tune profile` first"), or a damaged one.
    """
    from hgc_tune.profile import Profile
    from hgc_tune.profile._artifact import META_FILE

    if isinstance(profile, Profile):
        return profile, None
    folder = Path(profile)
    if folder.name == META_FILE:
        folder = folder.parent
    if not (folder / META_FILE).is_file():
        raise SearchError(f"no profile at {str(folder)!r}; run `hgc-tune profile --out {folder}` first.")
    try:
        return Profile.load(folder), folder
    except ProfileError as e:
        raise SearchError(f"cannot use the profile at {str(folder)!r}: {e}") from e


def _condition_type(profile: Any) -> str | None:
    return profile.condition_type or None


def _check_inputs(profile: Any, pipe: Any, config: SearchConfig) -> Any:
    """Every bad-input check, before any work; returns the metric."""
    from hgc_tune.fidelity._registry import check_metric_fits, default_metric
    from hgc_tune.profile._pipeline import check_profiled_pipeline

    condition = _condition_type(profile)
    try:
        metric = (
            default_metric(condition)
            if config.metric is None
            else check_metric_fits(config.metric, condition)
        )
    except FidelityError as e:
        raise SearchError(str(e)) from e
    if profile.num_samples == 0 or (
        config.calibration_samples is not None and config.calibration_samples < 1
    ):
        raise SearchError("the calibration split is empty: the profile holds no samples; profile some first.")
    if config.num_steps is not None and config.num_steps != profile.num_steps:
        raise SearchError(
            f"the profile was made for {profile.num_steps} denoising steps, but the search asks for "
            f"num_steps={config.num_steps}; profile with --steps {config.num_steps} first."
        )
    if profile.num_steps < 2:
        raise SearchError(
            f"a policy search needs at least 2 denoising steps, but the profile has {profile.num_steps}."
        )
    check_profiled_pipeline(profile, pipe, error=SearchError)
    scheduler = type(pipe.scheduler).__name__
    if scheduler != profile.meta["scheduler"]:
        raise SearchError(
            f"the profile was made with scheduler {profile.meta['scheduler']!r}, but the pipeline uses "
            f"{scheduler!r}; load the pipeline with the profiled scheduler."
        )
    return metric


def _calibration_jobs(profile: Any, limit: int | None) -> list[GenerationJob]:
    from PIL import Image

    from hgc_tune.profile._profiler import condition_input

    conditions, inits, masks = profile.condition_images, profile.init_images, profile.masks
    n = profile.num_samples if limit is None else min(limit, profile.num_samples)
    return [
        GenerationJob(
            prompt=profile.prompts[i],
            negative_prompt=profile.negative_prompts[i],
            seed=int(profile.seeds[i]),
            condition=condition_input(conditions[i]),
            init_image=Image.fromarray(inits[i]) if inits is not None else None,
            mask_image=Image.fromarray(masks[i]) if masks is not None else None,
        )
        for i in range(n)
    ]


def _settings(profile: Any) -> GenerationSettings:
    height, width = profile.resolution
    # img2img / inpainting: the profile's num_steps counts the steps run; the calls take the
    # num_inference_steps and strength they were profiled with.
    return GenerationSettings(
        profile.num_inference_steps,
        profile.guidance_scale,
        height,
        width,
        strength=profile.strength if profile.task != "text2img" else None,
    )


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _profile_signature(profile: Any, samples: int) -> dict[str, Any]:
    return {
        "fingerprint": profile.fingerprint,
        "weights_digest": profile.weights_digest,
        "steps": profile.num_steps,
        "condition_type": profile.condition_type,
        "dataset_sha256": profile.meta["dataset"].get("sha256"),
        "calibration_samples": samples,
    }


# ----------------------------------------------------------------------------------------------- session


@dataclass
class SearchSession:
    """Everything one search process works with (built by :func:`prepare_search`).

    Attributes:
        profile: The profile.
        folder: The profile's folder (``None`` for an in-memory profile): storage and held-out cache go there.
        pipe: The pipeline.
        config: The search settings.
        metric: The fidelity metric (``hgc_tune.fidelity.Metric``).
        space: The search space.
        mac_table: The profile's MAC table.
        cfg: Whether generation uses classifier-free guidance.
        settings: The profile's generation settings.
        calibration: The calibration jobs (the profile's samples).
        scorer: Scores calibration outputs against the profile's references.
        objective: The Optuna objective.
        study: The Optuna study.
        storage_url: The storage string (``None``: in memory).
        study_name: The study's name.
        peers: Peer name -> parameters enqueued for it.
    """

    profile: Any
    folder: Path | None
    pipe: Any
    config: SearchConfig
    metric: Any
    space: PolicySpace
    mac_table: Any
    cfg: bool
    settings: GenerationSettings
    calibration: list[GenerationJob]
    scorer: FidelityScorer
    objective: PolicyObjective
    study: Any
    storage_url: str | None
    study_name: str
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def condition_type(self) -> str | None:
        return _condition_type(self.profile)


def _default_study_name(profile: Any, metric_name: str, budget: float) -> str:
    model = (profile.model_name or "model").replace("/", "_")
    name = f"{model}-{profile.condition_type or 'any'}-{metric_name}-budget{budget:g}"
    # Trials scored against other weights' references must not be resumed: a re-profiled model (retrained,
    # fine-tuned) starts a study of its own next to the old one.
    digest = profile.weights_digest
    return f"{name}-w{digest[:8]}" if digest else name


def _open_study(
    storage_url: str | None,
    study_name: str,
    metric_name: str,
    config: SearchConfig,
    signature: dict[str, Any],
):
    """Create or load the study; a loaded one must have been made with the same budget, metric, profile."""
    import optuna

    storage = None
    if storage_url is not None:
        storage = open_storage(
            storage_url,
            heartbeat_interval=config.heartbeat_interval,
            grace_period=config.grace_period,
            max_retry=config.max_retry,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=config.seed + config.worker_index,
            n_startup_trials=config.startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )
        try:
            study = optuna.create_study(
                study_name=study_name,
                storage=storage,
                sampler=sampler,
                direction="minimize",
                load_if_exists=True,
            )
        except HgcTuneError:
            raise
        except Exception as e:  # sqlalchemy/journal errors: unreachable database, bad schema version
            raise SearchError(
                f"cannot open study {study_name!r} in {redact_storage(storage_url)!r}: {e}"
            ) from e
    expected = {
        "hgc.format": _STUDY_FORMAT,
        "hgc.budget": config.budget,
        "hgc.metric": metric_name,
        "hgc.confidence": config.confidence,
        "hgc.profile": signature,
    }
    attrs = study.user_attrs
    if "hgc.format" in attrs:
        for key, value in expected.items():
            if attrs.get(key) != value:
                raise SearchError(
                    f"study {study_name!r} in {redact_storage(storage_url)!r} was made with "
                    f"{key.removeprefix('hgc.')}={attrs.get(key)!r}, but this search has {value!r}; "
                    "pass another --study-name (study_name=) or the same settings."
                )
    else:
        for key, value in expected.items():
            study.set_user_attr(key, value)
    return study


def _enqueue_peers(study: Any, space: PolicySpace, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Enqueue each distinct peer once (peers with identical policies share one trial, as aliases)."""
    planned: dict[str, tuple[str, dict[str, Any], list[str]]] = {}
    params_of: dict[str, dict[str, Any]] = {}
    for name in [FULL_COMPUTE, *names]:
        if name in params_of:
            continue
        params = space.peer_params(name)
        params_of[name] = params
        key = policy_key(space.build(params))
        if key in planned:
            planned[key][2].append(name)
        else:
            planned[key] = (name, params, [])
    # A resumed study already holds its peers: enqueue only names it has not seen.
    enqueued = set(study.user_attrs.get("hgc.peers", []))
    for name, params, aliases in planned.values():
        if {name, *aliases} <= enqueued:
            continue
        user_attrs: dict[str, Any] = {"peer": name}
        if aliases:
            user_attrs["peer_aliases"] = aliases
        study.enqueue_trial(params, user_attrs=user_attrs, skip_if_exists=True)
    if not set(params_of) <= enqueued:
        study.set_user_attr("hgc.peers", sorted(enqueued | set(params_of)))
    return params_of


def prepare_search(
    profile: Any, pipe: Any, config: SearchConfig, *, cache_dir: str | os.PathLike[str] | None = None
) -> SearchSession:
    """Check the inputs, build the space, scorer and objective, and open (or resume) the study.

    Every bad input raises :class:`SearchError` before any generation: a budget outside ``(0, 1)`` (by
    :class:`SearchConfig`), a metric that does not fit the condition type, a profile of another model
    (fingerprint), step count or scheduler, an empty calibration split, a missing profile. Then, with
    ``config.check_reference``, the first calibration sample is generated at full compute to make sure the
    pipeline reproduces the profile's reference (same weights and settings).

    Args:
        profile: A profile folder (``runs/NAME``) or a :class:`hgc_tune.profile.Profile`.
        pipe: The profiled pipeline (no policy applied).
        config: The search settings.
        cache_dir: Folder for the default storage and the held-out cache when ``profile`` is an object.

    Returns:
        A :class:`SearchSession` whose study has the peers enqueued.
    """
    from hgc_tune.fidelity import TaskEvaluator
    from hgc_tune.policy import target_for_pipeline

    profile, folder = load_search_profile(profile)
    folder = folder if folder is not None else (Path(cache_dir) if cache_dir is not None else None)
    if folder is not None:  # the default SQLite storage cannot create its file in a missing folder
        folder.mkdir(parents=True, exist_ok=True)
    metric = _check_inputs(profile, pipe, config)
    calibration = _calibration_jobs(profile, config.calibration_samples)
    settings = _settings(profile)
    target = target_for_pipeline(
        pipe,
        num_steps=profile.num_steps,
        condition_type=_condition_type(profile),
        model=profile.model_name or None,
    )
    space = PolicySpace.from_profile(
        profile, target, guidance=config.search_guidance, attention_stat=config.attention_stat
    )
    cfg = space.cfg
    peer_names = (
        config.peers
        if config.peers is not None
        else default_peer_names(profile.num_steps, cfg=space.guidance, controlnet=space.has_controlnet)
    )
    for name in peer_names:  # a peer that does not fit is bad input: fail before any work
        space.peer_params(name)
    storage_url = config.storage
    if storage_url is None and folder is not None:
        storage_url = default_storage_url(folder)
    study_name = config.study_name or _default_study_name(profile, metric.name, config.budget)

    evaluator = TaskEvaluator(_condition_type(profile), metric)
    references = [_reference(profile, i) for i in range(len(calibration))]
    conditions = list(profile.condition_images[: len(calibration)])
    scorer = FidelityScorer(evaluator, references, conditions)
    if config.check_reference:
        regenerated = generate_output(pipe, calibration[0], settings)
        error = _relative_error(regenerated.latent, references[0].latent)
        if not error <= _REFERENCE_TOLERANCE:
            raise SearchError(
                f"the pipeline does not reproduce the profile's reference output (relative latent error "
                f"{error:.3g} on calibration sample 0): it is not the profiled model (same architecture, "
                "other weights?) or runs with other settings (dtype, device, scheduler configuration); "
                "profile it again."
            )
    signature = _profile_signature(profile, len(calibration))
    study = _open_study(storage_url, study_name, metric.name, config, signature)
    peers = _enqueue_peers(study, space, peer_names)

    def outputs(policy):
        return iter_outputs(pipe, policy, calibration, settings)

    objective = PolicyObjective(
        space,
        scorer,
        outputs,
        profile.mac_table,
        budget=config.budget,
        n_trials=config.n_trials,
        cfg=cfg,
        early_rejection=config.early_rejection,
        margin=config.margin,
        min_samples=config.early_rejection_min_samples,
        confidence=config.confidence,
        screen=config.screen,
        name=study_name,
        worker=config.worker_index,
    )
    return SearchSession(
        profile=profile,
        folder=folder,
        pipe=pipe,
        config=config,
        metric=metric,
        space=space,
        mac_table=profile.mac_table,
        cfg=cfg,
        settings=settings,
        calibration=calibration,
        scorer=scorer,
        objective=objective,
        study=study,
        storage_url=storage_url,
        study_name=study_name,
        peers=peers,
    )


def _reference(profile: Any, index: int):
    from hgc_tune.search._fidelity import GeneratedOutput

    return GeneratedOutput(image=profile.reference_images[index], latent=profile.reference_latents[index])


# ----------------------------------------------------------------------------------------------- trials


def _best_feasible_value(trials: Sequence[Any]) -> float | None:
    values = [
        t.value
        for t in trials
        if t.state.name == "COMPLETE" and t.user_attrs.get("feasible") and t.value is not None
    ]
    return min(values) if values else None


def _run_trials(session: SearchSession, on_trial: Callable[[Any], None] | None = None) -> int:
    """Run trials until the study counts ``n_trials`` (all workers), the timeout passes, or it is stopped.

    When the study is full but other workers' trials still run, wait for them: a trial whose worker died
    goes stale after the grace period, is failed, enqueued again and run here, so it is neither lost nor
    blocks the study. Returns the number of trials this process ran.
    """
    import optuna
    from optuna.trial import TrialState

    config, study = session.config, session.study
    start = time.monotonic()
    ran = 0

    def remaining() -> float | None:
        return None if config.timeout is None else config.timeout - (time.monotonic() - start)

    def callback(study: Any, trial: Any) -> None:
        nonlocal ran
        ran += 1
        trials = study.get_trials(deepcopy=False)
        if len(counted_trials(trials)) >= config.n_trials:
            study.stop()
        if on_trial is not None:
            on_trial(trials)

    heartbeat = session.storage_url is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        while True:
            trials = study.get_trials(deepcopy=False)
            left = remaining()
            if left is not None and left <= 0:
                break
            if len(counted_trials(trials)) < config.n_trials:
                study.optimize(
                    session.objective,
                    timeout=left,
                    catch=(*config.catch, SurplusTrial),
                    callbacks=[callback],
                    gc_after_trial=False,
                )
                continue
            if not heartbeat or not any(t.state == TrialState.RUNNING for t in trials):
                break
            # Other workers' trials still run: poll until they finish, or go stale and come back as retries.
            time.sleep(min(_POLL_SECONDS, max(left, 0.05)) if left is not None else _POLL_SECONDS)
            optuna.storages.fail_stale_trials(study)
            if on_trial is not None:
                on_trial(study.get_trials(deepcopy=False))
    return ran


def run_search_worker(profile: Any, pipe: Any, config: SearchConfig, *, cache_dir: Any = None) -> int:
    """Run trials of the shared study only (no validation, no output): one of several worker processes.

    Returns:
        The number of trials this worker ran.
    """
    session = prepare_search(profile, pipe, config, cache_dir=cache_dir)
    return _run_trials(session)


# ----------------------------------------------------------------------------------------------- result


def pareto_front(records: Sequence[TrialRecord]) -> list[int]:
    """Numbers of the trials on the Pareto front of MAC reduction (higher) vs fidelity loss (lower).

    Only completed trials take part, not clear failures (their loss is partial); of several
    trials with the same policy, the first stands for all.
    """
    points = [
        r
        for r in records
        if r.complete and not r.rejected_early and r.duplicate_of is None and r.reduction is not None
    ]
    seen: set[str | None] = set()
    unique = []
    for r in points:
        if r.policy_key in seen:
            continue
        seen.add(r.policy_key)
        unique.append(r)
    front = []
    for r in unique:
        dominated = any(
            o.reduction >= r.reduction and o.loss <= r.loss and (o.reduction > r.reduction or o.loss < r.loss)
            for o in unique
        )
        if not dominated:
            front.append(r)
    return [r.number for r in sorted(front, key=lambda r: (r.reduction, r.number))]


@dataclass(frozen=True)
class SearchResult:
    """What a search found.

    Attributes:
        study_name: The Optuna study.
        storage: The storage (password redacted; ``None``: in memory).
        model: The profiled model's name.
        condition_type: The condition type.
        metric: The fidelity metric.
        budget: The loss budget.
        confidence: The one-sided confidence level of the loss bounds (``0``: point estimates).
        num_steps: Denoising steps.
        macs_full: Full-compute MACs of one generation per convention.
        trials: Every trial (surplus trials left out).
        peers: Peer name -> trial number (aliases share a number).
        front: Numbers of the trials on the Pareto front.
        best: The cheapest trial within the budget on the calibration split (``None``: none is).
        validation: The checks on the validation split, cheapest candidate first: ``trial``, ``loss``,
            ``loss_upper``, ``full``, ``policy``, ``samples``, ``rejected_early``, ``accepted_early``,
            ``holds``, ``cached``.
        validated: Whether a validation split was used.
        chosen: The trial whose policy is the result (``None``: none holds).
        test: The chosen policy on the test split, which took no part in choosing it (``None``: no test
            split): ``loss``, ``loss_upper``, ``full``, ``policy``, ``samples``, ``holds``, ``cached``.
        policy: The chosen policy, with provenance (fidelity per split, MACs, study, trial).
        message: Why there is no policy, when there is none.
    """

    study_name: str
    storage: str | None
    model: str
    condition_type: str | None
    metric: str
    budget: float
    num_steps: int
    macs_full: Mapping[str, float]
    trials: tuple[TrialRecord, ...]
    peers: Mapping[str, int]
    front: tuple[int, ...]
    best: TrialRecord | None
    validation: tuple[Mapping[str, Any], ...]
    validated: bool
    chosen: TrialRecord | None
    policy: Any
    message: str | None = None
    confidence: float = 0.0
    test: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Whether a policy was found (and, with a validation split, holds on it)."""
        return self.policy is not None

    def record(self, number: int) -> TrialRecord:
        for r in self.trials:
            if r.number == number:
                return r
        raise KeyError(number)

    def pareto_json(self) -> dict[str, Any]:
        """The Pareto file's content (:func:`hgc_tune.search._pareto.pareto_to_json`)."""
        return pareto_to_json(self)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (for ``--json``): the Pareto report plus the chosen policy."""
        from hgc_tune.policy._io import policy_to_json

        data = self.pareto_json()
        data["policy"] = None if self.policy is None else policy_to_json(self.policy)
        return data


def _split_scorer(session: SearchSession, samples: Sequence[Any], what: str, progress: Any):
    """A scorer of ``samples`` against their full-compute outputs (cached beside the profile) and its key."""
    from hgc_tune.fidelity import TaskEvaluator
    from hgc_tune.search._fidelity import jobs_from_samples

    jobs = jobs_from_samples(samples, seed=session.config.seed + 100_000, task=session.profile.task)
    if not jobs:
        raise SearchError(f"the {what} split is empty; pass {what} samples or skip it.")
    settings = session.settings
    key = heldout_key(session.pipe, jobs, settings)
    references, _ = heldout_references(
        session.pipe,
        jobs,
        settings,
        cache_dir=session.folder,
        on_output=lambda i: progress(f"{what} reference"),
    )
    height, width = settings.height, settings.width
    conditions = [_condition_array(job.condition, height, width) for job in jobs]
    scorer = FidelityScorer(TaskEvaluator(session.condition_type, session.metric), references, conditions)
    return scorer, jobs, key


def _stored_estimate(session: SearchSession, attr: str, key: str) -> FidelityEstimate | None:
    stored = session.study.user_attrs.get(attr)
    if isinstance(stored, dict) and stored.get("key") == key:
        return FidelityEstimate(**{k: v for k, v in stored.items() if k != "key"})
    return None


def _check_row(number: int, estimate: FidelityEstimate, budget: float, cached: bool) -> dict[str, Any]:
    return {
        "trial": number,
        "loss": estimate.loss,
        "loss_upper": estimate.to_dict()["upper"] if estimate.confidence > 0 else estimate.loss,
        "confidence": estimate.confidence,
        "full": estimate.full,
        "policy": estimate.policy,
        "samples": estimate.samples,
        "rejected_early": estimate.rejected_early,
        "accepted_early": estimate.accepted_early,
        "holds": estimate.within(budget),
        "cached": cached,
    }


def _validate(session: SearchSession, candidates: list[TrialRecord], samples: Any, progress: Any) -> tuple:
    """Test candidates sequentially on the validation split, cheapest first; the first whose upper bound
    holds the budget is chosen. Returns (chosen, estimate, tries)."""
    config = session.config
    scorer, jobs, key = _split_scorer(session, samples, "validation", progress)
    tries = []
    for record in candidates[: config.max_validation_tries]:
        attr = f"hgc.heldout.{record.number}"
        estimate = _stored_estimate(session, attr, key)
        cached = estimate is not None
        if estimate is None:
            progress(f"validate trial {record.number}")
            estimate = scorer.score(
                iter_outputs(session.pipe, record.policy(), jobs, session.settings),
                budget=config.budget if config.early_rejection else None,
                margin=config.margin,
                min_samples=config.early_rejection_min_samples,
                confidence=config.confidence,
                # A pass must hold on every validation sample: stopping at the first look whose bound is
                # within the budget would let noise pass a policy (optional stopping). Failures stop early.
                accept_early=False,
            )
            session.study.set_user_attr(attr, {"key": key, **estimate.to_dict()})
        row = _check_row(record.number, estimate, config.budget, cached)
        tries.append(row)
        if row["holds"]:
            return record, estimate, tries
    return None, None, tries


def _test(session: SearchSession, record: TrialRecord, samples: Any, progress: Any) -> tuple:
    """The chosen policy on every test sample (no early stop: this is the reported figure)."""
    config = session.config
    scorer, jobs, key = _split_scorer(session, samples, "test", progress)
    attr = f"hgc.test.{record.number}"
    estimate = _stored_estimate(session, attr, key)
    cached = estimate is not None
    if estimate is None:
        progress(f"test trial {record.number}")
        estimate = scorer.score(
            iter_outputs(session.pipe, record.policy(), jobs, session.settings),
            confidence=config.confidence,
        )
        session.study.set_user_attr(attr, {"key": key, **estimate.to_dict()})
    return estimate, _check_row(record.number, estimate, config.budget, cached)


def _split_fidelity(split: str, estimate: FidelityEstimate) -> dict[str, float]:
    out = {
        f"{split}_full": float(estimate.full),
        f"{split}_policy": float(estimate.policy),
        f"{split}_loss": float(estimate.loss),
        f"{split}_samples": int(estimate.samples),
    }
    if math.isfinite(estimate.loss_upper):
        out[f"{split}_loss_upper"] = float(estimate.loss_upper)
    return out


def _final_policy(
    session: SearchSession,
    record: TrialRecord,
    validation: FidelityEstimate | None,
    test: FidelityEstimate | None,
):
    import dataclasses

    import diffusers

    import hgc_tune
    from hgc_tune.policy import Provenance, pipeline_loras
    from hgc_tune.policy._macs import macs_provenance

    policy = record.policy()
    fidelity = {
        "calibration_full": float(record.metric_full),
        "calibration_policy": float(record.metric_policy),
        "calibration_loss": float(record.loss),
        "calibration_samples": int(record.samples),
    }
    if record.loss_upper is not None:
        fidelity["calibration_loss_upper"] = float(record.loss_upper)
    if validation is not None:
        fidelity.update(_split_fidelity("validation", validation))
    if test is not None:
        fidelity.update(_split_fidelity("test", test))
    provenance = Provenance(
        source="search",
        budget=session.config.budget,
        metric=session.metric.name,
        confidence=session.config.confidence,
        fidelity=fidelity,
        macs=macs_provenance(policy, session.mac_table, cfg=session.cfg),
        study=session.study_name,
        trial=record.number,
        hgc_tune_version=hgc_tune.__version__,
        diffusers_version=diffusers.__version__,
        lora=pipeline_loras(session.pipe),
    )
    model = session.profile.model_name or "model"
    name = f"{model}-{session.condition_type or 'any'}-hgc"
    return dataclasses.replace(policy, name=name, provenance=provenance)


def search_policy(
    profile: Any,
    pipe: Any,
    config: SearchConfig,
    *,
    heldout: Sequence[Any] | None = None,
    test: Sequence[Any] | None = None,
    progress: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> SearchResult:
    """Search the cheapest caching policy whose fidelity loss stays within the budget, with confidence.

    One Optuna study per profile (model × condition type × metric × budget) minimises the policy's MACs
    (``paper`` convention, analytic from the profile's MAC table) subject to: the one-sided upper confidence
    bound (``config.confidence``, paired over samples) of the fidelity loss is within the budget. Three
    disjoint splits take part:

    - **calibration** (the profile's samples, whose full-compute outputs it holds): the trials. Each trial
      is tested sequentially, one sample at a time, and stops once its verdict is clear; a trial that
      cannot beat the cheapest one already within the budget is only screened.
    - **validation** (``heldout``): the plausible trials (not clear failures), cheapest first, are tested
      sequentially on it until one holds the budget (at most ``config.max_validation_tries``).
    - **test** (``test``): the chosen policy is measured once on every test sample. This split takes no part
      in the choice, so its figure is the one the policy's provenance, the report and the README state.

    The peer schedules (full compute, DeepCache, T-GATE, ControlNet window) are the first trials, so the
    result is never worse than them on the calibration split. The study is resumable: running this again
    continues it (up to ``config.n_trials`` trials in total) and reuses stored validation and test checks.
    Bounded by a trial count with one worker, the same seed gives the same policy on any machine.

    Args:
        profile: A profile folder (``runs/NAME``) or a :class:`hgc_tune.profile.Profile`.
        pipe: The profiled pipeline.
        config: The search settings.
        heldout: Validation samples (``hgc_tune.data.open_dataset(..., split="validation")``); ``None``: no
            validation (the calibration winner is chosen, ``validated=False``).
        test: Test samples (``split="test"``); ``None``: no test figure.
        progress: Show a tqdm bar (trials, best feasible MACs) on stderr.
        cache_dir: Folder for the default storage and held-out cache when ``profile`` is an object.

    Returns:
        A :class:`SearchResult`; write it with :func:`write_search_outputs`.

    Raises:
        SearchError: Bad input (see :func:`prepare_search`), an empty validation or test split, or a study
            made with other settings.

    Example:
        >>> from hgc_tune.models import load_pipeline  # doctest: +SKIP
        >>> from hgc_tune.data import open_dataset  # doctest: +SKIP
        >>> pipe = load_pipeline("shapes", condition="seg")  # doctest: +SKIP
        >>> val = open_dataset("shapes", condition_type="seg", split="validation", limit=16)  # doctest: +SKIP
        >>> test = open_dataset("shapes", condition_type="seg", split="test", limit=16)  # doctest: +SKIP
        >>> config = SearchConfig(budget=0.015)  # the task metric (mIoU), 95% upper bound
        >>> result = search_policy("runs/shapes-seg", pipe, config, heldout=val, test=test)  # doctest: +SKIP
        >>> write_search_outputs(result, "policies/shapes-seg.json")  # doctest: +SKIP
    """
    session = prepare_search(profile, pipe, config, cache_dir=cache_dir)
    return run_search(session, heldout=heldout, test=test, progress=progress)


def run_search(
    session: SearchSession,
    *,
    heldout: Sequence[Any] | None = None,
    test: Sequence[Any] | None = None,
    progress: bool = False,
) -> SearchResult:
    """Run the trials of a prepared search, validate on ``heldout``, test on ``test``, collect the result.

    :func:`search_policy` is :func:`prepare_search` followed by this; call them separately to start other
    workers between the two (the study exists and holds the peers once :func:`prepare_search` returns).
    """
    from tqdm.auto import tqdm

    config = session.config
    bar = tqdm(
        total=config.n_trials,
        initial=min(config.n_trials, finished_count(session.study.get_trials(deepcopy=False))),
        unit="trial",
        desc="search",
        disable=not progress,
    )

    def on_trial(trials: Sequence[Any]) -> None:
        bar.n = min(config.n_trials, finished_count(trials))
        best = _best_feasible_value(trials)
        if best is not None:
            bar.set_postfix(best_macs=f"{best / 1e9:.4g}G", refresh=False)
        bar.refresh()

    try:
        _run_trials(session, on_trial)
    finally:
        bar.close()

    def note(what: str) -> None:
        if progress:
            tqdm.write(f"search: {what}")

    return _result(session, heldout, test, note)


def _candidates(
    records: Sequence[TrialRecord], budget: float, tries: int, validated: bool
) -> tuple[TrialRecord | None, list[TrialRecord]]:
    """The calibration winner and the candidates for the policy, in the order they are checked.

    Without a validation split the calibration verdict decides: the trials within the budget, cheapest
    first. With one, every plausible trial (not a failure on calibration) is a candidate, cheapest first,
    so the cheapest get the validation samples; but the calibration winner is never left unchecked: it
    takes the last of the ``tries`` when cheaper undecided trials would use them all. One trial per policy,
    and only policies cheaper than full compute.
    """

    def order(r: TrialRecord) -> tuple:
        upper = r.loss_upper if r.loss_upper is not None else math.inf
        return (r.macs["paper"]["policy"], upper, r.loss, r.number)

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


def _result(
    session: SearchSession,
    heldout: Sequence[Any] | None,
    test: Sequence[Any] | None,
    note: Callable[[str], None],
) -> SearchResult:
    from hgc_tune.policy import full_compute_policy
    from hgc_tune.policy._macs import macs_provenance

    config = session.config
    trials = session.study.get_trials(deepcopy=False)
    records = trial_records(trials)
    by_number = {r.number: r for r in records}
    peers: dict[str, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.number not in by_number:
            continue
        # A retried peer appears twice (the stale trial and its retry): the completed one stands for it.
        for name in [t.user_attrs.get("peer"), *t.user_attrs.get("peer_aliases", [])]:
            if name and (name not in peers or by_number[peers[name]].state != "COMPLETE"):
                peers[name] = t.number

    best, candidates = _candidates(records, config.budget, config.max_validation_tries, heldout is not None)
    validation: tuple = ()
    chosen = None
    estimate = None
    message = None
    bound = "upper bound" if config.confidence > 0 else "point estimate"
    if not candidates:
        message = (
            "no policy cheaper than full compute may meet the budget on the calibration split "
            f"(budget={config.budget:g}, metric={session.metric.name}, {bound} of the loss, "
            f"{len(records)} trials); raise the budget, profile more calibration samples, or run more trials."
        )
    elif heldout is not None:
        chosen, estimate, tries = _validate(session, candidates, heldout, note)
        validation = tuple(tries)
        if chosen is None:
            message = (
                f"none of the {len(tries)} cheapest plausible policies holds the budget {config.budget:g} "
                f"on the validation split ({bound} of the loss: "
                + ", ".join(
                    f"trial {t['trial']}: {_fmt(t['loss_upper'] if config.confidence > 0 else t['loss'])}"
                    for t in tries
                )
                + "); raise the budget, use more validation samples, or run more trials."
            )
    else:
        chosen = candidates[0]
    test_row = None
    test_estimate = None
    if chosen is not None and test is not None:
        test_estimate, test_row = _test(session, chosen, test, note)
    policy = None if chosen is None else _final_policy(session, chosen, estimate, test_estimate)
    full = macs_provenance(full_compute_policy(session.space.target), session.mac_table, cfg=session.cfg)
    return SearchResult(
        study_name=session.study_name,
        storage=redact_storage(session.storage_url),
        model=session.profile.model_name,
        condition_type=session.condition_type,
        metric=session.metric.name,
        budget=config.budget,
        num_steps=session.profile.num_steps,
        macs_full={c: float(v["full"]) for c, v in full.items()},
        trials=tuple(records),
        peers=peers,
        front=tuple(pareto_front(records)),
        best=best,
        validation=validation,
        validated=heldout is not None,
        chosen=chosen,
        policy=policy,
        message=message,
        confidence=config.confidence,
        test=test_row,
    )


def _fmt(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:.4g}"


# ----------------------------------------------------------------------------------------------- output


def write_search_outputs(result: SearchResult, out: str | os.PathLike[str]) -> dict[str, Path | None]:
    """Write the chosen policy to ``out`` (when there is one) and the Pareto JSON beside it (always).

    Returns:
        ``{"policy": path or None, "pareto": path}``.
    """
    from hgc_tune.policy import save_policy

    pareto = write_pareto(result, pareto_path(out))
    policy_path = save_policy(result.policy, out) if result.policy is not None else None
    return {"policy": policy_path, "pareto": pareto}
