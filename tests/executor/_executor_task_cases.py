"""The executor's cases for img2img and inpainting pipelines, run by ``test_executor_img2img.py`` and
``test_executor_inpaint.py`` (each defines the ``task`` fixture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hgc_tune.errors import PolicyMismatchError, StepCountMismatchError
from hgc_tune.executor import apply_policy, policy_handle
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.models._tasks import generation_inputs
from hgc_tune.policy import Policy, full_compute_policy, peer_policy, target_for_pipeline

# 5 steps at strength 0.6 run 3 (diffusers' get_timesteps: min(int(5 * 0.6), 5)).
INFERENCE_STEPS, STRENGTH, RUN = 5, 0.6, 3


def run(pipe, condition, init, steps: int = INFERENCE_STEPS, strength: float = STRENGTH) -> np.ndarray:
    return pipe(
        "a red square",
        **generation_inputs(pipe, condition, init_image=init, strength=strength),
        num_inference_steps=steps,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


def hooked_modules(pipe) -> list[str]:
    return [
        f"{component}.{name}"
        for component in ("unet", "controlnet")
        for name, module in getattr(pipe, component).named_modules()
        if getattr(getattr(module, "_diffusers_hook", None), "hooks", None)
    ]


@pytest.fixture
def pipe(task, task_pipe):
    pipe = task_pipe(task)
    yield pipe
    handle = policy_handle(pipe)
    if handle is not None:
        handle.remove()


@pytest.fixture
def baseline(task, task_pipe, condition_image, init_image):
    return run(task_pipe(task), condition_image, init_image)


def test_target_names_the_task_pipeline_and_the_steps_run(pipe, task):
    target = target_for_pipeline(pipe, num_steps=RUN)
    expected = {"img2img": "StableDiffusionControlNetImg2ImgPipeline"}.get(
        task, "StableDiffusionControlNetInpaintPipeline"
    )
    assert target.pipeline_class == type(pipe).__name__ == expected


def test_all_compute_policy_is_bit_identical(pipe, condition_image, init_image, baseline):
    policy = full_compute_policy(target_for_pipeline(pipe, num_steps=RUN))
    with apply_policy(pipe, policy):
        assert np.array_equal(run(pipe, condition_image, init_image), baseline)


def test_removing_a_policy_restores_plain_generation(pipe, condition_image, init_image, baseline):
    policy = peer_policy(
        "deepcache-n2-b0", target_for_pipeline(pipe, num_steps=RUN), cacheable_module_keys(pipe)
    )
    handle = apply_policy(pipe, policy)
    cached = run(pipe, condition_image, init_image)
    # the policy ran its 3 steps: the deep blocks computed at steps 0 and 2 only
    assert {hook.state.computed for hook in handle.step_hooks.values()} == {2}
    assert not np.array_equal(cached, baseline)
    handle.remove()
    assert hooked_modules(pipe) == []
    assert np.array_equal(run(pipe, condition_image, init_image), baseline)


def test_a_policy_for_all_steps_is_refused_on_a_call_that_runs_fewer(pipe, condition_image, init_image):
    policy = Policy(target_for_pipeline(pipe, num_steps=20), blocks={"unet.mid_block": (0, 5)}, name="p20")
    ran: list[str] = []
    counters = [
        module.register_forward_pre_hook(lambda m, a, name=name: ran.append(name))
        for name, module in (("unet", pipe.unet.conv_in), ("controlnet", pipe.controlnet.conv_in))
    ]
    handle = apply_policy(pipe, policy)
    try:
        with pytest.raises(StepCountMismatchError) as raised:
            run(pipe, condition_image, init_image, steps=20, strength=0.7)
        assert str(raised.value) == (
            "policy 'p20' was made for 20 denoising steps, but this call runs 14 (num_inference_steps=20, "
            "strength=0.7: the first 6 of its 20 timesteps are skipped, and only the steps run count); at "
            "strength=0.7, call it with num_inference_steps=29."
        )
        assert ran == []  # refused before any denoiser computed
        assert all(hook.state.output is None for hook in handle.step_hooks.values())
        # the refusal leaves the policy as it was applied: a call that runs 20 steps uses it
        assert handle.active and handle.context.num_steps == 14
    finally:
        handle.remove()
        for counter in counters:
            counter.remove()
    assert hooked_modules(pipe) == []


def test_a_text2img_policy_is_refused_with_nothing_applied(pipe, tiny_pipe):
    policy = full_compute_policy(target_for_pipeline(tiny_pipe, num_steps=RUN))
    assert policy.target.pipeline_class == "StableDiffusionControlNetPipeline"
    with pytest.raises(PolicyMismatchError) as raised:
        apply_policy(pipe, policy)
    assert (
        "pipeline_class: policy has 'StableDiffusionControlNetPipeline', pipeline has "
        f"'{type(pipe).__name__}'"
    ) in str(raised.value)
    assert hooked_modules(pipe) == []
    assert not hasattr(pipe, "_hgc_run_context") and policy_handle(pipe) is None
