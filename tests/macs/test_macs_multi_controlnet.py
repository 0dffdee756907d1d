"""MACs with several ControlNets: the table has each net's modules, and analytic policy MACs agree with the
MACs counted while the policy runs on a two-ControlNet pipeline."""

from __future__ import annotations

import pytest
import torch

from hgc_tune.executor import apply_policy
from hgc_tune.macs import count_executed_macs, count_pipeline_macs
from hgc_tune.models import load_pipeline
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

STEPS = 5


@pytest.fixture(scope="module")
def multi_pipe():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_pipeline("tiny", condition="seg,depth")


@pytest.fixture(scope="module")
def table(multi_pipe):
    return count_pipeline_macs(multi_pipe, height=64, width=64, model_name="tiny")


def test_the_table_counts_each_controlnet(multi_pipe, table, tiny_pipe) -> None:
    single = count_pipeline_macs(tiny_pipe, height=64, width=64, model_name="tiny")
    for convention in ("paper", "complete"):
        one = single.macs("controlnet", convention)
        assert table.macs("controlnet.nets.0", convention) == one
        assert table.macs("controlnet", convention) == 2 * one
        assert table.macs("controlnet.nets.1.mid_block", convention) == single.macs(
            "controlnet.mid_block", convention
        )


def _policies(pipe) -> list[Policy]:
    target = target_for_pipeline(pipe, num_steps=STEPS, condition_type="seg,depth")
    keys = cacheable_module_keys(pipe)
    attn = "controlnet.nets.1.down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    return [
        full_compute_policy(target),
        peer_policy("deepcache-n3-b0", target, keys),
        peer_policy("cnwin-k2-drop", target, keys),
        Policy(
            target,
            blocks={
                "unet.mid_block": (0, 3),
                "controlnet.nets.0.down_blocks.3": (0,),
                "controlnet.nets.1.mid_block": (0, 2),
            },
            attention={attn: (ReuseWindow(0, 3),)},
            controlnets={
                "controlnet.nets.0": ControlNetWindow((0, 1, 4), "reuse"),
                "controlnet.nets.1": ControlNetWindow((1, 2), "drop"),
            },
            guidance=GuidanceWindow(3),
            name="mixed",
        ),
    ]


def test_analytic_policy_macs_match_counted_macs_with_two_controlnets(multi_pipe, table) -> None:
    gen = torch.Generator().manual_seed(0)
    conditions = [torch.rand(1, 3, 64, 64, generator=gen) for _ in range(2)]
    reductions = set()
    for policy in _policies(multi_pipe):
        with (
            apply_policy(multi_pipe, policy),
            count_executed_macs(multi_pipe, table, "paper") as paper,
            count_executed_macs(multi_pipe, table, "complete") as complete,
        ):
            multi_pipe("a red circle", image=conditions, num_inference_steps=STEPS, output_type="latent")
        for convention, counted in (("paper", paper), ("complete", complete)):
            analytic = policy_macs(policy, table, convention=convention)
            assert counted.total == pytest.approx(analytic["policy"], rel=0.005), (policy.name, convention)
        reductions.add(round(analytic["reduction"], 6))
    assert len(reductions) == 4
