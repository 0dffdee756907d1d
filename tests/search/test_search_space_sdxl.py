"""The search space on SDXL's module keys: three down/up blocks give skip branches 0-2, every peer is a point
of the space, and random points are valid policies."""

from __future__ import annotations

import optuna
import pytest
from _search_fixtures import synthetic_space

from hgc_tune.models._blocks import deep_block_keys
from hgc_tune.policy import peer_policy
from hgc_tune.policy._peers import DEFAULT_PEERS, peer_params
from hgc_tune.search._space import policy_key

CLASSES = {"unet": "UNet2DConditionModel", "controlnet": "ControlNetModel"}


@pytest.fixture(scope="module")
def sdxl_keys() -> list[str]:
    from hgc_tune.models import load_pipeline
    from hgc_tune.models._blocks import cacheable_module_keys

    return list(cacheable_module_keys(load_pipeline("sdxl", shape_only=True)))


def test_sdxl_branches(sdxl_keys):
    space = synthetic_space(sdxl_keys, 20)
    assert space.max_branch == 2
    assert set(space.deep_candidates) == set(deep_block_keys(sdxl_keys, 0, CLASSES))
    assert (
        "unet.up_blocks.2" not in space.deep_candidates and "unet.down_blocks.0" not in space.deep_candidates
    )


@pytest.mark.parametrize("name", [*DEFAULT_PEERS, "deepcache-n3-b1", "deepcache-n2-b2", "cnwin-k5-reuse"])
def test_sdxl_peers_are_points_of_the_space(sdxl_keys, name):
    from _search_fixtures import make_target

    space = synthetic_space(sdxl_keys, 20)
    expected = peer_policy(name, make_target(20), sdxl_keys)
    built = space.build(peer_params(name, 20))
    assert built.compute_sets() == expected.compute_sets()
    assert policy_key(space.build(space.peer_params(name))) == policy_key(expected)


def test_random_sdxl_points_are_valid_policies(sdxl_keys):
    space = synthetic_space(sdxl_keys, 10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        policy = space.build(space.suggest(trial))
        assert set(policy.compute_sets()) <= set(sdxl_keys)
        seen.add(policy_key(policy))
        study.tell(trial, 0.0)
    assert len(seen) > 20
