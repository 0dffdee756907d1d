"""The search space: the Block Caching rule, parameters -> policy, and the peers as points of the space."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from _search_fixtures import SD15_KEYS, TINY_KEYS, make_target, synthetic_space

from hgc_tune.errors import SearchError
from hgc_tune.fidelity import TaskEvaluator
from hgc_tune.fidelity._scorer import FidelityScorer
from hgc_tune.generation import GeneratedOutput
from hgc_tune.models._blocks import deep_block_keys
from hgc_tune.policy import ReuseWindow, peer_policy
from hgc_tune.policy._peers import DEFAULT_PEERS, peer_params
from hgc_tune.search._space import (
    FULL_COMPUTE,
    default_peer_names,
    is_full_compute,
    phased_compute_steps,
    policy_key,
    threshold_compute_steps,
    windows_from_compute_steps,
)


def test_threshold_rule_accumulates_change_since_the_last_computed_step():
    change = [math.nan, 0.5, 0.2, 0.2, 0.6, 0.1, 0.1]
    # δ=0.35: s1 acc .5>δ compute; s2 .2; s3 .4>δ compute; s4 .6 compute; s5 .1; s6 .2
    assert threshold_compute_steps(change, 0.35) == (0, 1, 3, 4)
    assert threshold_compute_steps(change, 0.05) == (0, 1, 2, 3, 4, 5, 6)
    assert threshold_compute_steps(change, 10.0) == (0,)
    # equal to δ does not exceed it
    assert threshold_compute_steps([0.0, 0.3, 0.3], 0.3) == (0, 2)


def test_windows_from_compute_steps():
    assert windows_from_compute_steps([0, 1, 4], 6) == (ReuseWindow(1, 4), ReuseWindow(4, 6))
    assert windows_from_compute_steps(range(5), 5) == ()
    assert windows_from_compute_steps([0], 3) == (ReuseWindow(0, 3),)
    with pytest.raises(SearchError, match="step 0"):
        windows_from_compute_steps([1, 2], 4)


CLASSES = make_target(20).component_classes


def test_deep_blocks_follow_deepcache_branches():
    assert deep_block_keys(TINY_KEYS, 0, CLASSES) == [
        "unet.down_blocks.1",
        "unet.down_blocks.2",
        "unet.down_blocks.3",
        "unet.mid_block",
        "unet.up_blocks.0",
        "unet.up_blocks.1",
        "unet.up_blocks.2",
        "controlnet.down_blocks.1",
        "controlnet.down_blocks.2",
        "controlnet.down_blocks.3",
        "controlnet.mid_block",
    ]
    assert deep_block_keys(TINY_KEYS, 3, CLASSES) == ["unet.mid_block", "controlnet.mid_block"]


def test_default_peers_scale_with_steps():
    assert default_peer_names(20) == DEFAULT_PEERS
    assert default_peer_names(5) == (
        "deepcache-n3-b0",
        "deepcache-n5-b0",
        "tgate-g2",
        "tgate-g2-cfg",
        "cnwin-k2-drop",
    )
    assert "tgate-g2-cfg" not in default_peer_names(5, cfg=False)


def _effect(policy):
    """What a policy computes: compute sets, ControlNet window mode, CFG branches per step."""
    every = frozenset(range(policy.num_steps))
    sets = {k: v for k, v in policy.compute_sets().items() if v != every}
    mode = policy.controlnet.mode if "controlnet" in sets else None
    return sets, mode, [policy.cfg_branches(s, True) for s in range(policy.num_steps)]


PEERS = [
    "deepcache-n3-b0",
    "deepcache-n5-b0",
    "deepcache-n2-b1",
    "deepcache-n4-b2",
    "tgate-g10",
    "tgate-g10-cfg",
    "tgate-g3",
    "cnwin-k10-drop",
    "cnwin-k5-reuse",
    "cnwin-k0-drop",
]


@pytest.mark.parametrize("keys", [TINY_KEYS, SD15_KEYS], ids=["tiny", "sd15"])
@pytest.mark.parametrize("steps", [20, 5])
@pytest.mark.parametrize("name", PEERS)
def test_enqueued_peer_params_rebuild_the_peer_generators_policy(keys, steps, name):
    space = synthetic_space(keys, steps)
    target = make_target(steps)
    try:
        expected = peer_policy(name, target, keys)
    except Exception:
        with pytest.raises(SearchError):
            space.peer_params(name)
        return
    # the peer is its own search parameters: the space builds the generator's policy from them, field by field
    built = space.build(peer_params(name, steps))
    assert built.compute_sets() == expected.compute_sets()
    parts = ("blocks", "attention", "controlnet", "guidance")
    assert [getattr(built, p) for p in parts] == [getattr(expected, p) for p in parts]
    # the enqueued params (every other part at "no caching") build the same policy
    params = space.peer_params(name)
    assert _effect(space.build(params)) == _effect(expected)
    assert policy_key(space.build(params)) == policy_key(expected)
    # the trial that runs the enqueued params suggests exactly them (same names, inside the distributions)
    assert space.suggest(optuna.trial.FixedTrial(params)) == params


def test_phased_schedule_gives_each_group_its_own_dense_early_sparse_late_schedule():
    space = synthetic_space(TINY_KEYS, 20)
    params = {
        "blocks.schedule": "phased",
        "blocks.branch": 0,
        "blocks.switch": 8,
        "blocks.unet.early": 1,
        "blocks.unet.late": 4,
        "blocks.controlnet.early": 2,
        "blocks.controlnet.late": 6,
        "attention.schedule": "phased",
        "attention.switch": 10,
        "attention.early": 1,
        "attention.late": 5,
        "controlnet.steps": 20,
        "guidance.cfg_until": 20,
    }
    assert space.suggest(optuna.trial.FixedTrial(params)) == params
    policy = space.build(params)
    sets = policy.compute_sets()
    assert sets["unet.mid_block"] == {0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16}
    assert sets["unet.down_blocks.1"] == sets["unet.up_blocks.2"] == sets["unet.mid_block"]
    assert sets["controlnet.mid_block"] == {0, 2, 4, 6, 8, 14}
    assert "unet.down_blocks.0" not in sets and "unet.up_blocks.3" not in sets  # the shallow branch
    attn = "unet.mid_block.attentions.0.transformer_blocks.0.attn2"
    assert sets[attn] == set(range(10)) | {10, 15}
    assert policy.attention[attn] == (ReuseWindow(10, 15), ReuseWindow(15, 20))


def test_phased_compute_steps():
    assert phased_compute_steps(10, 4, 1, 3) == (0, 1, 2, 3, 4, 7)
    assert phased_compute_steps(10, 3, 3, 3) == (0, 3, 6, 9)  # DeepCache's interval 3
    assert phased_compute_steps(6, 6, 2, 1) == (0, 2, 4)
    with pytest.raises(SearchError, match="switch=0"):
        phased_compute_steps(10, 0, 1, 1)


@pytest.mark.parametrize("interval", [2, 3, 5])
def test_uniform_interval_is_a_point_of_the_phased_schedule_too(interval):
    space = synthetic_space(TINY_KEYS, 20)
    uniform = space.build(space.peer_params(f"deepcache-n{interval}-b0"))
    phased = dict(space.peer_params("full-compute"))
    phased.update({"blocks.schedule": "phased", "blocks.branch": 0, "blocks.switch": interval})
    for group in ("unet", "controlnet"):
        phased.update({f"blocks.{group}.early": interval, f"blocks.{group}.late": interval})
    assert policy_key(space.build(phased)) == policy_key(uniform)


def test_full_compute_point():
    space = synthetic_space(TINY_KEYS, 5)
    policy = space.build(space.peer_params(FULL_COMPUTE))
    assert is_full_compute(policy)
    assert not is_full_compute(space.build(space.peer_params("deepcache-n3-b0")))


def test_peer_outside_the_space_is_refused():
    space = synthetic_space(TINY_KEYS, 20, guidance=False)
    with pytest.raises(SearchError, match="truncates CFG"):
        space.peer_params("tgate-g10-cfg")
    with pytest.raises(SearchError, match="does not fit"):
        space.peer_params("deepcache-n3-b7")
    with pytest.raises(SearchError, match="unknown peer"):
        space.peer_params("blockcache-7")


def test_threshold_schedule_uses_each_blocks_own_curve():
    space = synthetic_space(TINY_KEYS, 8)
    params = {
        "blocks.schedule": "threshold",
        "blocks.branch": 0,
        "blocks.unet.threshold": 0.8,
        "blocks.controlnet.threshold": 100.0,
    }
    policy = space.build(params)
    for key in deep_block_keys(TINY_KEYS, 0, CLASSES):
        steps = threshold_compute_steps(space.block_change[key], 0.8 if key.startswith("unet") else 100.0)
        assert policy.blocks.get(key, tuple(range(8))) == steps
    assert policy.blocks["controlnet.mid_block"] == (0,)
    assert "unet.down_blocks.0" not in policy.blocks  # shallow branch always computes


def test_attention_threshold_windows():
    space = synthetic_space(TINY_KEYS, 6)
    policy = space.build({"attention.schedule": "threshold", "attention.threshold": 0.1})
    for key in space.attention_keys:
        steps = threshold_compute_steps(space.attention_change[key], 0.1)
        assert sorted(policy.compute_sets()[key]) == list(steps)


def test_random_points_are_valid_policies():
    space = synthetic_space(SD15_KEYS, 10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    keys = set()
    for _ in range(60):
        trial = study.ask()
        policy = space.build(space.suggest(trial))
        assert all(0 in steps or key == "controlnet" for key, steps in policy.compute_sets().items())
        keys.add(policy_key(policy))
        study.tell(trial, 0.0)
    assert len(keys) > 40


def _outputs(errors):
    consumed = []

    def gen():
        try:
            for i, e in enumerate(errors):
                consumed.append(i)
                yield GeneratedOutput(image=np.zeros((8, 8, 3), np.uint8), latent=np.full((4, 2, 2), 1.0 + e))
        finally:
            consumed.append("closed")

    return gen(), consumed


@pytest.fixture
def scorer():
    # latent_rel_error of latent 1+e against 1 is |e|; its loss is the mean error (ideal 0)
    refs = [GeneratedOutput(image=np.zeros((8, 8, 3), np.uint8), latent=np.ones((4, 2, 2))) for _ in range(4)]
    return FidelityScorer(TaskEvaluator("seg", "latent_rel_error"), refs, [np.zeros((8, 8, 3), np.uint8)] * 4)


def test_early_rejection_stops_generating_once_the_running_loss_breaks_the_budget(scorer):
    outputs, consumed = _outputs([0.3, 0.3, 0.0, 0.0])
    est = scorer.score(outputs, budget=0.1, margin=0.1, min_samples=2)
    assert est.rejected_early and est.samples == 2 and est.total == 4
    assert est.loss == pytest.approx(0.3)
    assert consumed == [0, 1, "closed"]


def test_no_early_rejection_below_budget_plus_margin(scorer):
    outputs, consumed = _outputs([0.25, 0.25, 0.5, 0.0])
    # after 2: 0.25; after 3: 1/3 (not > 0.2 + 0.2); the last sample is never a reason to stop
    est = scorer.score(outputs, budget=0.2, margin=0.2, min_samples=2)
    assert not est.rejected_early and est.samples == 4
    assert est.loss == pytest.approx(0.25)
    assert est.per_sample_policy == pytest.approx((0.25, 0.25, 0.5, 0.0))
    assert consumed[-1] == "closed"


def test_early_rejection_waits_for_min_samples(scorer):
    outputs, _ = _outputs([0.9, 0.0, 0.0, 0.0])
    est = scorer.score(outputs, budget=0.1, margin=0.0, min_samples=3)
    # after 3 samples the mean is 0.3 > 0.1: stop before the 4th
    assert est.rejected_early and est.samples == 3 and est.loss == pytest.approx(0.3)


@pytest.fixture
def scorer8():
    refs = [GeneratedOutput(image=np.zeros((8, 8, 3), np.uint8), latent=np.ones((4, 2, 2))) for _ in range(8)]
    return FidelityScorer(TaskEvaluator("seg", "latent_rel_error"), refs, [np.zeros((8, 8, 3), np.uint8)] * 8)


def test_sequential_test_stops_on_a_clear_pass(scorer8):
    outputs, consumed = _outputs([0.01] * 8)
    est = scorer8.score(outputs, budget=0.1, min_samples=3, confidence=0.95)
    assert est.accepted_early and not est.rejected_early and est.samples == 3
    assert est.upper == pytest.approx(0.01) and est.within(0.1)
    assert consumed == [0, 1, 2, "closed"]


def test_sequential_test_stops_on_a_clear_failure(scorer8):
    outputs, consumed = _outputs([0.5, 0.4, 0.6, 0.5, 0.0, 0.0, 0.0, 0.0])
    est = scorer8.score(outputs, budget=0.1, min_samples=3, confidence=0.95)
    assert est.rejected_early and est.samples == 3 and est.lower > 0.1 and not est.within(0.1)


def test_sequential_test_takes_more_samples_while_the_bound_straddles_the_budget(scorer8):
    outputs, consumed = _outputs([0.0, 0.2] * 4)
    est = scorer8.score(outputs, budget=0.1, min_samples=3, confidence=0.95)
    # the loss is 0.1 on every even prefix: never a clear verdict, so every sample is generated
    assert est.samples == 8 and not est.rejected_early and not est.accepted_early
    assert est.loss == pytest.approx(0.1) and est.lower < 0.1 < est.upper and not est.within(0.1)
    # the same losses as a point estimate (confidence 0) hold the budget
    outputs, _ = _outputs([0.0, 0.2] * 4)
    point = scorer8.score(outputs, budget=0.1, margin=0.1, min_samples=3, confidence=0)
    assert point.upper == point.loss and point.within(0.1 + 1e-12)


def test_a_screen_scores_at_most_max_samples(scorer8):
    outputs, consumed = _outputs([0.0, 0.2] * 4)
    est = scorer8.score(outputs, budget=0.1, min_samples=3, confidence=0.95, max_samples=4)
    assert est.samples == 4 and est.total == 8 and consumed == [0, 1, 2, 3, "closed"]


def test_a_check_without_early_acceptance_decides_a_pass_on_every_sample(scorer8):
    outputs, consumed = _outputs([0.01] * 8)
    est = scorer8.score(outputs, budget=0.1, min_samples=3, confidence=0.95, accept_early=False)
    assert est.samples == 8 and not est.accepted_early and est.within(0.1)
    outputs, _ = _outputs([0.5] * 8)  # a clear failure still stops early
    est = scorer8.score(outputs, budget=0.1, min_samples=3, confidence=0.95, accept_early=False)
    assert est.rejected_early and est.samples == 3


def _record(number, macs, loss, upper, lower, *, rejected=False):
    from hgc_tune.search._trials import TrialRecord

    return TrialRecord(
        number=number,
        state="COMPLETE",
        macs={"paper": {"full": 100.0, "policy": macs, "reduction": 1 - macs / 100.0}},
        loss=loss,
        loss_upper=upper,
        loss_lower=lower,
        confidence=0.95,
        rejected_early=rejected,
        feasible=upper is not None and upper <= 0.015 and not rejected,
        policy_key=f"k{number}",
    )


def test_candidates_promising_first_cheapest_first_and_the_calibration_winner_always_checked():
    from hgc_tune.search._selection import _candidates

    records = [
        _record(0, 100.0, 0.0, 0.0, 0.0),  # full compute: feasible, never a candidate
        _record(1, 40.0, 0.01, 0.03, -0.01),  # undecided, point estimate within the budget
        _record(2, 30.0, 0.02, 0.05, -0.01),  # undecided, cheapest plausible, point estimate over the budget
        _record(3, 20.0, 0.2, 0.3, 0.1),  # a failure (lower bound above the budget)
        _record(4, 35.0, 0.3, None, None, rejected=True),  # a clear failure
        _record(5, 60.0, 0.001, 0.01, -0.008),  # within the budget: the calibration winner
        _record(6, 50.0, 0.005, 0.02, -0.001),  # undecided, point estimate within the budget
        _record(7, 45.0, 0.004, 0.03, -0.02),  # undecided, point estimate within the budget
    ]
    best, candidates = _candidates(records, 0.015, 3, validated=True)
    assert best.number == 5
    # the promising (1, 7, 6, 5) cheapest first, then the straddling trial whose point estimate is over (2);
    # the winner moves up into the 3 tries
    assert [r.number for r in candidates] == [1, 7, 5, 6, 2]
    _, candidates = _candidates(records, 0.015, 4, validated=True)
    assert [r.number for r in candidates] == [1, 7, 6, 5, 2]
    # without a validation split, only trials within the budget
    _, candidates = _candidates(records, 0.015, 3, validated=False)
    assert [r.number for r in candidates] == [5]


def test_a_guard_over_its_budget_by_its_point_estimate_is_not_promising():
    import dataclasses

    from hgc_tune.search._selection import _candidates

    task_row = {"metric": "miou", "budget": 0.015}
    cheap = dataclasses.replace(
        _record(1, 30.0, 0.0, 0.02, -0.02),
        constraints=(task_row, {"metric": "background", "budget": 0.015, "loss": 0.03, "loss_lower": -0.01}),
    )
    dearer = dataclasses.replace(
        _record(2, 50.0, 0.0, 0.02, -0.02),
        constraints=(task_row, {"metric": "background", "budget": 0.015, "loss": 0.0, "loss_lower": -0.01}),
    )
    _, candidates = _candidates([cheap, dearer], 0.015, 2, validated=True)
    assert [r.number for r in candidates] == [2, 1]


# -------------------------------------------------------------- several ControlNets (MultiControlNetModel)


def _multi_keys(keys: list[str]) -> list[str]:
    """The module keys of the same pipeline with two ControlNets in a MultiControlNetModel."""
    out = []
    for key in keys:
        if key == "controlnet" or key.startswith("controlnet."):
            out += [key.replace("controlnet", f"controlnet.nets.{i}", 1) for i in (0, 1)]
        else:
            out.append(key)
    return out


def _multi_space(steps: int):
    import dataclasses

    from hgc_tune.policy._model import ControlNetSpec
    from hgc_tune.search import PolicySpace

    base = synthetic_space(_multi_keys(TINY_KEYS), steps)
    specs = (ControlNetSpec("ControlNetModel", "a", "seg"), ControlNetSpec("ControlNetModel", "a", "depth"))
    target = dataclasses.replace(
        base.target, controlnet_class="MultiControlNetModel", condition_type="seg,depth", controlnets=specs
    )
    return PolicySpace(
        target=target,
        module_keys=base.module_keys,
        block_change=dict(base.block_change),
        attention_change=dict(base.attention_change),
    )


def _multi_effect(policy):
    every = frozenset(range(policy.num_steps))
    sets = {k: v for k, v in policy.compute_sets().items() if v != every}
    modes = {k: w.mode for k, w in policy.controlnet_windows.items() if k in sets}
    return sets, modes, [policy.cfg_branches(s, True) for s in range(policy.num_steps)]


def test_each_controlnet_has_its_own_window_and_block_parameters():
    space = _multi_space(20)
    dists = space.distributions()
    for net in ("controlnet.nets.0", "controlnet.nets.1"):
        for name in (f"{net}.steps", f"{net}.mode", f"blocks.{net}.threshold", f"blocks.{net}.early"):
            assert name in dists
    assert "controlnet.steps" not in dists and "blocks.controlnet.threshold" not in dists
    params = dict(space.peer_params(FULL_COMPUTE))
    params.update(
        {
            "blocks.schedule": "phased",
            "blocks.branch": 0,
            "blocks.switch": 8,
            "blocks.unet.early": 1,
            "blocks.unet.late": 4,
            "blocks.controlnet.nets.0.early": 2,
            "blocks.controlnet.nets.0.late": 6,
            "blocks.controlnet.nets.1.early": 1,
            "blocks.controlnet.nets.1.late": 20,
            "controlnet.nets.0.steps": 10,
            "controlnet.nets.0.mode": "drop",
            "controlnet.nets.1.steps": 4,
            "controlnet.nets.1.mode": "reuse",
        }
    )
    assert space.suggest(optuna.trial.FixedTrial(params)) == params
    policy = space.build(params)
    sets = policy.compute_sets()
    assert sets["controlnet.nets.0.mid_block"] == {0, 2, 4, 6, 8, 14}
    assert sets["controlnet.nets.1.mid_block"] == set(range(9))
    assert policy.controlnets["controlnet.nets.0"].steps == tuple(range(10))
    assert policy.controlnets["controlnet.nets.1"].mode == "reuse"
    assert policy.controlnet is None


@pytest.mark.parametrize("steps", [20, 5])
@pytest.mark.parametrize("name", PEERS)
def test_peers_are_points_of_the_several_controlnet_space(steps, name):
    space = _multi_space(steps)
    keys = list(space.module_keys)
    try:
        expected = peer_policy(name, space.target, keys)
    except Exception:
        with pytest.raises(SearchError):
            space.peer_params(name)
        return
    params = space.peer_params(name)
    built = space.build(params)
    assert _multi_effect(built) == _multi_effect(expected)
    assert policy_key(built) == policy_key(expected)
    assert space.suggest(optuna.trial.FixedTrial(params)) == params
