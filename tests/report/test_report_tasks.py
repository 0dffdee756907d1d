"""The report of an img2img / inpainting profile: the policy's samples are regenerated with the profiled init
images, masks and strength (an all-compute policy gives the references back), and the page is built."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hgc_tune.data import open_dataset
from hgc_tune.policy import full_compute_policy, target_for_pipeline
from hgc_tune.profile import profile_pipeline
from hgc_tune.report import build_report
from hgc_tune.report._build import INDEX_FILE, SUMMARY_FILE
from hgc_tune.report._samples import generate_policy_images


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_report_of_a_task_profile(task, task_pipe, tmp_path):
    pipe = task_pipe(task)
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=1)
    profile = profile_pipeline(pipe, samples, num_steps=5, strength=0.6, progress=False, model_name="tiny")
    policy = full_compute_policy(target_for_pipeline(pipe, num_steps=profile.num_steps))
    assert policy.num_steps == 3
    images = generate_policy_images(pipe, profile, policy, [0])
    assert np.array_equal(images, profile.reference_images)
    build_report(profile, tmp_path / "report", policy=policy, samples=1, pipe=pipe)
    summary = json.loads((tmp_path / "report" / SUMMARY_FILE).read_text())
    assert summary["model"]["task"] == task and summary["model"]["steps"] == 3
    page = (tmp_path / "report" / INDEX_FILE).read_text()
    assert f"3 run of num_inference_steps=5 ({task}, strength 0.6)" in page
