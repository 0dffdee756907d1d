"""The run context of img2img and inpainting calls counts only the steps run (strength < 1), with every
scheduler (whether or not it has ``set_begin_index``), and leaves the pipeline as it was when released."""

from __future__ import annotations

import copy

import pytest
import torch

from hgc_tune.models import load_pipeline
from hgc_tune.models._tasks import generation_inputs
from hgc_tune.runtime import attach_run_context, release_run_context, run_context


def _run(pipe, condition, init, seen: list) -> None:
    def on_step_end(pipeline, i, t, tensors):
        context = run_context(pipeline)
        seen.append((i, context.step, context.num_steps))
        return {}

    pipe(
        "a red square",
        **generation_inputs(pipe, condition, init_image=init, strength=0.6),
        num_inference_steps=5,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        callback_on_step_end=on_step_end,
    )


@pytest.mark.parametrize(
    ("task", "scheduler"),
    [
        ("img2img", "ddim"),
        ("img2img", "euler"),
        ("img2img", "pndm"),
        ("inpaint", "unipc"),
        ("inpaint", "dpm"),
    ],
)
def test_the_steps_run_are_counted(task, scheduler, condition_image, init_image):
    pipe = load_pipeline("tiny", task=task, scheduler=scheduler)
    context = attach_run_context(pipe)
    seen: list = []
    _run(pipe, condition_image, init_image, seen)
    # the steps run: 5 steps at strength 0.6 run 3 with a first-order scheduler; PNDM's Runge-Kutta warm-up
    # adds timesteps (and diffusers cuts them the same way). The callback runs after the scheduler stepped.
    run = len(seen)
    assert run == (12 if scheduler == "pndm" else 3)
    assert seen == [(i, i + 1, run) for i in range(run)]
    assert context.scheduled_steps - context.skipped_steps == run and context.strength == 0.6
    twin = copy.deepcopy(pipe)  # the copy's context follows the copy's calls
    twin_seen: list = []
    _run(twin, condition_image, init_image, twin_seen)
    assert twin_seen == seen and run_context(twin) is not context
    release_run_context(pipe)
    assert "get_timesteps" not in vars(pipe) and "set_timesteps" not in vars(pipe.scheduler)
