"""Sequential testing in batches: with ``look_every=B`` the scorer looks at its bound only after whole
batches (the outputs of one batched pipeline call arrive together)."""

from __future__ import annotations

import numpy as np
import pytest

from hgc_tune.fidelity import TaskEvaluator
from hgc_tune.fidelity._scorer import FidelityScorer
from hgc_tune.generation import GeneratedOutput

N = 8


def _scorer() -> FidelityScorer:
    # latent_rel_error of latent 1 + e against 1 is |e|; the loss is the mean error (ideal 0)
    refs = [GeneratedOutput(np.zeros((8, 8, 3), np.uint8), np.ones((4, 2, 2))) for _ in range(N)]
    return FidelityScorer(TaskEvaluator("seg", "latent_rel_error"), refs, [np.zeros((8, 8, 3), np.uint8)] * N)


def _outputs(errors: list[float], consumed: list[int]):
    for i, e in enumerate(errors):
        consumed.append(i)
        yield GeneratedOutput(np.zeros((8, 8, 3), np.uint8), np.full((4, 2, 2), 1.0 + e))


@pytest.mark.parametrize(("look_every", "stops_at"), [(1, 3), (4, 4), (3, 3), (5, 5)])
def test_a_clear_pass_is_seen_at_the_first_batch_boundary_after_min_samples(look_every, stops_at):
    consumed: list[int] = []
    estimate = _scorer().score(
        _outputs([0.01] * N, consumed), budget=0.1, min_samples=3, confidence=0.95, look_every=look_every
    )
    assert estimate.accepted_early and estimate.samples == stops_at and len(consumed) == stops_at


def test_a_clear_failure_waits_for_the_batch_and_a_straddling_bound_runs_to_the_end():
    consumed: list[int] = []
    failing = [0.5, 0.4, 0.6, 0.5, 0.5, 0.0, 0.0, 0.0]
    estimate = _scorer().score(
        _outputs(failing, consumed), budget=0.1, min_samples=2, confidence=0.95, look_every=4
    )
    assert estimate.rejected_early and estimate.samples == 4 and estimate.lower > 0.1
    estimate = _scorer().score(
        _outputs([0.0, 0.2] * 4, []), budget=0.1, min_samples=2, confidence=0.95, look_every=4
    )
    assert estimate.samples == N and not (estimate.rejected_early or estimate.accepted_early)
