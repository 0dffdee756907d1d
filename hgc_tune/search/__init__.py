"""Policy search: one Optuna study per profiled pipeline that minimises MACs under a fidelity budget.

- :class:`SearchConfig` and :func:`search_policy` (the core: returns a :class:`SearchResult`),
  :func:`write_search_outputs` (policy JSON + ``<name>.pareto.json``), :func:`run_search_worker` (one of
  several processes on a shared storage).
- :class:`PolicySpace`: parameters named after policy fields (``blocks.interval``, ``controlnet.mode``, …),
  with a schedule per group (U-Net deep blocks, ControlNet deep blocks, cross-attention; uniform, threshold
  or two-phase dense-early/sparse-late) and DeepCache, T-GATE and ControlNet-window peers as points
  (:meth:`PolicySpace.peer_params`).
- :class:`PolicyObjective`: the callable Optuna objective; :class:`FidelityScorer`: per-sample scoring with
  early rejection; :func:`evaluate_policy`: fidelity and MACs of a policy on a dataset.
"""

from __future__ import annotations

from hgc_tune.errors import SearchError
from hgc_tune.search._config import DEFAULT_CATCH, SearchConfig
from hgc_tune.search._fidelity import (
    FidelityEstimate,
    FidelityScorer,
    GeneratedOutput,
    GenerationJob,
    GenerationSettings,
    compare_policies,
    evaluate_policy,
    generate_output,
    iter_outputs,
    jobs_from_samples,
)
from hgc_tune.search._heldout import HELDOUT_DIR, heldout_key, heldout_references
from hgc_tune.search._objective import CONSTRAINT_NAME, PolicyObjective, SurplusTrial
from hgc_tune.search._search import (
    PARETO_FORMAT,
    SearchResult,
    SearchSession,
    load_search_profile,
    pareto_front,
    pareto_path,
    prepare_search,
    run_search,
    run_search_worker,
    search_policy,
    write_search_outputs,
)
from hgc_tune.search._space import (
    ATTENTION_SCHEDULES,
    BLOCK_SCHEDULES,
    FULL_COMPUTE,
    PolicySpace,
    default_peer_names,
    is_full_compute,
    phased_compute_steps,
    policy_key,
    threshold_compute_steps,
    windows_from_compute_steps,
)
from hgc_tune.search._storage import JOURNAL_PREFIX, default_storage_url, open_storage, redact_storage
from hgc_tune.search._trials import ATTR, TrialRecord, counted_trials, finished_count, trial_records

__all__ = [
    "ATTENTION_SCHEDULES",
    "ATTR",
    "BLOCK_SCHEDULES",
    "CONSTRAINT_NAME",
    "DEFAULT_CATCH",
    "FULL_COMPUTE",
    "HELDOUT_DIR",
    "JOURNAL_PREFIX",
    "PARETO_FORMAT",
    "FidelityEstimate",
    "FidelityScorer",
    "GeneratedOutput",
    "GenerationJob",
    "GenerationSettings",
    "PolicyObjective",
    "PolicySpace",
    "SearchConfig",
    "SearchError",
    "SearchResult",
    "SearchSession",
    "SurplusTrial",
    "TrialRecord",
    "compare_policies",
    "counted_trials",
    "default_peer_names",
    "default_storage_url",
    "evaluate_policy",
    "finished_count",
    "generate_output",
    "heldout_key",
    "heldout_references",
    "is_full_compute",
    "iter_outputs",
    "jobs_from_samples",
    "load_search_profile",
    "open_storage",
    "pareto_front",
    "pareto_path",
    "phased_compute_steps",
    "policy_key",
    "prepare_search",
    "redact_storage",
    "run_search",
    "run_search_worker",
    "search_policy",
    "threshold_compute_steps",
    "trial_records",
    "windows_from_compute_steps",
    "write_search_outputs",
]
