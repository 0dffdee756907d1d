"""Profiling in batches: the statistics stay per sample (each sample's uncond and cond rows of the
``[uncond_1..B, cond_1..B]`` batch), so a profile made 4 samples per call matches one made one by one."""

from __future__ import annotations

import numpy as np
import pytest

from hgc_tune.data import open_dataset
from hgc_tune.errors import OutOfMemoryError, ProfileError
from hgc_tune.generation import GenerationSettings, _memory
from hgc_tune.profile import Profile, profile_pipeline
from hgc_tune.profile._artifact import AGGREGATES

STEPS = 4
SAMPLES = 5  # batches of 4: a full batch and a last partial batch of 1


@pytest.fixture(scope="module")
def profiles(tiny_pipe):
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=SAMPLES)
    return {
        size: profile_pipeline(
            tiny_pipe, samples, num_steps=STEPS, progress=False, model_name="tiny", samples_per_call=size
        )
        for size in (1, 4)
    }


def test_batch_of_four_gives_the_per_sample_statistics_of_batch_one(profiles):
    one, four = profiles[1], profiles[4]
    assert (one.samples_per_call, four.samples_per_call) == (1, 4)
    keys = [*one.block_keys, *one.attention_keys]
    assert keys == [*four.block_keys, *four.attention_keys]
    compared = 0
    for aggregate in AGGREGATES:
        for name, tensor in one.tensors().items():
            if not name.startswith(f"{aggregate}_"):
                continue
            batched = four.tensors()[name]
            assert np.array_equal(np.isnan(tensor), np.isnan(batched)), name
            # A statistic over the whole batch (uncond and cond of 4 samples together) would give one value
            # per step for all samples and a std far from the per-sample std checked here.
            np.testing.assert_allclose(batched, tensor, rtol=2e-3, atol=1e-5, err_msg=name)
            compared += 1
    assert compared > 10
    np.testing.assert_allclose(four.reference_latents, one.reference_latents, atol=1e-3)


def test_a_batched_profile_records_its_batching_and_an_old_one_loads_as_one(profiles, tmp_path):
    loaded = Profile.load(profiles[4].save(tmp_path / "four"))
    assert loaded.samples_per_call == 4 and loaded.meta["samples_per_call"] == 4
    old_meta = {k: v for k, v in profiles[1].meta.items() if k != "samples_per_call"}
    assert Profile(old_meta, profiles[1].tensors()).samples_per_call == 1


def test_bad_samples_per_call_is_refused_naming_the_value(tiny_pipe):
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=1)
    with pytest.raises(ProfileError, match="samples_per_call=0"):
        profile_pipeline(tiny_pipe, samples, num_steps=STEPS, progress=False, samples_per_call=0)


def test_a_batch_that_does_not_fit_is_refused_naming_one_that_fits(tiny_pipe, monkeypatch):
    settings = GenerationSettings(STEPS, 7.5, 64, 64, samples_per_call=8)
    per_sample = _memory.sample_activation_bytes(tiny_pipe, settings)
    # room for 3 samples' activations in the usable share
    monkeypatch.setattr(_memory, "available_bytes", lambda pipe: int(3.5 * per_sample / 0.8))
    with pytest.raises(
        OutOfMemoryError, match=r"samples_per_call=8 does not fit.*samples_per_call=3 or fewer"
    ):
        _memory.check_batch_fits(tiny_pipe, settings)
    _memory.check_batch_fits(tiny_pipe, GenerationSettings(STEPS, 7.5, 64, 64, samples_per_call=3))
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=1)
    with pytest.raises(OutOfMemoryError, match="samples_per_call=3"):  # before any MAC counting
        profile_pipeline(tiny_pipe, samples, num_steps=STEPS, progress=False, samples_per_call=8)
