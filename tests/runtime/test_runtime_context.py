"""The run context follows the pipeline call it is in: its CFG state is read live, and the pipeline that runs
the denoisers is found from the call stack."""

from __future__ import annotations

import torch

from hgc_tune.runtime import attach_run_context, release_run_context
from hgc_tune.runtime._context import calling_pipeline

STEPS = 3


def test_cfg_is_read_live_and_the_calling_pipeline_is_found(tiny_pipe, condition_image):
    context = attach_run_context(tiny_pipe)
    seen = []

    def callback(pipe, i, timestep, tensors):
        seen.append((i, context.cfg, calling_pipeline() is pipe))
        if i == 0:  # diffusers' dynamic CFG: guidance off from step 1 on
            pipe._guidance_scale = 0.0
            tensors["prompt_embeds"] = tensors["prompt_embeds"].chunk(2)[-1]
            tensors["image"] = tensors["image"].chunk(2)[-1]
        return tensors

    try:
        tiny_pipe(
            "a red square",
            image=condition_image,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["prompt_embeds", "image"],
        )
    finally:
        release_run_context(tiny_pipe)
    assert seen == [(0, True, True), (1, False, True), (2, False, True)]
    assert calling_pipeline() is None  # outside any pipeline call
