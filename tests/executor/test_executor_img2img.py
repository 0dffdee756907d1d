"""The executor on ``StableDiffusionControlNetImg2ImgPipeline`` (cases in ``_executor_task_cases.py``)."""

from __future__ import annotations

import pytest
from _executor_task_cases import (  # noqa: F401 - pytest collects the imported fixtures and tests
    baseline,
    pipe,
    test_a_policy_for_all_steps_is_refused_on_a_call_that_runs_fewer,
    test_a_text2img_policy_is_refused_with_nothing_applied,
    test_all_compute_policy_is_bit_identical,
    test_removing_a_policy_restores_plain_generation,
    test_target_names_the_task_pipeline_and_the_steps_run,
)


@pytest.fixture(scope="module")
def task():
    return "img2img"
