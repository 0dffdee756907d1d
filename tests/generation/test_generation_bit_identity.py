"""The invariant every fidelity figure rests on: a policy that computes everything reproduces the profile's
references bit for bit, whichever caller generates it (the profiler, a search trial, the report), because
they all generate through :mod:`hgc_tune.generation`."""

from __future__ import annotations

import numpy as np
import pytest

from hgc_tune.data import open_dataset
from hgc_tune.errors import HgcTuneError
from hgc_tune.generation import (
    GenerationSettings,
    batches,
    generate_output,
    generate_outputs,
    iter_outputs,
    jobs_from_samples,
)
from hgc_tune.generation._inputs import condition_array, profile_jobs, profile_settings
from hgc_tune.models import pipeline_for_task
from hgc_tune.policy import full_compute_policy
from hgc_tune.profile import Profile, profile_pipeline
from hgc_tune.report._samples import generate_policy_images
from hgc_tune.search import SearchConfig, prepare_search
from hgc_tune.search._space import FULL_COMPUTE

STEPS = 4
SAMPLES = 2


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("task", "strength"), [("text2img", None), ("inpaint", 0.75)])
def test_profiler_search_and_report_generate_the_same_bits(tiny_pipe, tmp_path, task, strength):
    pipe = pipeline_for_task(tiny_pipe, task)
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=SAMPLES)
    made = profile_pipeline(
        pipe, samples, num_steps=STEPS, strength=strength, progress=False, model_name="tiny", dataset="shapes"
    )
    profile = Profile.load(made.save(tmp_path / "profile"))
    images, latents = profile.reference_images, profile.reference_latents

    # the search's all-compute trial: the session's calibration jobs and settings under the space's
    # full-compute policy, generated as every trial is (the objective's `outputs`)
    config = SearchConfig(budget=0.05, metric="ssim", n_trials=1, peers=(), check_reference=False)
    session = prepare_search(profile, pipe, config, cache_dir=tmp_path)
    all_compute = session.space.build(session.space.peer_params(FULL_COMPUTE))
    trial = list(session.objective.outputs(all_compute))
    assert len(trial) == SAMPLES
    for i, output in enumerate(trial):
        assert np.array_equal(output.image, images[i])
        assert np.array_equal(output.latent, latents[i])

    # the report's full-compute images
    report = generate_policy_images(
        pipe, profile, full_compute_policy(all_compute.target), list(range(SAMPLES))
    )
    assert np.array_equal(report, images)

    # the jobs rebuilt from the saved profile are the ones the profiler generated from
    settings = profile_settings(profile)
    assert settings.strength == (None if task == "text2img" else strength)
    for i, job in enumerate(profile_jobs(profile, range(SAMPLES))):
        output = generate_output(pipe, job, settings)
        assert np.array_equal(output.image, images[i]) and np.array_equal(output.latent, latents[i])


def test_the_step_callback_sees_every_step_and_changes_nothing(tiny_pipe):
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=1)
    job = jobs_from_samples(samples)[0]
    settings = GenerationSettings(STEPS, 7.5, 64, 64)
    steps: list[int] = []
    watched = generate_output(tiny_pipe, job, settings, on_step=steps.append)
    plain = next(iter_outputs(tiny_pipe, None, [job], settings))
    assert steps == list(range(STEPS))
    assert np.array_equal(watched.image, plain.image) and np.array_equal(watched.latent, plain.latent)


def test_condition_array_takes_lists_and_tuples_as_rgb():
    from PIL import Image

    gray = Image.new("L", (8, 4), 200)
    one = condition_array(gray, 2, 4)
    assert one.shape == (2, 4, 3) and one.dtype == np.uint8 and (one == 200).all()
    several = condition_array((gray, gray.convert("RGB")), 2, 4)
    assert several.shape == (2, 2, 4, 3)
    assert np.array_equal(condition_array([gray, gray], 2, 4), several)


BATCH = 2
BATCHED_SAMPLES = 3  # two calls: a full batch of 2 and a last partial batch of 1


def test_batched_references_are_reproduced_by_trials_report_and_rebuilt_jobs(tiny_pipe, tmp_path):
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=BATCHED_SAMPLES)
    made = profile_pipeline(
        tiny_pipe, samples, num_steps=STEPS, progress=False, model_name="tiny", samples_per_call=BATCH
    )
    profile = Profile.load(made.save(tmp_path / "profile"))
    assert profile.samples_per_call == BATCH
    images, latents = profile.reference_images, profile.reference_latents

    config = SearchConfig(budget=0.05, metric="ssim", n_trials=1, peers=(), check_reference=False)
    session = prepare_search(profile, tiny_pipe, config, cache_dir=tmp_path)
    assert session.settings.samples_per_call == BATCH  # the search takes the profile's batching
    all_compute = session.space.build(session.space.peer_params(FULL_COMPUTE))
    trial = list(session.objective.outputs(all_compute))
    assert len(trial) == BATCHED_SAMPLES
    for i, output in enumerate(trial):
        assert np.array_equal(output.image, images[i]) and np.array_equal(output.latent, latents[i])

    # the report generates the profile's batch that holds a sample, even for the last sample alone
    policy = full_compute_policy(all_compute.target)
    assert np.array_equal(generate_policy_images(tiny_pipe, profile, policy, [2]), images[2:])
    assert np.array_equal(generate_policy_images(tiny_pipe, profile, policy, [0, 1, 2]), images)

    rebuilt = list(iter_outputs(tiny_pipe, None, profile_jobs(profile, range(3)), profile_settings(profile)))
    assert all(np.array_equal(o.latent, latents[i]) for i, o in enumerate(rebuilt))


@pytest.mark.parametrize(("task", "strength"), [("text2img", None), ("img2img", 0.75), ("inpaint", 0.75)])
def test_a_batch_matches_its_samples_generated_alone_up_to_float_rounding(tiny_pipe, task, strength):
    pipe = pipeline_for_task(tiny_pipe, task)
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=BATCHED_SAMPLES)
    jobs = jobs_from_samples(samples, task=task)
    alone = GenerationSettings(STEPS, 7.5, 64, 64, strength=strength)
    batched = GenerationSettings(STEPS, 7.5, 64, 64, strength=strength, samples_per_call=BATCHED_SAMPLES)
    one_by_one = list(iter_outputs(pipe, None, jobs, alone))
    together = generate_outputs(pipe, jobs, batched)
    again = list(iter_outputs(pipe, None, jobs, batched))
    assert len(together) == BATCHED_SAMPLES
    for single, batch, repeat in zip(one_by_one, together, again):
        # each sample starts from its own seed's noise: only the summation order differs
        np.testing.assert_allclose(batch.latent, single.latent, atol=1e-3)
        assert np.abs(batch.image.astype(int) - single.image).max() <= 2
        # the same batch twice: the same bits
        assert np.array_equal(batch.latent, repeat.latent) and np.array_equal(batch.image, repeat.image)
    # one call, distinct samples: no output is another's copy
    assert not np.array_equal(together[0].latent, together[1].latent)


def test_batches_split_jobs_in_order_with_a_last_partial_batch():
    assert [len(b) for b in batches(list(range(7)), 3)] == [3, 3, 1]
    assert [x for b in batches(list(range(7)), 3) for x in b] == list(range(7))
    with pytest.raises(HgcTuneError, match="samples_per_call=0"):
        GenerationSettings(STEPS, 7.5, 64, 64, samples_per_call=0)
