"""The executor follows the pipeline it actually runs in, and the batch and CFG state of every call, the way
an experienced diffusers user drives a pipeline: dynamic-CFG callbacks, ``from_pipe``, pipelines built from
another's components, copies. Outputs are compared bit for bit with hand-written references."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest
import torch

from hgc_tune.errors import PolicyAlreadyAppliedError, PolicyError
from hgc_tune.executor import apply_policy, policy_handle
from hgc_tune.policy import ControlNetWindow, GuidanceWindow, Policy

STEPS = 6
DEEP = ("unet.mid_block", "unet.up_blocks.0", "controlnet.mid_block")


def _blocks_policy(target) -> Policy:
    return Policy(
        target(STEPS),
        blocks={k: (0, 3) for k in DEEP},
        controlnet=ControlNetWindow((0, 1, 4), "reuse"),
        name="deep",
    )


def _cfg_off_after(step: int):
    """diffusers' documented dynamic CFG: after ``step``, drop the unconditional half and guidance."""

    def callback(pipe, i, timestep, tensors):
        if i == step:
            pipe._guidance_scale = 0.0
            tensors["prompt_embeds"] = tensors["prompt_embeds"].chunk(2)[-1]
            tensors["image"] = tensors["image"].chunk(2)[-1]
        return tensors

    return callback


def _run_dynamic_cfg(pipe, image, off_after: int) -> np.ndarray:
    return pipe(
        "a red square",
        image=image,
        num_inference_steps=STEPS,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        callback_on_step_end=_cfg_off_after(off_after),
        callback_on_step_end_tensor_inputs=["prompt_embeds", "image"],
    ).images


def test_a_dynamic_cfg_callback_is_followed_per_forward(tiny_pipe, condition_image, tiny_target):
    """CFG is switched off after step 1; the policy would truncate CFG from step 3. From step 2 on, the batch
    holds the two images' conditional halves only: truncating it would hand image 0 image 1's prediction.
    So the policy changes nothing here, and the output equals the plain pipeline's bit for bit."""
    expected = _run_dynamic_cfg(tiny_pipe, condition_image, off_after=1)
    assert not np.array_equal(expected[0], expected[1])
    with apply_policy(tiny_pipe, Policy(tiny_target(STEPS), guidance=GuidanceWindow(3))):
        got = _run_dynamic_cfg(tiny_pipe, condition_image, off_after=1)
    assert np.array_equal(got, expected)


def test_from_pipe_is_refused_and_the_policy_can_move(tiny_pipe, condition_image, tiny_target, generate):
    from diffusers import StableDiffusionControlNetPipeline

    from hgc_tune.models._loading import make_scheduler

    policy = _blocks_policy(tiny_target)
    handle = apply_policy(tiny_pipe, policy)
    try:
        expected = generate(tiny_pipe, condition_image, STEPS)
        scheduler = make_scheduler("unipc", tiny_pipe.scheduler.config)
        derived = StableDiffusionControlNetPipeline.from_pipe(tiny_pipe, scheduler=scheduler)
        sharing = StableDiffusionControlNetPipeline.from_pipe(tiny_pipe)  # shares the scheduler too
        for other in (derived, sharing):
            with pytest.raises(PolicyError, match="applied to another pipeline"):
                generate(other, condition_image, STEPS)
        # the pipeline the policy was applied to is unaffected by the refused calls
        assert np.array_equal(generate(tiny_pipe, condition_image, STEPS), expected)
    finally:
        handle.remove()
    # what the message says to do: remove it there and apply it to the new pipeline
    with apply_policy(derived, policy):
        assert np.array_equal(generate(derived, condition_image, STEPS), expected)
        assert np.array_equal(generate(derived, condition_image, STEPS), expected)


def test_a_pipeline_built_from_the_components(tiny_pipe, condition_image, tiny_target, generate):
    from diffusers import StableDiffusionControlNetPipeline

    plain = generate(tiny_pipe, condition_image, STEPS)
    twin = StableDiffusionControlNetPipeline(**tiny_pipe.components)
    policy = _blocks_policy(tiny_target)
    handle = apply_policy(tiny_pipe, policy)
    try:
        expected = generate(tiny_pipe, condition_image, STEPS)
        with pytest.raises(PolicyAlreadyAppliedError, match="applied to another pipeline .* shares"):
            apply_policy(twin, policy)
        with pytest.raises(PolicyError, match="applied to another pipeline"):
            generate(twin, condition_image, STEPS)
    finally:
        handle.remove()
    with apply_policy(twin, policy):
        assert np.array_equal(generate(twin, condition_image, STEPS), expected)
    assert np.array_equal(generate(twin, condition_image, STEPS), plain)
    assert np.array_equal(generate(tiny_pipe, condition_image, STEPS), plain)


def _pickle_round_trip(pipe):
    return pickle.loads(pickle.dumps(pipe))


@pytest.mark.parametrize("copier", [copy.deepcopy, _pickle_round_trip], ids=["deepcopy", "pickle"])
def test_copying_a_pipeline_that_carries_a_policy(tiny_pipe, condition_image, tiny_target, generate, copier):
    """The copy carries its own policy, bound to its own modules and scheduler: it generates what the
    original does, running the two interleaved changes neither, and removing the copy's policy (found with
    ``policy_handle``) makes the copy plain again while the original keeps its policy."""
    plain = generate(tiny_pipe, condition_image, STEPS)
    # a guidance window too: truncated CFG reads the guidance state of the pipeline it runs in
    policy = dataclasses.replace(_blocks_policy(tiny_target), guidance=GuidanceWindow(4))
    with apply_policy(tiny_pipe, policy) as handle:
        expected = generate(tiny_pipe, condition_image, STEPS)
        assert not np.array_equal(expected, plain)
        twin = copier(tiny_pipe)
        twin_handle = policy_handle(twin)
        assert twin_handle is not handle and twin_handle.pipe is twin and twin_handle.active
        assert policy_handle(tiny_pipe) is handle
        assert twin.unet is not tiny_pipe.unet and twin.scheduler is not tiny_pipe.scheduler
        calls = handle.context.calls
        for _ in range(2):
            assert np.array_equal(generate(twin, condition_image, STEPS), expected)
            assert np.array_equal(generate(tiny_pipe, condition_image, STEPS), expected)
        assert twin_handle.context.calls == handle.context.calls == calls + 2
        twin_handle.remove()
        assert policy_handle(twin) is None and handle.active
        assert np.array_equal(generate(twin, condition_image, STEPS), plain)
        assert np.array_equal(generate(tiny_pipe, condition_image, STEPS), expected)
    assert np.array_equal(generate(tiny_pipe, condition_image, STEPS), plain)
    # what a fresh apply to the copy gives
    with apply_policy(twin, policy):
        assert np.array_equal(generate(twin, condition_image, STEPS), expected)
    assert np.array_equal(generate(twin, condition_image, STEPS), plain)
