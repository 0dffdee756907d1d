"""``search_policy``: a search as a pipeline of stages, each in its own module.

1. :func:`~hgc_tune.search._session.prepare_search` (``_session``): check the inputs, build the space, the
   calibration scorer and the objective, open the study.
2. :func:`_run_trials` (here): Optuna runs :class:`~hgc_tune.search.PolicyObjective` (``_objective``) until
   the study holds ``n_trials``.
3. :func:`~hgc_tune.search._selection.select_policy` (``_selection``): validation and test splits.
4. :func:`~hgc_tune.search._result.search_result` (``_result``): the :class:`SearchResult`, written with
   :func:`~hgc_tune.search._result.write_search_outputs`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from hgc_tune._progress import TRIALS, ProgressCallback
from hgc_tune.search._config import SearchConfig
from hgc_tune.search._objective import SurplusTrial
from hgc_tune.search._result import SearchResult, search_result
from hgc_tune.search._selection import select_policy
from hgc_tune.search._session import SearchSession, prepare_search
from hgc_tune.search._trials import close_leftover_waiting, counted_trials, finished_count, trial_records

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.fidelity import PromptMetric
    from hgc_tune.profile import Profile

__all__ = ["run_search", "run_search_worker", "search_policy"]

# How often a worker whose share is done looks at the other workers' running trials.
_POLL_SECONDS = 1.0


def _best_feasible_value(trials: Sequence[FrozenTrial]) -> float | None:
    values = [
        t.value
        for t in trials
        if t.state.name == "COMPLETE" and t.user_attrs.get("feasible") and t.value is not None
    ]
    return min(values) if values else None


def _run_trials(session: SearchSession, on_trial: Callable[[list[FrozenTrial]], None] | None = None) -> int:
    """Run trials until the study counts ``n_trials`` (all workers), the timeout passes, or it is stopped.

    When the study is full but other workers' trials still run, wait for them: a trial whose worker died
    goes stale after the grace period, is failed, enqueued again and run here, so it is neither lost nor
    blocks the study. Returns the number of trials this process ran.
    """
    # optuna here, not at the top: the search command's argument checks import hgc_tune.search (its
    # SearchConfig) and must stay fast.
    import optuna
    from optuna.trial import TrialState

    config, study = session.config, session.study
    start = time.monotonic()
    ran = 0

    def remaining() -> float | None:
        return None if config.timeout is None else config.timeout - (time.monotonic() - start)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
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
    close_leftover_waiting(study, config.n_trials)
    return ran


def run_search_worker(
    profile: str | os.PathLike[str] | Profile,
    pipe: ControlNetPipeline,
    config: SearchConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    prompt_metric: PromptMetric | None = None,
) -> int:
    """Run trials of the shared study only (no validation, no output): one of several worker processes.

    Returns:
        The number of trials this worker ran.
    """
    session = prepare_search(profile, pipe, config, cache_dir=cache_dir, prompt_metric=prompt_metric)
    return _run_trials(session)


def search_policy(
    profile: str | os.PathLike[str] | Profile,
    pipe: ControlNetPipeline,
    config: SearchConfig,
    *,
    heldout: Sequence[Any] | None = None,
    test: Sequence[Any] | None = None,
    progress: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    prompt_metric: PromptMetric | None = None,
    on_progress: ProgressCallback | None = None,
) -> SearchResult:
    """Search the cheapest caching policy whose fidelity loss stays within the budget, with confidence.

    One Optuna study per profile (model × condition type × metric × budget) minimises the policy's MACs
    (``paper`` convention, analytic from the profile's MAC table) subject to: the one-sided upper confidence
    bound (``config.confidence``, paired over samples) of the fidelity loss is within the budget. Three
    disjoint splits take part:

    - **calibration** (the profile's samples, whose full-compute outputs it holds): the trials. Each trial
      is tested sequentially, one sample at a time, and stops once its verdict is clear; a trial that
      cannot beat the cheapest one already within the budget is only screened.
    - **validation** (``heldout``): the plausible trials (not clear failures) are tested, those
      within every budget by their point estimates first, each group cheapest first,
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
        prompt_metric: The model's prompt metric (:func:`hgc_tune.fidelity.prompt_metric_for`), recorded in
            the policy's provenance; ``None``: none recorded.
        on_progress: Called as ``on_progress(stage, done, total)`` as the trials (``"trial"``), the
            validation (``"validation"``) and the test (``"test"``) advance (see :mod:`hgc_tune._progress`),
            e.g. for a status line.

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
    session = prepare_search(profile, pipe, config, cache_dir=cache_dir, prompt_metric=prompt_metric)
    return run_search(session, heldout=heldout, test=test, progress=progress, on_progress=on_progress)


def run_search(
    session: SearchSession,
    *,
    heldout: Sequence[Any] | None = None,
    test: Sequence[Any] | None = None,
    progress: bool = False,
    on_progress: ProgressCallback | None = None,
) -> SearchResult:
    """Run the trials of a prepared search, validate on ``heldout``, test on ``test``, collect the result.

    :func:`search_policy` is :func:`prepare_search` followed by this; call them separately to start other
    workers between the two (the study exists and holds the peers once :func:`prepare_search` returns).
    ``progress`` and ``on_progress`` are as in :func:`search_policy`.
    """
    config = session.config
    bar = tqdm(
        total=config.n_trials,
        initial=min(config.n_trials, finished_count(session.study.get_trials(deepcopy=False))),
        unit="trial",
        desc="search",
        disable=not progress,
    )
    if on_progress is not None:
        on_progress(TRIALS, bar.n, config.n_trials)

    def on_trial(trials: Sequence[FrozenTrial]) -> None:
        bar.n = min(config.n_trials, finished_count(trials))
        if on_progress is not None:
            on_progress(TRIALS, bar.n, config.n_trials)
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

    trials = session.study.get_trials(deepcopy=False)
    records = trial_records(trials)
    selection = select_policy(session, records, heldout, test, note, on_progress=on_progress)
    return search_result(session, trials, records, selection)
