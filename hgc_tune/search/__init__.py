"""Policy search: one Optuna study per profiled pipeline that minimises MACs under a fidelity budget.

- :class:`SearchConfig` and :func:`search_policy` (the core: returns a :class:`SearchResult`),
  :func:`write_search_outputs` (policy JSON + ``<name>.pareto.json``). The same search in phases, for
  several processes on one shared storage: :func:`load_search_profile`, :func:`prepare_search` (a
  :class:`SearchSession`), :func:`run_search`, and :func:`run_search_worker` in the other processes.
- :class:`PolicySpace`: parameters named after policy fields (``blocks.interval``, ``controlnet.mode``, …),
  with a schedule per group (U-Net deep blocks, ControlNet deep blocks, cross-attention; uniform, threshold
  or two-phase dense-early/sparse-late) and DeepCache, T-GATE and ControlNet-window peers as points
  (:meth:`PolicySpace.peer_params`); :class:`PolicyObjective`: the callable Optuna objective.
- :class:`ParetoData` / :func:`load_pareto`: the ``<name>.pareto.json`` file the search writes beside the
  policy (every trial, the front, the peers, the chosen trial).

A search is a pipeline: ``_session`` (inputs, study) -> ``_objective`` (one trial, scored by
:class:`hgc_tune.fidelity.FidelityScorer` on outputs from :mod:`hgc_tune.generation`) -> ``_selection``
(validation, test) -> ``_result`` (:class:`SearchResult` and its files); ``_search`` runs the stages.
Evaluating a policy on a dataset outside a search is :func:`hgc_tune.fidelity.evaluate_policy`.
"""

from __future__ import annotations

from hgc_tune.search._config import SearchConfig
from hgc_tune.search._objective import PolicyObjective
from hgc_tune.search._pareto import ParetoData, load_pareto
from hgc_tune.search._result import SearchResult, write_search_outputs
from hgc_tune.search._search import run_search, run_search_worker, search_policy
from hgc_tune.search._session import SearchSession, load_search_profile, prepare_search
from hgc_tune.search._space import PolicySpace

__all__ = [
    "ParetoData",
    "PolicyObjective",
    "PolicySpace",
    "SearchConfig",
    "SearchResult",
    "SearchSession",
    "load_pareto",
    "load_search_profile",
    "prepare_search",
    "run_search",
    "run_search_worker",
    "search_policy",
    "write_search_outputs",
]
