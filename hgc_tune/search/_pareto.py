"""The Pareto file ``<policy>.pareto.json``: every trial of a search with its MACs, loss and verdict, the
front, the peers and the chosen trial. This module owns the format: its name and versions, the layout below,
and :func:`load_pareto`, which reads it back as :class:`ParetoData` (the report's trade-off figure and
summary). A search writes it from its result (:func:`hgc_tune.search._result.write_pareto`, ``hgc-tune
search``), which imports the format from here; nothing here imports the search.

The layout (the fields a reader relies on; the writer adds the study's details, which a reader keeps in
:attr:`ParetoData.raw`)::

    {"format": "hgc-tune-pareto", "schema_version": 2,
     "study": str, "model": str, "condition_type": str | null, "metric": str, "budget": float,
     "confidence": float, "num_steps": int, "front": [trial numbers], "chosen": trial number | null,
     "peers": {peer name: trial number}, "validated": bool, "message": str | null,
     "constraints": {"confidence": c, "k": k, "level": 1 - (1 - c)/k, "sharing": "bonferroni",
                     "prompt": str | null, "items": [{"metric", "kind", "loss_mode", "budget"}, …]},
     "trials": [{"number": int, "state": "COMPLETE" | "FAIL" | …,
                 "macs": {"paper": {"full", "policy", "reduction"}, "complete": {…}},
                 "loss": float | null, "loss_upper": float | null, "feasible": bool,
                 "rejected_early": bool, "duplicate_of": int | null, "peers": [names],
                 "constraints": [{"metric", "budget", "loss", "loss_upper", "loss_lower", "level", "full",
                                  "policy", "holds"}, …],
                 "picture": {"ssim": float, "psnr": float},
                 "policy_name": str | null, "heldout": {"loss": float, "holds": bool, …} | null}, …]}

A trial's MAC reduction is ``1 - policy/full`` per convention; its loss is the calibration fidelity loss of
the task metric (``metric``, ``budget``; partial when ``rejected_early``), ``constraints`` holds every
constraint's (the task metric first, then the guards), and ``feasible`` means every constraint's upper bound
is within its budget. ``picture`` is the mean SSIM and PSNR of the trial's pictures to the full-compute
ones. Version 1 (one constraint, no ``constraints`` or ``picture``) is read too. Peer schedules
(DeepCache, T-GATE, ControlNet window, full compute) are trials with peer names; the full-compute anchor is
the peer named ``full-compute``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeGuard

from hgc_tune._json import load_json_file
from hgc_tune.errors import HgcTuneError, SearchError
from hgc_tune.search._space import FULL_COMPUTE

__all__ = [
    "PARETO_FORMAT",
    "SCHEMA_VERSION",
    "ParetoData",
    "ParetoPoint",
    "load_pareto",
    "pareto_data_from_json",
]

PARETO_FORMAT = "hgc-tune-pareto"
# The version this module writes, and the versions it reads.
SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)


@dataclass(frozen=True)
class ParetoPoint:
    """One search trial.

    Attributes:
        number: The Optuna trial number.
        state: ``COMPLETE``, ``FAIL``, ``PRUNED``, ….
        reductions: MAC reduction ``1 - policy/full`` per convention (``paper``, ``complete``).
        loss: Calibration fidelity loss; ``None`` for a trial without a result (failed).
        loss_upper: Its one-sided upper confidence bound (``None``: not recorded or unbounded).
        feasible: Whether the loss (its upper bound, when the search used one) met the budget.
        rejected_early: The evaluation stopped early, the loss is partial.
        duplicate_of: The earlier trial with the same policy whose result this one reuses.
        peers: The peer schedule names this trial was enqueued as (aliases), empty for a searched trial.
        on_front: On the Pareto front (MAC reduction up, loss down).
        chosen: The trial whose policy the search wrote.
        heldout_loss: The loss on the validation split, when the trial was validated.
        heldout_loss_upper: Its upper confidence bound there.
        name: The trial's policy name.
        constraints: Every constraint's calibration figures (empty in a version-1 file).
        picture: Mean SSIM and PSNR of the trial's pictures to the full-compute ones (empty: not measured).
    """

    number: int
    state: str
    reductions: Mapping[str, float]
    loss: float | None
    feasible: bool
    loss_upper: float | None = None
    rejected_early: bool = False
    duplicate_of: int | None = None
    peers: tuple[str, ...] = ()
    on_front: bool = False
    chosen: bool = False
    heldout_loss: float | None = None
    heldout_loss_upper: float | None = None
    name: str | None = None
    constraints: tuple[Mapping[str, Any], ...] = ()
    picture: Mapping[str, float] = field(default_factory=dict)

    def reduction(self, convention: str = "paper") -> float | None:
        """The MAC reduction in ``convention`` (``None`` if the trial recorded none)."""
        return self.reductions.get(convention)

    @property
    def scored(self) -> bool:
        """A completed trial with a full calibration loss and a reduction: a point of the trade-off."""
        return self.state == "COMPLETE" and self.loss is not None and not self.rejected_early

    @property
    def is_full_compute(self) -> bool:
        """The full-compute anchor trial (the peer named ``full-compute``), drawn as the reference point."""
        return FULL_COMPUTE in self.peers

    @property
    def peer(self) -> str | None:
        """The peer name to show (aliases joined with ``/``), ``None`` for a searched trial."""
        return "/".join(self.peers) if self.peers else None


@dataclass(frozen=True)
class ParetoData:
    """The content of a Pareto file (see the module docstring).

    Attributes:
        budget: The fidelity-loss budget of the search.
        points: Every trial, in file order.
        confidence: The confidence level of the loss bounds (``0``: point estimates, or an older file).
        metric: The search metric.
        study: The Optuna study name.
        model: The profiled model.
        condition_type: The condition type.
        num_steps: Denoising steps.
        validated: Whether a held-out split was used.
        message: Why the search has no policy, when it has none.
        constraints: The search's constraints and how they share the confidence (``None``: a version-1
            file, whose only constraint is ``metric`` at ``budget``).
        source: The file read, if any.
        raw: The parsed file.
    """

    budget: float
    points: tuple[ParetoPoint, ...]
    metric: str | None = None
    study: str | None = None
    model: str | None = None
    condition_type: str | None = None
    num_steps: int | None = None
    validated: bool = False
    message: str | None = None
    confidence: float = 0.0
    source: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    constraints: Mapping[str, Any] | None = None

    @property
    def chosen(self) -> ParetoPoint | None:
        """The trial whose policy the search wrote, if any."""
        return next((p for p in self.points if p.chosen), None)

    @property
    def front(self) -> list[ParetoPoint]:
        """The trials on the Pareto front."""
        return [p for p in self.points if p.on_front]

    @property
    def peers(self) -> list[ParetoPoint]:
        """The peer trials (without the full-compute anchor)."""
        return [p for p in self.points if p.peers and not p.is_full_compute]


def _is_number(value: Any) -> TypeGuard[int | float]:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


class _Checker:
    """Raises ``error`` with a message when a condition fails."""

    def __init__(self, error: type[HgcTuneError]) -> None:
        self.error = error

    def __call__(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)

    def fail(self, message: str) -> NoReturn:
        raise self.error(message)


def _point(entry: Any, where: str, front: set[int], chosen: int | None, _check: _Checker) -> ParetoPoint:
    _check(isinstance(entry, Mapping), f"{where} must be a JSON object, but got {type(entry).__name__}.")
    number = entry.get("number")
    _check(
        isinstance(number, int) and not isinstance(number, bool),
        f"{where}.number must be an integer, but got number={number!r}.",
    )
    state = entry.get("state")
    _check(isinstance(state, str), f"{where}.state must be a string, but got state={state!r}.")
    macs = entry.get("macs", {})
    _check(isinstance(macs, Mapping), f"{where}.macs must be an object, but got macs={macs!r}.")
    reductions = {}
    for convention, values in macs.items():
        value = values.get("reduction") if isinstance(values, Mapping) else None
        if not _is_number(value):
            _check.fail(f"{where}.macs.{convention}.reduction must be a finite number, but got {value!r}.")
        reductions[convention] = float(value)
    loss = entry.get("loss")
    _check(
        loss is None or _is_number(loss), f"{where}.loss must be a finite number or null, but got {loss!r}."
    )
    peers = entry.get("peers") or ([entry["peer"]] if entry.get("peer") else [])
    _check(
        isinstance(peers, list) and all(isinstance(p, str) for p in peers),
        f"{where}.peers must be a list of names, but got peers={peers!r}.",
    )
    heldout = entry.get("heldout")
    heldout_loss = heldout.get("loss") if isinstance(heldout, Mapping) else None
    heldout_upper = heldout.get("loss_upper") if isinstance(heldout, Mapping) else None
    upper = entry.get("loss_upper")
    duplicate = entry.get("duplicate_of")
    constraints = entry.get("constraints") or []
    _check(
        isinstance(constraints, list),
        f"{where}.constraints must be a list of objects, but got constraints={constraints!r}.",
    )
    picture = entry.get("picture") or {}
    _check(isinstance(picture, Mapping), f"{where}.picture must be an object, but got picture={picture!r}.")
    return ParetoPoint(
        number=number,
        state=state,
        reductions=reductions,
        loss=None if loss is None else float(loss),
        feasible=bool(entry.get("feasible", False)),
        loss_upper=float(upper) if _is_number(upper) else None,
        rejected_early=bool(entry.get("rejected_early", False)),
        duplicate_of=duplicate if isinstance(duplicate, int) and not isinstance(duplicate, bool) else None,
        peers=tuple(peers),
        on_front=number in front,
        chosen=chosen is not None and number == chosen,
        heldout_loss=float(heldout_loss) if _is_number(heldout_loss) else None,
        heldout_loss_upper=float(heldout_upper) if _is_number(heldout_upper) else None,
        name=entry.get("policy_name") if isinstance(entry.get("policy_name"), str) else None,
        constraints=tuple(c for c in constraints if isinstance(c, Mapping)),
        picture={k: float(v) for k, v in picture.items() if _is_number(v)},
    )


def _optional_str(data: Mapping[str, Any], name: str, where: str, _check: _Checker) -> str | None:
    value = data.get(name)
    _check(
        value is None or isinstance(value, str),
        f"{where}: `{name}` must be a string or null, but got {name}={value!r}.",
    )
    return value


def pareto_data_from_json(
    data: Any, *, source: str | None = None, error: type[HgcTuneError] = SearchError
) -> ParetoData:
    """Validate a parsed Pareto file (see the module docstring).

    Args:
        data: The parsed JSON.
        source: Where it was read from (named in messages).
        error: The exception class to raise (the report raises its own).

    Raises:
        SearchError: (or ``error``) If it is not a ``hgc-tune-pareto`` file of a supported schema version, or
            a field a reader needs is missing or has the wrong type.
    """
    _check = _Checker(error)
    where = source or "pareto"
    _check(isinstance(data, Mapping), f"{where} must hold a JSON object, but holds a {type(data).__name__}.")
    _check(
        data.get("format") == PARETO_FORMAT,
        f"{where}: `format` must be {PARETO_FORMAT!r}, but got format={data.get('format')!r}; pass the "
        "`.pareto.json` file that `hgc-tune search` writes beside the policy.",
    )
    version = data.get("schema_version")
    _check(
        version in SCHEMA_VERSIONS,
        f"{where}: `schema_version` must be one of {list(SCHEMA_VERSIONS)}, but got "
        f"schema_version={version!r}.",
    )
    budget = data.get("budget")
    _check(_is_number(budget), f"{where}: `budget` must be a finite number, but got budget={budget!r}.")
    trials = data.get("trials")
    _check(isinstance(trials, list), f"{where}: `trials` must be a list, but got {type(trials).__name__}.")
    front = data.get("front", [])
    _check(
        isinstance(front, list) and all(isinstance(n, int) for n in front),
        f"{where}: `front` must be a list of trial numbers, but got front={front!r}.",
    )
    chosen = data.get("chosen")
    _check(
        chosen is None or (isinstance(chosen, int) and not isinstance(chosen, bool)),
        f"{where}: `chosen` must be a trial number or null, but got chosen={chosen!r}.",
    )
    points = tuple(
        _point(t, f"{where}: trials[{i}]", set(front), chosen, _check) for i, t in enumerate(trials)
    )
    numbers = {p.number for p in points}
    missing = sorted((set(front) | ({chosen} if chosen is not None else set())) - numbers)
    _check(not missing, f"{where}: `front`/`chosen` name trials {missing} that `trials` does not hold.")
    steps = data.get("num_steps")
    constraints = data.get("constraints")
    _check(
        constraints is None or isinstance(constraints, Mapping),
        f"{where}: `constraints` must be an object or null, but got constraints={constraints!r}.",
    )
    return ParetoData(
        budget=float(budget),
        points=points,
        metric=_optional_str(data, "metric", where, _check),
        study=_optional_str(data, "study", where, _check),
        model=_optional_str(data, "model", where, _check),
        condition_type=_optional_str(data, "condition_type", where, _check),
        num_steps=steps if isinstance(steps, int) and not isinstance(steps, bool) else None,
        validated=bool(data.get("validated", False)),
        message=_optional_str(data, "message", where, _check),
        confidence=float(data["confidence"]) if _is_number(data.get("confidence")) else 0.0,
        source=source,
        raw=dict(data),
        constraints=None if constraints is None else dict(constraints),
    )


def load_pareto(path: str | os.PathLike[str], *, error: type[HgcTuneError] = SearchError) -> ParetoData:
    """Read a ``<policy>.pareto.json`` file (written by ``hgc-tune search``).

    Raises:
        SearchError: (or ``error``) If the file is missing, not JSON, or violates the layout.
    """
    file = Path(path)
    data = load_json_file(
        file,
        what="the Pareto file",
        error=error,
        missing=lambda f: error(f"cannot read the Pareto file {str(f)!r}: it does not exist."),
    )
    return pareto_data_from_json(data, source=str(file), error=error)
