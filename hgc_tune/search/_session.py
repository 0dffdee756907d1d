"""The search session: the checked inputs (profile, pipeline, settings) and everything one search process
works with: the calibration jobs and their scorer, the space, the objective and the opened (or resumed) study.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from hgc_tune.errors import FidelityError, HgcTuneError, ProfileError, SearchError
from hgc_tune.fidelity._registry import check_metric_fits, default_metric
from hgc_tune.fidelity._scorer import ConstraintScorer
from hgc_tune.generation import (
    GeneratedOutput,
    GenerationJob,
    GenerationSettings,
    generate_output,
    iter_outputs,
)
from hgc_tune.generation._inputs import profile_jobs, profile_settings
from hgc_tune.policy import target_for_pipeline
from hgc_tune.search._config import SearchConfig
from hgc_tune.search._constraints import ConstraintPlan, plan_constraints
from hgc_tune.search._objective import PolicyObjective
from hgc_tune.search._space import FULL_COMPUTE, PolicySpace, default_peer_names, policy_key
from hgc_tune.search._storage import default_storage_url, open_storage, redact_storage, storage_error
from hgc_tune.search._trials import close_waiting, counted_trials, duplicate_waiting_peers, present_peers

if TYPE_CHECKING:
    import optuna

    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.fidelity import ClipScorer, Metric, PromptMetric
    from hgc_tune.macs import MacTable
    from hgc_tune.policy import Policy
    from hgc_tune.profile import Profile

__all__ = ["SearchSession", "load_search_profile", "prepare_search"]

# 3: several constraints (the study records each metric's budget; trials record every constraint's bound).
_STUDY_FORMAT = 3
# Relative latent error above which the pipeline is taken not to be the profiled one.
_REFERENCE_TOLERANCE = 1e-2
# How often a worker whose share is done looks at the other workers' running trials.


@overload
def load_search_profile(profile: str | os.PathLike[str]) -> tuple[Profile, Path]: ...


@overload
def load_search_profile(profile: Profile) -> tuple[Profile, None]: ...


def load_search_profile(profile: str | os.PathLike[str] | Profile) -> tuple[Profile, Path | None]:
    """Load a profile folder (or take a :class:`~hgc_tune.profile.Profile`) for a search.

    Returns:
        ``(profile, folder)``; ``folder`` is ``None`` for a profile object.

    Raises:
        SearchError: No profile there ("run `hgc-tune profile` first"), or a damaged one.
    """
    # hgc_tune.profile (which imports torch) here and below, not at the top: the search command's argument
    # checks import hgc_tune.search (its SearchConfig) and must run without torch (and optuna, to be quick).
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


def _condition_type(profile: Profile) -> str | None:
    return profile.condition_type or None


def _check_inputs(
    profile: Profile, pipe: ControlNetPipeline, config: SearchConfig
) -> tuple[Metric, ConstraintPlan]:
    """Every bad-input check, before any work; returns the metric and the constraints."""
    from hgc_tune.profile._pipeline import check_profiled_pipeline  # torch: see load_search_profile

    condition = _condition_type(profile)
    try:
        metric = (
            default_metric(condition)
            if config.metric is None
            else check_metric_fits(config.metric, condition)
        )
    except FidelityError as e:
        raise SearchError(str(e)) from e
    plan = plan_constraints(config, metric, profile.model_name)
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
    return metric, plan


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _profile_signature(profile: Profile, samples: int, samples_per_call: int) -> dict[str, Any]:
    signature = {
        "fingerprint": profile.fingerprint,
        "weights_digest": profile.weights_digest,
        "steps": profile.num_steps,
        "condition_type": profile.condition_type,
        "dataset_sha256": profile.meta["dataset"].get("sha256"),
        "calibration_samples": samples,
    }
    if (
        samples_per_call != 1
    ):  # trials batched otherwise are other measurements (studies of 1 stay as they were)
        signature["samples_per_call"] = samples_per_call
    return signature


@dataclass
class SearchSession:
    """Everything one search process works with (built by :func:`prepare_search`).

    Attributes:
        profile: The profile.
        folder: The profile's folder (``None`` for an in-memory profile): storage and held-out cache go there.
        pipe: The pipeline.
        config: The search settings.
        metric: The fidelity metric (``hgc_tune.fidelity.Metric``).
        constraints: The constraints (``metric`` at the budget, then the guards) and their confidence.
        clip: The CLIP model that scores prompt adherence (``None``: none given).
        space: The search space.
        mac_table: The profile's MAC table.
        cfg: Whether generation uses classifier-free guidance.
        settings: The profile's generation settings.
        calibration: The calibration jobs (the profile's samples).
        scorer: Scores calibration outputs under every constraint against the profile's references.
        objective: The Optuna objective.
        study: The Optuna study.
        storage_url: The storage string (``None``: in memory).
        study_name: The study's name.
        peers: Peer name -> parameters enqueued for it.
        prompt_metric: The prompt metric of the model (``hgc_tune.fidelity.PromptMetric``: for ``shapes``
            the background reader, for a checkpoint the ``--clip`` model; unguarded without one), recorded
            in the chosen policy's provenance; ``None``: not recorded.
    """

    profile: Profile
    folder: Path | None
    pipe: ControlNetPipeline
    config: SearchConfig
    metric: Metric
    space: PolicySpace
    mac_table: MacTable
    cfg: bool
    settings: GenerationSettings
    calibration: list[GenerationJob]
    scorer: ConstraintScorer
    objective: PolicyObjective
    study: optuna.Study
    storage_url: str | None
    study_name: str
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    constraints: ConstraintPlan | None = None
    clip: ClipScorer | None = None
    # The prompt metric's record lives here, not on SearchConfig: a config travels to workers as flags (its
    # `clip` names the model), a loaded CLIP model does not.
    prompt_metric: PromptMetric | None = None

    @property
    def condition_type(self) -> str | None:
        return _condition_type(self.profile)


def _default_study_name(profile: Profile, plan: ConstraintPlan) -> str:
    model = (profile.model_name or "model").replace("/", "_")
    task = plan.constraints[0]
    name = f"{model}-{profile.condition_type or 'any'}-{task.metric.name}-budget{task.budget:g}"
    # Each guard in the name: searches with other guards are other studies, not a refused resume.
    name += "".join(f"-{g.metric.name}{g.budget:g}" for g in plan.guards)
    # Trials scored against other weights' references must not be resumed: a re-profiled model (retrained,
    # fine-tuned) starts a study of its own next to the old one.
    digest = profile.weights_digest
    return f"{name}-w{digest[:8]}" if digest else name


def _open_study(
    storage_url: str | None,
    study_name: str,
    plan: ConstraintPlan,
    config: SearchConfig,
    signature: dict[str, Any],
) -> optuna.Study:
    """Create or load the study; a loaded one must have been made with the same budget, metric, profile."""
    import optuna  # not at the top: see load_search_profile

    storage = None
    if storage_url is not None:
        storage = open_storage(
            storage_url,
            heartbeat_interval=config.heartbeat_interval,
            grace_period=config.grace_period,
            max_retry=config.max_retry,
            timeout=config.storage_timeout,
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
            url = storage_url or "in memory"
            raise storage_error(e, url, timeout=config.storage_timeout, study=study_name) from e
    expected = {
        "hgc.format": _STUDY_FORMAT,
        "hgc.budget": config.budget,
        "hgc.metric": plan.constraints[0].metric.name,
        "hgc.constraints": plan.signature(),
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


def _enqueue_peers(
    study: optuna.Study, space: PolicySpace, names: Sequence[str], n_trials: int
) -> dict[str, dict[str, Any]]:
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
    # A resumed study already holds its peers: enqueue only names no trial stands for, while it has room.
    trials = study.get_trials(deepcopy=False)
    enqueued = present_peers(trials) if len(counted_trials(trials)) < n_trials else set(params_of)
    for name, params, aliases in planned.values():
        if {name, *aliases} <= enqueued:
            continue
        user_attrs: dict[str, Any] = {"peer": name}
        if aliases:
            user_attrs["peer_aliases"] = aliases
        study.enqueue_trial(params, user_attrs=user_attrs)
    close_waiting(study, duplicate_waiting_peers(study.get_trials(deepcopy=False)))  # a race of two starts
    recorded = set(study.user_attrs.get("hgc.peers", []))
    if not set(params_of) <= recorded:
        study.set_user_attr("hgc.peers", sorted(recorded | set(params_of)))
    return params_of


def prepare_search(
    profile: str | os.PathLike[str] | Profile,
    pipe: ControlNetPipeline,
    config: SearchConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    prompt_metric: PromptMetric | None = None,
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
        prompt_metric: The model's prompt metric (:func:`hgc_tune.fidelity.prompt_metric_for`), kept on
            the session; a CLIP model other than the profile's (another weights digest) is refused.

    Returns:
        A :class:`SearchSession` whose study has the peers enqueued.
    """
    profile, folder = load_search_profile(profile)
    folder = folder if folder is not None else (Path(cache_dir) if cache_dir is not None else None)
    if folder is not None:  # the default SQLite storage cannot create its file in a missing folder
        folder.mkdir(parents=True, exist_ok=True)
    metric, plan = _check_inputs(profile, pipe, config)
    if prompt_metric is not None:
        from hgc_tune.profile._prompt import check_prompt_metric_fits  # torch: see load_search_profile

        check_prompt_metric_fits(profile, prompt_metric)
    space, peer_names = _space_and_peers(profile, pipe, config)
    cfg = space.cfg
    storage_url = config.storage
    if storage_url is None and folder is not None:
        storage_url = default_storage_url(folder)
    study_name = config.study_name or _default_study_name(profile, plan)
    clip = _clip_scorer(config, pipe, prompt_metric)
    calibration, settings, scorer = _calibration(profile, pipe, config, plan, clip)
    signature = _profile_signature(profile, len(calibration), settings.samples_per_call)
    study = _open_study(storage_url, study_name, plan, config, signature)
    peers = _enqueue_peers(study, space, peer_names, config.n_trials)

    def outputs(policy: Policy | None) -> Iterator[GeneratedOutput]:
        return iter_outputs(pipe, policy, calibration, settings)

    objective = PolicyObjective(
        space,
        scorer,
        outputs,
        profile.mac_table,
        n_trials=config.n_trials,
        cfg=cfg,
        early_rejection=config.early_rejection,
        margins=config.margins(plan.budgets),
        min_samples=config.early_rejection_min_samples,
        confidence=config.confidence,
        screen=config.screen,
        name=study_name,
        worker=config.worker_index,
        samples_per_call=settings.samples_per_call,
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
        constraints=plan,
        clip=clip,
        prompt_metric=prompt_metric,
    )


def _reference(profile: Profile, index: int) -> GeneratedOutput:
    return GeneratedOutput(image=profile.reference_images[index], latent=profile.reference_latents[index])


def _space_and_peers(
    profile: Profile, pipe: ControlNetPipeline, config: SearchConfig
) -> tuple[PolicySpace, Sequence[str]]:
    """The search space of the profiled pipeline and the peers to enqueue (each checked to fit it)."""
    target = target_for_pipeline(
        pipe,
        num_steps=profile.num_steps,
        condition_type=_condition_type(profile),
        model=profile.model_name or None,
    )
    space = PolicySpace.from_profile(
        profile, target, guidance=config.search_guidance, attention_stat=config.attention_stat
    )
    peer_names = (
        config.peers
        if config.peers is not None
        else default_peer_names(profile.num_steps, cfg=space.guidance, controlnet=space.has_controlnet)
    )
    for name in peer_names:  # a peer that does not fit is bad input: fail before any work
        space.peer_params(name)
    return space, peer_names


def _clip_scorer(
    config: SearchConfig, pipe: ControlNetPipeline, prompt_metric: PromptMetric | None
) -> ClipScorer | None:
    """The CLIP model that scores prompt adherence: the one the prompt metric already holds (loaded once by
    the caller), else ``config.clip`` loaded on the pipeline's device (``None``: none given)."""
    from hgc_tune.fidelity import ClipScorer, load_clip_scorer

    if prompt_metric is not None and isinstance(prompt_metric.scorer, ClipScorer):
        return prompt_metric.scorer
    if config.clip is None:
        return None
    return load_clip_scorer(config.clip, device=str(pipe.device))


def _calibration(
    profile: Profile,
    pipe: ControlNetPipeline,
    config: SearchConfig,
    plan: ConstraintPlan,
    clip: ClipScorer | None,
) -> tuple[list[GenerationJob], GenerationSettings, ConstraintScorer]:
    """The calibration jobs (the profile's samples), their settings and a scorer against the profile's
    references; with ``config.check_reference``, the first one regenerated to check the pipeline reproduces
    its reference."""
    count = profile.num_samples
    if config.calibration_samples is not None:
        count = min(config.calibration_samples, count)
    calibration = profile_jobs(profile, range(count))
    settings = profile_settings(profile)
    if config.samples_per_call is not None:
        settings = replace(settings, samples_per_call=config.samples_per_call)
    references = [_reference(profile, i) for i in range(len(calibration))]
    conditions = list(profile.condition_images[: len(calibration)])
    prompts = [job.prompt for job in calibration]
    scorer = plan.scorer(_condition_type(profile), references, conditions, prompts, clip)
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
    return calibration, settings, scorer
