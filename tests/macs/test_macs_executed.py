"""Analytic policy MACs agree with the MACs counted while the policy really runs."""

from __future__ import annotations

import pytest
import torch

from hgc_tune.executor import apply_policy
from hgc_tune.macs import count_executed_macs, count_pipeline_macs
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.policy import (
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    ReuseWindow,
    full_compute_policy,
    peer_policy,
    policy_macs,
    target_for_pipeline,
)

STEPS = 6


@pytest.fixture(scope="module")
def table(tiny_pipe):
    return count_pipeline_macs(tiny_pipe, height=64, width=64, model_name="tiny")


def _policies(pipe) -> list[Policy]:
    target = target_for_pipeline(pipe, num_steps=STEPS)
    keys = cacheable_module_keys(pipe)
    attn = "unet.up_blocks.2.attentions.1.transformer_blocks.0.attn2"
    return [
        full_compute_policy(target),
        peer_policy("deepcache-n3-b0", target, keys),
        peer_policy("tgate-g3-cfg", target, keys),  # cross-attention reuse + truncated CFG
        peer_policy("cnwin-k2-drop", target, keys),  # dropped ControlNet
        Policy(
            target,
            blocks={
                "unet.mid_block": (0, 3),
                "unet.up_blocks.2": (0, 2, 4),
                "controlnet.down_blocks.3": (0,),
            },
            attention={attn: (ReuseWindow(0, 3),)},  # nested inside a cached block
            controlnet=ControlNetWindow((0, 1, 4), "reuse"),
            guidance=GuidanceWindow(2),
            name="mixed",
        ),
    ]


@pytest.mark.parametrize("cfg", [True, False])
def test_analytic_policy_macs_match_counted_macs(tiny_pipe, table, cfg):
    condition = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reductions = set()
    for policy in _policies(tiny_pipe):
        with (
            apply_policy(tiny_pipe, policy),
            count_executed_macs(tiny_pipe, table, "paper") as paper,
            count_executed_macs(tiny_pipe, table, "complete") as complete,
        ):
            tiny_pipe(
                "a red circle",
                image=condition,
                num_inference_steps=STEPS,
                guidance_scale=7.5 if cfg else 1.0,
                output_type="latent",
            )
        for convention, counted in (("paper", paper), ("complete", complete)):
            analytic = policy_macs(policy, table, cfg=cfg, convention=convention)
            assert counted.total == pytest.approx(analytic["policy"], rel=0.005), (policy.name, convention)
        reductions.add(round(analytic["reduction"], 6))
    assert len(reductions) == 5  # five genuinely different policies
