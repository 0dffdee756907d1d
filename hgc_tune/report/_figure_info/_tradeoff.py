"""The search's trade-off: MAC reduction against fidelity loss of every trial, and which points to show.

All coordinates are in percent: ``x`` the MAC reduction, ``y`` the loss. Losses far above the budget would
squash the interesting region, so the y axis stops at about four budgets (or the largest feasible loss) and
a loss beyond it is drawn on the top edge (``y == top``).
"""

from __future__ import annotations

import textwrap
from typing import NamedTuple

from hgc_tune.errors import ReportError
from hgc_tune.search._pareto import ParetoData, ParetoPoint

# Notes wrap at this many characters.
_NOTE_WIDTH = 70
# The title wraps at this many characters: at 12 pt, well inside the figure's 10 inches from the axes' left.
_TITLE_WIDTH = 80


class _TradeoffGroup(NamedTuple):
    """The searched or rejected trials of one kind.

    Attributes:
        kind: ``feasible`` (within budget), ``over_budget`` or ``rejected`` (stopped early, partial loss).
        inside: ``(x, y)`` of the trials whose loss is on the axis.
        clipped: ``(x, top)`` of the trials whose loss is beyond it.
    """

    kind: str
    inside: list[tuple[float, float]]
    clipped: list[tuple[float, float]]

    @property
    def size(self) -> int:
        """How many trials the group holds."""
        return len(self.inside) + len(self.clipped)


class _PeerMark(NamedTuple):
    """A peer schedule's trial.

    Attributes:
        name: Its peer name (aliases joined with ``/``).
        family: The family of its first name (``deepcache``, ``tgate``, ``cnwin``), for its colour.
        x: Its MAC reduction.
        y: Its loss, or the top of the axis when beyond it.
        loss: Its loss, as a fraction.
        clipped: Whether the loss is beyond the axis.
    """

    name: str
    family: str
    x: float
    y: float
    loss: float
    clipped: bool


class _ChosenMark(NamedTuple):
    """The trial whose policy the search wrote: its number, ``x``, ``y`` and loss (a fraction)."""

    number: int
    x: float
    y: float
    loss: float


class _TradeoffInfo(NamedTuple):
    """What the trade-off figure draws.

    Attributes:
        groups: The searched trials within budget, over budget, and rejected early: only non-empty groups.
        front: ``(x, y)`` of the Pareto front, by reduction then loss.
        anchor: ``(x, y)`` of the full-compute trial (``(0, 0)`` when the search has none).
        peers: The peer schedules' trials (the full-compute anchor apart).
        heldout: ``(x, y calibration, y held out)`` of every validated trial.
        chosen: The chosen trial, if the search chose one with a loss and a reduction.
        budget: The loss budget.
        top: The top of the loss axis (before its margin).
        ylim: The loss axis' range.
        xlim: The reduction axis' range.
        convention: The MAC convention of the reductions.
        metric: The search metric, if known.
        study: The Optuna study name, if known.
        notes: What the figure leaves out or clips, one phrase each.
    """

    groups: list[_TradeoffGroup]
    front: list[tuple[float, float]]
    anchor: tuple[float, float]
    peers: list[_PeerMark]
    heldout: list[tuple[float, float, float]]
    chosen: _ChosenMark | None
    budget: float
    top: float
    ylim: tuple[float, float]
    xlim: tuple[float, float]
    convention: str
    metric: str | None
    study: str | None
    notes: list[str]

    @property
    def title(self) -> str:
        """What the figure shows and of which study, wrapped at 80 characters (a long study name must not
        run off the figure)."""
        study = f" — study {self.study}" if self.study else ""
        return "\n".join(textwrap.wrap(f"Cost vs fidelity of every schedule tried{study}", _TITLE_WIDTH))

    @property
    def note_text(self) -> str:
        """The notes as one wrapped paragraph (``""``: none)."""
        return "\n".join(textwrap.wrap("; ".join(self.notes), _NOTE_WIDTH))


def _get_tradeoff_info(pareto: ParetoData, *, convention: str = "paper") -> _TradeoffInfo:
    """Which trials the trade-off figure shows, where, and what it says about the rest.

    A trial without a reduction in ``convention`` is not drawn; a failed trial (no loss) is counted in a
    note, a repeated policy is drawn once (at its first trial); the full-compute trial is the anchor, peer
    schedules are marked by name, searched trials are grouped by whether they met the budget.
    """

    def x(p: ParetoPoint) -> float:
        return 100 * (p.reduction(convention) or 0.0)

    with_reduction = [p for p in pareto.points if p.reduction(convention) is not None]
    scored = [p for p in with_reduction if p.scored and p.duplicate_of is None]
    rejected = [
        p for p in with_reduction if p.rejected_early and p.loss is not None and p.duplicate_of is None
    ]
    anchor = next((p for p in scored if p.is_full_compute), None)
    peers = [p for p in scored if p.peers and p is not anchor]
    searched = [p for p in scored if not p.peers]
    front = sorted((p for p in scored if p.on_front), key=lambda p: (x(p), _loss(p)))
    heldout = [(p, p.heldout_loss) for p in with_reduction if p.heldout_loss is not None]
    budget = pareto.budget * 100

    losses = [_loss(p) * 100 for p in scored + rejected] + [h * 100 for _, h in heldout]
    feasible = [_loss(p) * 100 for p in scored if p.feasible] + [h * 100 for _, h in heldout]
    top = max([budget * 4, *(v * 1.15 for v in feasible), 0.5])
    if losses and max(losses) <= top:
        top = max(max(losses) * 1.1, budget * 1.5, 0.5)
    bottom = min([0.0, *(v * 1.1 for v in losses)])

    def y(value: float) -> float:
        return min(value * 100, top)

    def group(kind: str, members: list[ParetoPoint]) -> _TradeoffGroup:
        inside = [(x(p), y(_loss(p))) for p in members if _loss(p) * 100 <= top]
        clipped = [(x(p), y(_loss(p))) for p in members if _loss(p) * 100 > top]
        return _TradeoffGroup(kind, inside, clipped)

    groups = [
        group("feasible", [p for p in searched if p.feasible]),
        group("over_budget", [p for p in searched if not p.feasible]),
        group("rejected", rejected),
    ]
    chosen = pareto.chosen
    mark = None
    if chosen is not None and chosen.loss is not None and chosen.reduction(convention) is not None:
        mark = _ChosenMark(chosen.number, x(chosen), y(chosen.loss), chosen.loss)
    xs = [x(p) for p in with_reduction] + [0.0]
    return _TradeoffInfo(
        groups=[g for g in groups if g.size],
        front=[(x(p), y(_loss(p))) for p in front],
        anchor=(x(anchor), y(_loss(anchor))) if anchor else (0.0, 0.0),
        peers=[_peer_mark(p, x(p), y(_loss(p)), top) for p in peers],
        heldout=[(x(p), y(_loss(p)), y(h)) for p, h in heldout],
        chosen=mark,
        budget=budget,
        top=top,
        ylim=(bottom - 0.03 * (top - bottom), top * 1.02 + 0.01),
        xlim=(min(xs) - 3, max(max(xs) + 5, 10)),
        convention=convention,
        metric=pareto.metric,
        study=pareto.study,
        notes=_notes(pareto, clipped=any(_loss(p) * 100 > top for p in searched + rejected)),
    )


def _loss(p: ParetoPoint) -> float:
    """The calibration loss of a trial drawn at its loss (scored, rejected early, or validated)."""
    if p.loss is None:
        raise ReportError(
            f"trial {p.number} of the Pareto file has no calibration loss, but is drawn at one."
        )
    return p.loss


def _peer_mark(p: ParetoPoint, x: float, y: float, top: float) -> _PeerMark:
    loss = _loss(p)
    return _PeerMark("/".join(p.peers), p.peers[0].split("-", 1)[0], x, y, loss, loss * 100 > top)


def _notes(pareto: ParetoData, *, clipped: bool) -> list[str]:
    failed = sum(1 for p in pareto.points if p.loss is None and p.state != "RUNNING")
    duplicates = sum(1 for p in pareto.points if p.duplicate_of is not None)
    notes = []
    if failed:
        notes.append(f"{failed} failed trials not shown")
    if duplicates:
        notes.append(f"{duplicates} repeated policies shown once")
    if clipped:
        notes.append("▲ on the top edge = loss beyond the axis")
    if pareto.chosen is None:
        notes.append("no policy chosen" + (f": {pareto.message}" if pareto.message else ""))
    return notes
