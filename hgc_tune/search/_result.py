"""What a search found (:class:`SearchResult`), built from the session, its trials and the selection, and
written as the policy file and the Pareto file ``<policy>.pareto.json`` (whose layout and reader
:mod:`hgc_tune.search._pareto` owns)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hgc_tune
from hgc_tune._atomic import atomic_write_files, atomic_write_text
from hgc_tune.errors import SearchError
from hgc_tune.fidelity._scorer import ConstrainedEstimate
from hgc_tune.policy import Provenance, full_compute_policy, pipeline_loras
from hgc_tune.policy._io import dumps_policy, pareto_path, policy_to_json
from hgc_tune.policy._macs import macs_provenance
from hgc_tune.search._pareto import PARETO_FORMAT, SCHEMA_VERSION
from hgc_tune.search._selection import Selection
from hgc_tune.search._session import SearchSession
from hgc_tune.search._storage import redact_storage
from hgc_tune.search._trials import TrialRecord

if TYPE_CHECKING:
    import optuna

    from hgc_tune.policy import Policy

__all__ = [
    "SearchResult",
    "pareto_front",
    "pareto_to_json",
    "search_result",
    "write_pareto",
    "write_search_outputs",
]

_OBJECTIVE = (
    "macs.paper.policy (minimise); constraints: each metric's upper confidence bound of its loss <= its "
    "budget (Bonferroni: each bound at 1 - (1 - confidence)/k)"
)


def pareto_front(records: Sequence[TrialRecord]) -> list[int]:
    """Numbers of the trials on the Pareto front of MAC reduction (higher) vs fidelity loss (lower).

    Only completed trials take part, not clear failures (their loss is partial); of several
    trials with the same policy, the first stands for all.
    """
    # (reduction, loss, record) of each point (`complete` means the loss is there).
    points: list[tuple[float, float, TrialRecord]] = []
    for r in records:
        reduction, loss = r.reduction, r.loss
        if not r.complete or r.rejected_early or r.duplicate_of is not None:
            continue
        if reduction is not None and loss is not None:
            points.append((reduction, loss, r))
    seen: set[str | None] = set()
    unique = []
    for point in points:
        if point[2].policy_key in seen:
            continue
        seen.add(point[2].policy_key)
        unique.append(point)
    front = [
        (reduction, r.number)
        for reduction, loss, r in unique
        if not any(
            o_reduction >= reduction and o_loss <= loss and (o_reduction > reduction or o_loss < loss)
            for o_reduction, o_loss, _ in unique
        )
    ]
    return [number for _, number in sorted(front)]


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
        constraints: The constraints and how they share the confidence
            (:meth:`~hgc_tune.search._constraints.ConstraintPlan.to_json`: ``confidence``, ``k``, ``level``,
            ``prompt`` (``None``: the prompt is unguarded), ``items`` with each ``metric`` and ``budget``).
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
    policy: Policy | None
    message: str | None = None
    confidence: float = 0.0
    test: Mapping[str, Any] | None = None
    constraints: Mapping[str, Any] | None = None

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
        """The Pareto file's content (:func:`pareto_to_json`)."""
        return pareto_to_json(self)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (for ``--json``): the Pareto report plus the chosen policy."""
        data = self.pareto_json()
        data["policy"] = None if self.policy is None else policy_to_json(self.policy)
        return data


def search_result(
    session: SearchSession,
    trials: Sequence[optuna.trial.FrozenTrial],
    records: Sequence[TrialRecord],
    selection: Selection,
) -> SearchResult:
    """The result of a search: its trials (``trials``: the study's; ``records``: theirs that count), peers,
    front and the selected policy with its provenance."""
    config = session.config
    chosen = selection.chosen
    policy = (
        None
        if chosen is None
        else _final_policy(
            session,
            chosen,
            selection.validation_estimate,
            selection.test_estimate,
            {"validation": _row_of(selection.validation, chosen.number), "test": selection.test},
        )
    )
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
        peers=_peer_trials(trials, records),
        front=tuple(pareto_front(records)),
        best=selection.best,
        validation=selection.validation,
        validated=selection.validated,
        chosen=chosen,
        policy=policy,
        message=selection.message,
        confidence=config.confidence,
        test=selection.test,
        constraints=None if session.constraints is None else session.constraints.to_json(),
    )


def _row_of(rows: Sequence[Mapping[str, Any]], number: int) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["trial"] == number), None)


def _peer_trials(
    trials: Sequence[optuna.trial.FrozenTrial], records: Sequence[TrialRecord]
) -> dict[str, int]:
    """Peer name -> the number of the trial that stands for it."""
    by_number = {r.number: r for r in records}
    peers: dict[str, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.number not in by_number:
            continue
        # A retried peer appears twice (the stale trial and its retry): the completed one stands for it.
        for name in [t.user_attrs.get("peer"), *t.user_attrs.get("peer_aliases", [])]:
            if name and (name not in peers or by_number[peers[name]].state != "COMPLETE"):
                peers[name] = t.number
    return peers


def _split_fidelity(split: str, estimate: ConstrainedEstimate) -> dict[str, float]:
    task = estimate.primary
    out = {
        f"{split}_full": float(task.full),
        f"{split}_policy": float(task.policy),
        f"{split}_loss": float(task.loss),
        f"{split}_samples": int(task.samples),
    }
    if math.isfinite(task.loss_upper):
        out[f"{split}_loss_upper"] = float(task.loss_upper)
    return out


def _constraint_figures(rows: Sequence[Mapping[str, Any]], split: str) -> list[dict[str, float]]:
    """Per constraint: ``<split>_full``, ``_policy``, ``_loss``, ``_loss_upper`` (when bounded)."""
    out = []
    for row in rows:
        figures = {f"{split}_{k}": float(row[k]) for k in ("full", "policy", "loss")}
        if row.get("loss_upper") is not None:
            figures[f"{split}_loss_upper"] = float(row["loss_upper"])
        out.append(figures)
    return out


def _constraints_provenance(
    session: SearchSession,
    record: TrialRecord,
    splits: Mapping[str, Mapping[str, Any] | None],
) -> tuple[dict[str, Any], dict[str, float]]:
    """The policy's ``constraints`` (the plan, each constraint's budget and figures per split) and
    ``picture_fidelity`` (SSIM and PSNR to the full-compute pictures per split) provenance."""
    plan = session.constraints
    if plan is None:
        raise SearchError("the search session has no constraints; build it with prepare_search.")
    constraints = plan.to_json()
    items = [dict(item) for item in constraints["items"]]
    picture: dict[str, float] = {}
    rows_of = {
        "calibration": record.constraints,
        **{k: (v or {}).get("constraints") for k, v in splits.items()},
    }
    pictures_of = {"calibration": record.picture, **{k: (v or {}).get("picture") for k, v in splits.items()}}
    for split, rows in rows_of.items():
        if rows:
            for item, figures in zip(items, _constraint_figures(rows, split)):
                item.update(figures)
        for name, value in (pictures_of.get(split) or {}).items():
            picture[f"{split}_{name}"] = float(value)
    constraints["items"] = items
    return constraints, picture


def _final_policy(
    session: SearchSession,
    record: TrialRecord,
    validation: ConstrainedEstimate | None,
    test: ConstrainedEstimate | None,
    rows: Mapping[str, Mapping[str, Any] | None],
) -> Policy:
    # Here, not at the top: `hgc_tune.search` (its SearchConfig) must import without torch, for the search
    # command's argument checks.
    import diffusers

    policy = record.policy()
    full, with_policy, loss, samples = record.metric_full, record.metric_policy, record.loss, record.samples
    if policy is None or full is None or with_policy is None or loss is None or samples is None:
        raise SearchError(
            f"the chosen trial {record.number} must have a policy and its calibration fidelity, but got "
            f"policy={'none' if policy is None else policy.name!r}, metric_full={full!r}, "
            f"metric_policy={with_policy!r}, loss={loss!r}, samples={samples!r}."
        )
    fidelity = {
        "calibration_full": float(full),
        "calibration_policy": float(with_policy),
        "calibration_loss": float(loss),
        "calibration_samples": int(samples),
    }
    if record.loss_upper is not None:
        fidelity["calibration_loss_upper"] = float(record.loss_upper)
    if validation is not None:
        fidelity.update(_split_fidelity("validation", validation))
    if test is not None:
        fidelity.update(_split_fidelity("test", test))
    constraints, picture = _constraints_provenance(session, record, rows)
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
        samples_per_call=session.settings.samples_per_call,
        weights_digest=session.profile.weights_digest,
        guidance_scale=float(session.settings.guidance_scale),
        constraints=constraints,
        picture_fidelity=picture,
        prompt=None if session.prompt_metric is None else session.prompt_metric.to_json(),
    )
    model = session.profile.model_name or "model"
    name = f"{model}-{session.condition_type or 'any'}-hgc"
    return dataclasses.replace(policy, name=name, provenance=provenance)


def pareto_to_json(result: SearchResult) -> dict[str, Any]:
    """The Pareto file of a search: every trial with feasibility, front, peers and the chosen one marked."""
    front = set(result.front)
    peers_of: dict[int, list[str]] = {}
    for name, number in result.peers.items():
        peers_of.setdefault(number, []).append(name)
    heldout = {v["trial"]: v for v in result.validation}
    chosen = None if result.chosen is None else result.chosen.number
    trials = []
    for r in result.trials:
        d = r.to_json()
        d.update(
            on_front=r.number in front,
            chosen=r.number == chosen,
            peers=peers_of.get(r.number, []),
            heldout=heldout.get(r.number),
        )
        trials.append(d)
    return {
        "format": PARETO_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "study": result.study_name,
        "storage": result.storage,
        "model": result.model,
        "condition_type": result.condition_type,
        "metric": result.metric,
        "budget": result.budget,
        "confidence": result.confidence,
        "num_steps": result.num_steps,
        "objective": _OBJECTIVE,
        "macs_full": dict(result.macs_full),
        "trials": trials,
        "front": list(result.front),
        "peers": dict(result.peers),
        "chosen": chosen,
        "best_calibration": None if result.best is None else result.best.number,
        "validated": result.validated,
        "validation": [dict(v) for v in result.validation],
        "test": None if result.test is None else dict(result.test),
        "message": result.message,
        "constraints": None if result.constraints is None else dict(result.constraints),
    }


def write_pareto(result: SearchResult, path: str | os.PathLike[str]) -> Path:
    """Write the Pareto file of ``result`` to ``path`` atomically (sorted keys, trailing newline)."""
    file = Path(path)
    atomic_write_text(file, _pareto_text(result))
    return file


def write_search_outputs(result: SearchResult, out: str | os.PathLike[str]) -> dict[str, Path | None]:
    """Write the chosen policy to ``out`` (when there is one) and the Pareto JSON beside it (always).

    The two are written as one (:func:`hgc_tune._atomic.atomic_write_files`): on a failure (a full disk)
    neither file changes, so a new Pareto file never lies beside the old policy.

    Returns:
        ``{"policy": path or None, "pareto": path}``.
    """
    pareto = pareto_path(out)
    writes: dict[str | os.PathLike[str], Callable[[Path], object]] = {
        pareto: _text_writer(_pareto_text(result))
    }
    if result.policy is not None:
        writes[out] = _text_writer(dumps_policy(result.policy))
    atomic_write_files(writes)
    return {"policy": Path(out) if result.policy is not None else None, "pareto": pareto}


def _pareto_text(result: SearchResult) -> str:
    return json.dumps(pareto_to_json(result), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _text_writer(text: str) -> Callable[[Path], object]:
    data = text.encode("utf-8")
    return lambda path: path.write_bytes(data)
