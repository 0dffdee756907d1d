"""The invariant every fidelity figure rests on: a policy that computes everything reproduces the profile's
references bit for bit, whichever caller generates it (the profiler, a search trial, the report), because
they all generate through :mod:`hgc_tune.generation`."""

from __future__ import annotations

import numpy as np
import pytest

from hgc_tune.data import open_dataset
from hgc_tune.generation import GenerationSettings, generate_output, iter_outputs, jobs_from_samples
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
