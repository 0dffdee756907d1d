"""A search in batches: trials, their looks and screens follow the profile's batching, and the same seed and
batch size give the same trials and the same policy."""

from __future__ import annotations

import shutil

import pytest
from _search_fixtures import (
    METRIC,
    STEPS,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
)

from hgc_tune.data import open_dataset
from hgc_tune.profile import profile_pipeline
from hgc_tune.search import SearchConfig, prepare_search, search_policy
from hgc_tune.search._space import policy_key

BATCH = 2
SAMPLES = 5  # batches [0, 1], [2, 3], [4]


@pytest.fixture(scope="module")
def batched_profile(tiny_pipe, tmp_path_factory):
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=SAMPLES)
    profile = profile_pipeline(
        tiny_pipe, samples, num_steps=STEPS, progress=False, model_name="tiny", samples_per_call=BATCH
    )
    return profile.save(tmp_path_factory.mktemp("batched") / "profile")


@pytest.fixture(scope="module")
def twice(tiny_pipe, batched_profile, tmp_path_factory):
    results = []
    for run in ("a", "b"):
        root = tmp_path_factory.mktemp(f"batched-{run}")
        config = SearchConfig(
            budget=0.3, metric=METRIC, n_trials=6, seed=3, startup_trials=3, early_rejection_min_samples=2
        )
        # a fresh copy: the study lives beside the profile
        profile = shutil.copytree(batched_profile, root / "profile")
        results.append(search_policy(profile, tiny_pipe, config))
    return results


def test_same_seed_and_batch_size_give_the_same_trials_and_policy(twice):
    a, b = twice
    assert [(r.params, r.loss, r.loss_upper, r.samples) for r in a.trials] == [
        (r.params, r.loss, r.loss_upper, r.samples) for r in b.trials
    ]
    assert a.ok and b.ok and policy_key(a.policy) == policy_key(b.policy)
    assert a.policy.provenance.samples_per_call == BATCH
    # a trial stops only at a batch boundary (or at the last sample)
    assert all(r.samples is None or r.samples % BATCH == 0 or r.samples == SAMPLES for r in a.trials)


def test_the_search_takes_the_profiles_batching_unless_told_otherwise(tiny_pipe, batched_profile, tmp_path):
    profile = shutil.copytree(batched_profile, tmp_path / "profile")
    config = SearchConfig(budget=0.3, metric=METRIC, n_trials=1, peers=(), check_reference=False)
    session = prepare_search(profile, tiny_pipe, config)
    assert session.settings.samples_per_call == BATCH and session.objective.samples_per_call == BATCH
    assert session.study.user_attrs["hgc.profile"]["samples_per_call"] == BATCH
    other = SearchConfig(
        budget=0.3,
        metric=METRIC,
        n_trials=1,
        peers=(),
        check_reference=False,
        samples_per_call=3,
        study_name="other",
    )
    assert prepare_search(profile, tiny_pipe, other).settings.samples_per_call == 3
