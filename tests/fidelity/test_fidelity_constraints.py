"""Several constraints scored on the same outputs: Bonferroni levels, the all-bounds verdict, early
stopping."""

from __future__ import annotations

import numpy as np
import pytest

from hgc_tune.data.shapes import render_scene
from hgc_tune.errors import FidelityError
from hgc_tune.fidelity import (
    PROMPT_METRICS,
    ConstrainedEstimate,
    ConstraintScorer,
    PromptEvaluator,
    paired_loss_bound,
)
from hgc_tune.fidelity._confidence import bonferroni_level
from hgc_tune.fidelity._registry import lookup_metric
from hgc_tune.fidelity._scorer import FidelityScorer
from hgc_tune.generation import GeneratedOutput


class _TableEvaluator:
    """Scores output ``i`` by looking its value up: the output's image is ``[[i, side]]`` (0: full, 1:
    policy)."""

    def __init__(self, metric: str, full: list[float], policy: list[float]) -> None:
        self.metric = lookup_metric(metric)
        self.values = (full, policy)

    def score(self, image, condition=None, *, reference=None) -> float:
        index, side = (int(v) for v in np.asarray(image).ravel()[:2])
        return float(self.values[side][index])


def _out(index: int, side: int) -> GeneratedOutput:
    return GeneratedOutput(image=np.array([[index, side]]), latent=np.zeros(1))


def _scorer(metric: str, full: list[float], policy: list[float]) -> FidelityScorer:
    refs = [_out(i, 0) for i in range(len(full))]
    return FidelityScorer(_TableEvaluator(metric, full, policy), refs, [None] * len(full))


def _policy_outputs(n: int, seen: list[int]):
    for i in range(n):
        seen.append(i)
        yield _out(i, 1)


N = 12
TASK_FULL = [0.80, 0.70, 0.75, 0.82, 0.78, 0.71, 0.77, 0.79, 0.73, 0.76, 0.81, 0.74]
TASK_SAME = list(TASK_FULL)  # the task metric does not move at all


@pytest.mark.parametrize(("k", "expected"), [(1, 0.95), (2, 0.975), (3, 1 - 0.05 / 3), (4, 0.9875)])
def test_bonferroni_level_of_each_bound(k, expected):
    assert bonferroni_level(0.95, k) == pytest.approx(expected)
    assert bonferroni_level(0.0, k) == 0.0


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bonferroni_level_refuses_a_bad_k(k):
    with pytest.raises(FidelityError, match=r"`k` \(the number of constraints\)"):
        bonferroni_level(0.95, k)


def test_the_scorer_takes_each_bound_at_the_bonferroni_level():
    background_full = [1.0] * N
    background_policy = [1.0] * N
    for k in (1, 2):
        scorers = [
            _scorer("miou", TASK_FULL, TASK_SAME),
            _scorer("background", background_full, background_policy),
        ]
        scorer = ConstraintScorer(scorers[:k], [0.015] * k)
        est = scorer.score(_policy_outputs(N, []), sequential=False, confidence=0.95)
        assert est.k == k and est.confidence == 0.95
        assert est.level == pytest.approx(1 - 0.05 / k)
        assert all(e.confidence == pytest.approx(1 - 0.05 / k) for e in est.estimates)


def test_a_policy_within_the_task_budget_but_failing_the_prompt_guard_is_rejected():
    # the layout is kept exactly (task loss 0), the prompt's background is lost on 4 of 12 scenes
    background_full = [1.0] * N
    background_policy = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    task = _scorer("miou", TASK_FULL, TASK_SAME)
    prompt = _scorer("background", background_full, background_policy)
    alone = ConstraintScorer([task], [0.015]).score(_policy_outputs(N, []), sequential=False, confidence=0.95)
    assert alone.within
    both = ConstraintScorer([task, prompt], [0.015, 0.015])
    est = both.score(_policy_outputs(N, []), sequential=False, confidence=0.95)
    assert not est.within and est.holds() == (True, False)
    # background's loss is the absolute drop of the rate (points), bounded at the Bonferroni level
    assert est.estimates[1].loss == pytest.approx(4 / 12)
    bound = paired_loss_bound(background_full, background_policy, PROMPT_METRICS["background"], 0.975)
    assert est.estimates[1].upper == pytest.approx(bound.upper)
    assert est.violation() == pytest.approx(bound.upper - 0.015)


def test_one_constraints_clear_failure_stops_early():
    seen: list[int] = []
    background_policy = [0.0] * N  # every background lost: a clear failure after min_samples
    scorer = ConstraintScorer(
        [_scorer("miou", TASK_FULL, TASK_SAME), _scorer("background", [1.0] * N, background_policy)],
        [0.015, 0.015],
    )
    # one sample of spread is needed for a bound: the third loses nothing on the task, all on the prompt
    est = scorer.score(_policy_outputs(N, seen), min_samples=3, confidence=0.95)
    assert est.rejected_early and not est.accepted_early and not est.within
    assert len(seen) < N and est.samples == len(seen)


def test_accepting_early_needs_every_bound_within_its_budget():
    # task: a pass from the first looks on; prompt: a loss near its budget that stays undecided for a while
    close = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    task_only, both_seen = [], []
    task = _scorer("miou", TASK_FULL, TASK_SAME)
    alone = ConstraintScorer([task], [0.015]).score(_policy_outputs(N, task_only), confidence=0.95)
    assert alone.accepted_early and len(task_only) == 3
    both = ConstraintScorer([task, _scorer("background", [1.0] * N, close)], [0.015, 0.015])
    est = both.score(_policy_outputs(N, both_seen), confidence=0.95)
    assert not est.accepted_early and len(both_seen) > 3


def test_reported_metrics_never_stop_the_evaluation():
    seen: list[int] = []
    ssim_policy = [0.1] * N  # far from the full-compute picture, but only reported
    scorer = ConstraintScorer(
        [_scorer("miou", TASK_FULL, [v * 0.5 for v in TASK_FULL])],
        [0.9],
        reported=[_scorer("ssim", [1.0] * N, ssim_policy)],
    )
    est = scorer.score(_policy_outputs(N, seen), sequential=False, confidence=0.95)
    assert len(seen) == N and est.reported_mean("ssim") == pytest.approx(0.1) and est.within


def test_the_combined_estimate_round_trips_through_json():
    scorer = ConstraintScorer(
        [_scorer("miou", TASK_FULL, TASK_SAME), _scorer("background", [1.0] * N, [1.0] * 6 + [0.0] * 6)],
        [0.015, 0.02],
        reported=[_scorer("psnr", [60.0] * N, [30.0] * N)],
    )
    est = scorer.score(_policy_outputs(N, []), sequential=False, confidence=0.9)
    again = ConstrainedEstimate.from_dict(est.to_dict())
    assert again == est and est.to_dict()["level"] == pytest.approx(0.95) and est.to_dict()["k"] == 2


def test_background_prompt_metric_reads_the_named_background():
    scenes = [render_scene(i) for i in range(4)]
    ev = PromptEvaluator("background")
    assert (
        ev.metric.kind == "prompt" and ev.metric.loss_mode == "absolute" and "proxy" in ev.metric.description
    )
    # the soft reading: sure of the named background on ground truth, near 0 for another one
    assert min(ev.score_many([s.image for s in scenes], [s.prompt for s in scenes])) > 0.9
    wrong = [s.prompt.rsplit(" on a", 1)[0] + " on a " + _other(s.background) + " background" for s in scenes]
    assert max(ev.score_many([s.image for s in scenes], wrong)) < 0.1


def _other(name: str) -> str:
    from hgc_tune.data.shapes import BACKGROUNDS

    return next(b for b in BACKGROUNDS if b != name)


def test_a_scorer_of_prompt_adherence_scores_full_compute_from_the_prompts():
    scenes = [render_scene(i) for i in range(3)]
    refs = [GeneratedOutput(image=s.image, latent=np.zeros(1)) for s in scenes]
    scorer = FidelityScorer(PromptEvaluator("background"), refs, [s.prompt for s in scenes])
    assert min(scorer.full_scores) > 0.9
    assert scorer.full_compute(confidence=0.95).loss == 0.0


def test_clip_needs_a_clip_model():
    with pytest.raises(FidelityError, match="needs a CLIP model"):
        PromptEvaluator("clip")
    with pytest.raises(FidelityError, match="must be a prompt metric"):
        PromptEvaluator("ssim")
