"""A short search on a tiny img2img and inpainting profile (strength < 1): the calibration repeats the
references with the profiled init images and masks, the validation and test splits take their init images
from the dataset, and the policy targets the img2img / inpainting pipeline and counts the steps run."""

from __future__ import annotations

import numpy as np
import pytest
from _search_fixtures import METRIC, one_torch_thread  # noqa: F401 (an autouse fixture)

from hgc_tune.data import open_dataset
from hgc_tune.executor import apply_policy
from hgc_tune.generation import generate_output, jobs_from_samples
from hgc_tune.generation._inputs import profile_jobs, profile_settings
from hgc_tune.models._tasks import pipeline_task
from hgc_tune.profile import Profile, load_profiled_pipeline, profile_pipeline
from hgc_tune.search import SearchConfig, search_policy

INFERENCE_STEPS, STRENGTH, RUN = 8, 0.5, 4


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_search_on_a_task_profile(task, task_pipe, tmp_path):
    pipe = task_pipe(task)
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=2)
    profile = profile_pipeline(
        pipe, samples, num_steps=INFERENCE_STEPS, strength=STRENGTH, progress=False, model_name="tiny"
    )
    folder = profile.save(tmp_path / "profile")
    profile = Profile.load(folder)
    assert (profile.task, profile.num_steps, profile.num_inference_steps) == (task, RUN, INFERENCE_STEPS)
    # the profile's pipeline: the same class, rebuilt from the preset
    assert pipeline_task(load_profiled_pipeline(profile)) == task

    # the calibration jobs repeat the references exactly
    job = profile_jobs(profile, [0])[0]
    assert job.init_image is not None and (job.mask_image is not None) == (task == "inpaint")
    regenerated = generate_output(pipe, job, profile_settings(profile))
    assert np.array_equal(regenerated.image, profile.reference_images[0])

    heldout = open_dataset("shapes", condition_type="seg", split="validation", limit=1)
    assert jobs_from_samples(heldout, task=task)[0].init_image is not None
    config = SearchConfig(budget=0.5, metric=METRIC, n_trials=3, seed=1, confidence=0, calibration_samples=2)
    result = search_policy(profile, pipe, config, heldout=heldout, test=heldout, cache_dir=tmp_path)
    assert result.ok, result.message
    policy = result.chosen.policy()
    assert policy.target.pipeline_class == type(pipe).__name__
    assert policy.num_steps == RUN
    with apply_policy(pipe, policy):
        generate_output(pipe, job, profile_settings(profile))
