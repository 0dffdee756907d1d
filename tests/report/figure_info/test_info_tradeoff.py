"""Which trials the trade-off figure shows, where (in percent), and what it says about the rest."""

from __future__ import annotations

import pytest

from hgc_tune.report._figure_info._tradeoff import _get_tradeoff_info
from hgc_tune.search._pareto import ParetoData, ParetoPoint


def point(number, reduction, loss, *, feasible=True, state="COMPLETE", **kw) -> ParetoPoint:
    reductions = {} if reduction is None else {"paper": reduction, "complete": reduction / 2}
    return ParetoPoint(number, state, reductions, loss, feasible, **kw)


def same(actual, expected) -> bool:
    """Whether two lists of points are equal up to float rounding."""
    return len(actual) == len(expected) and all(a == pytest.approx(e) for a, e in zip(actual, expected))


def pareto(*points: ParetoPoint, budget=0.02, **kw) -> ParetoData:
    return ParetoData(budget=budget, points=points, **kw)


def test_points_are_grouped_and_placed_in_percent():
    data = pareto(
        point(0, 0.0, 0.0, peers=("full-compute",), on_front=True),
        point(1, 0.30, 0.01, on_front=True, chosen=True),
        point(2, 0.50, 0.03, feasible=False, on_front=True),
        point(3, 0.20, 0.015),
        point(4, 0.40, 0.025, peers=("deepcache-n3-b0",)),
        point(5, 0.60, 0.05, state="PRUNED", rejected_early=True, feasible=False),
    )
    info = _get_tradeoff_info(data)
    # the y axis: no loss beyond four budgets (8 %), so it stops at 1.1 × the largest loss (5 %) = 5.5 %
    assert info.budget == pytest.approx(2.0) and info.top == pytest.approx(5.5)
    groups = {g.kind: g for g in info.groups}
    assert list(groups) == ["feasible", "over_budget", "rejected"]
    assert same(groups["feasible"].inside, [(30.0, 1.0), (20.0, 1.5)])
    assert same(groups["over_budget"].inside, [(50.0, 3.0)])
    assert same(groups["rejected"].inside, [(60.0, 5.0)])
    assert all(g.clipped == [] for g in info.groups)
    # the front, by reduction: the anchor, trial 1, trial 2
    assert same(info.front, [(0.0, 0.0), (30.0, 1.0), (50.0, 3.0)])
    assert info.anchor == (0.0, 0.0)
    [peer] = info.peers
    assert (peer.name, peer.family, peer.clipped) == ("deepcache-n3-b0", "deepcache", False)
    assert (peer.x, peer.y, peer.loss) == pytest.approx((40.0, 2.5, 0.025))
    assert info.chosen.number == 1 and (info.chosen.x, info.chosen.y) == pytest.approx((30.0, 1.0))
    # x from 3 below the smallest reduction (0) to 5 above the largest (60)
    assert info.xlim == pytest.approx((-3.0, 65.0))
    # y from a 3 % margin below 0 to 2 % + 0.01 above the top
    assert info.ylim == pytest.approx((-0.03 * 5.5, 5.5 * 1.02 + 0.01))
    assert info.notes == []


def test_losses_far_beyond_the_budget_are_clipped_to_the_top_edge():
    data = pareto(
        point(0, 0.10, 0.01),
        point(1, 0.70, 0.60, feasible=False),
        point(2, 0.40, 0.90, feasible=False, peers=("tgate-g10",)),
        budget=0.01,
    )
    info = _get_tradeoff_info(data)
    # four budgets (4 %), or 1.15 × the largest feasible loss (1.15 %): 4 %
    assert info.top == pytest.approx(4.0)
    over = next(g for g in info.groups if g.kind == "over_budget")
    assert over.inside == [] and same(over.clipped, [(70.0, 4.0)]) and over.size == 1
    [peer] = info.peers
    assert peer.clipped and peer.y == pytest.approx(4.0) and peer.loss == pytest.approx(0.90)
    assert info.notes == ["▲ on the top edge = loss beyond the axis", "no policy chosen"]
    assert info.chosen is None


def test_failed_repeated_and_reductionless_trials_are_left_out_and_counted():
    data = pareto(
        point(0, 0.20, 0.01, chosen=True),
        point(1, 0.20, 0.01, duplicate_of=0),
        point(2, 0.50, None, state="FAIL", feasible=False),
        point(3, 0.50, None, state="RUNNING", feasible=False),
        point(4, None, 0.001),
        message="unused",
    )
    info = _get_tradeoff_info(data)
    assert [(g.kind, g.inside) for g in info.groups] == [("feasible", [(20.0, 1.0)])]
    assert info.notes == ["1 failed trials not shown", "1 repeated policies shown once"]
    # no anchor trial: the full-compute mark sits at the origin
    assert info.anchor == (0.0, 0.0) and info.peers == [] and info.front == []


def test_held_out_losses_convention_and_labels():
    data = pareto(
        point(0, 0.40, 0.01, heldout_loss=0.012, chosen=True),
        point(1, 0.20, 0.005),
        metric="miou",
        study="s1",
    )
    info = _get_tradeoff_info(data, convention="complete")
    # the complete convention's reductions are half the paper's in this file
    assert same(info.heldout, [(20.0, 1.0, 1.2)])
    assert info.chosen.x == pytest.approx(20.0)
    assert (info.convention, info.metric, info.study) == ("complete", "miou", "s1")


def test_no_chosen_policy_says_why():
    info = _get_tradeoff_info(pareto(point(0, 0.1, 0.5, feasible=False), message="nothing met the budget"))
    # a loss of 50 % is beyond four budgets (8 %): on the top edge, and said so
    assert info.top == pytest.approx(8.0) and same(info.groups[0].clipped, [(10.0, 8.0)])
    assert info.notes == [
        "▲ on the top edge = loss beyond the axis",
        "no policy chosen: nothing met the budget",
    ]
    # one paragraph, wrapped at 70 characters
    assert (
        info.note_text
        == "▲ on the top edge = loss beyond the axis; no policy chosen: nothing\nmet the budget"
    )


def test_the_title_names_the_study_and_wraps_at_80_characters():
    assert _get_tradeoff_info(pareto()).title == "Cost vs fidelity of every schedule tried"
    short = _get_tradeoff_info(pareto(study="s1")).title
    assert short == "Cost vs fidelity of every schedule tried — study s1"
    lines = _get_tradeoff_info(pareto(study="x" * 90)).title.split("\n")
    # the name does not fit after the heading's 49 characters: cut at 80, the rest on the next line
    assert lines == ["Cost vs fidelity of every schedule tried — study " + "x" * 31, "x" * 59]
