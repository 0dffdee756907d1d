"""Analytic policy MACs agree with the counted MACs on img2img and inpainting pipelines with strength < 1,
whose policies count only the steps a call runs."""

from __future__ import annotations

import pytest
import torch

from hgc_tune.executor import apply_policy
from hgc_tune.macs import count_executed_macs, count_pipeline_macs
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.models._tasks import generation_inputs, steps_run
from hgc_tune.policy import (
    ControlNetWindow,
    Policy,
    full_compute_policy,
    peer_policy,
    policy_macs,
    target_for_pipeline,
)

INFERENCE_STEPS, STRENGTH = 8, 0.7  # runs 5 steps


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_analytic_policy_macs_match_counted_macs(task, task_pipe, condition_image, init_image):
    pipe = task_pipe(task)
    run = steps_run(INFERENCE_STEPS, STRENGTH)
    assert run == 5
    table = count_pipeline_macs(pipe, height=64, width=64, model_name="tiny")
    target = target_for_pipeline(pipe, num_steps=run)
    keys = cacheable_module_keys(pipe)
    policies = [
        full_compute_policy(target),
        peer_policy("deepcache-n2-b0", target, keys),
        Policy(
            target,
            blocks={"unet.mid_block": (0, 3), "controlnet.down_blocks.3": (0, 2)},
            controlnet=ControlNetWindow((0, 1, 4), "reuse"),
            name="mixed",
        ),
    ]
    reductions = set()
    for policy in policies:
        with (
            apply_policy(pipe, policy),
            count_executed_macs(pipe, table, "paper") as paper,
            count_executed_macs(pipe, table, "complete") as complete,
        ):
            pipe(
                "a red circle",
                **generation_inputs(pipe, condition_image, init_image=init_image, strength=STRENGTH),
                num_inference_steps=INFERENCE_STEPS,
                guidance_scale=7.5,
                output_type="latent",
            )
        for convention, counted in (("paper", paper), ("complete", complete)):
            analytic = policy_macs(policy, table, cfg=True, convention=convention)
            assert counted.total == pytest.approx(analytic["policy"], rel=0.005), (policy.name, convention)
        reductions.add(round(analytic["reduction"], 6))
    assert len(reductions) == 3


def test_a_9_channel_inpainting_unet(init_image, condition_image):
    """An inpainting checkpoint's U-Net takes 9 channels (latents, mask, masked-image latents) and its
    ControlNet the 4 latent channels: the MAC table counts each at its own width, and analytic == counted."""
    from diffusers import UNet2DConditionModel

    from hgc_tune.models import load_pipeline

    pipe = load_pipeline("tiny", task="inpaint")
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})
    assert (pipe.unet.config.in_channels, pipe.controlnet.config.in_channels) == (9, 4)
    table = count_pipeline_macs(pipe, height=64, width=64, model_name="tiny-inpaint")
    target = target_for_pipeline(pipe, num_steps=steps_run(INFERENCE_STEPS, STRENGTH))
    policy = peer_policy("deepcache-n2-b0", target, cacheable_module_keys(pipe))
    with apply_policy(pipe, policy), count_executed_macs(pipe, table, "paper") as paper:
        pipe(
            "a red circle",
            **generation_inputs(pipe, condition_image, init_image=init_image, strength=STRENGTH),
            num_inference_steps=INFERENCE_STEPS,
            output_type="latent",
        )
    assert paper.total == pytest.approx(policy_macs(policy, table, cfg=True)["policy"], rel=0.005)
