"""``handle.summary()``: what the last call did per module, its guidance steps, and the MACs counted while it
ran, which equal the analytic policy MACs for every mechanism."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hgc_tune.executor import apply_policy, policy_handle
from hgc_tune.macs import count_pipeline_macs
from hgc_tune.models import load_pipeline
from hgc_tune.policy import (
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    ReuseWindow,
    full_compute_policy,
    policy_macs,
    target_for_pipeline,
)

STEPS = 6
ATTN = "unet.up_blocks.2.attentions.1.transformer_blocks.0.attn2"
CN_ATTN = "controlnet.down_blocks.1.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture(scope="module")
def table(tiny_pipe):
    return count_pipeline_macs(tiny_pipe, height=64, width=64, model_name="tiny")


@pytest.fixture(scope="module")
def condition():
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _call(pipe, condition, cfg: bool = True) -> None:
    pipe(
        "a red circle",
        image=condition,
        num_inference_steps=STEPS,
        guidance_scale=7.5 if cfg else 1.0,
        output_type="latent",
    )


def _policy(pipe, name: str) -> Policy:
    target = target_for_pipeline(pipe, num_steps=STEPS)
    mechanisms = {
        "full": {},
        "blocks": {
            "blocks": {"unet.mid_block": (0, 3), "unet.up_blocks.2": (0, 2, 4), "controlnet.mid_block": (0,)}
        },
        "controlnet-reuse": {"controlnet": ControlNetWindow((0, 1, 4), "reuse")},
        "controlnet-drop": {"controlnet": ControlNetWindow((1, 2), "drop")},
        "guidance": {"guidance": GuidanceWindow(2)},
        "attention": {"attention": {ATTN: (ReuseWindow(0, 3),), CN_ATTN: (ReuseWindow(1, 5),)}},
        "mixed": {
            "blocks": {"unet.up_blocks.2": (0, 2, 4), "controlnet.down_blocks.1": (0, 3)},
            # nested inside cached blocks: called only where those compute
            "attention": {ATTN: (ReuseWindow(0, 3),), CN_ATTN: (ReuseWindow(0, 6),)},
            "controlnet": ControlNetWindow((0, 1, 3, 4), "reuse"),
            "guidance": GuidanceWindow(4),
        },
    }
    if name == "full":
        return full_compute_policy(target)
    return Policy(target, name=name, **mechanisms[name])


MECHANISMS = ["full", "blocks", "controlnet-reuse", "controlnet-drop", "guidance", "attention", "mixed"]


def _expected_counts(policy: Policy) -> dict[str, dict[str, int]]:
    """The schedule read off the policy: a module is called at a step where every scheduled module around
    it computes; there it computes if the step is in its compute set, else it reuses (a whole ControlNet
    outside a ``drop`` window drops)."""
    sets = {"controlnet": tuple(range(STEPS)), **policy.compute_sets()}
    windows = policy.controlnet_windows
    out = {}
    for key, steps in sets.items():
        around = [k for k in sets if key.startswith(k + ".")]
        counts = {"computed": 0, "reused": 0, "dropped": 0}
        for s in range(STEPS):
            if not all(s in sets[k] for k in around):
                continue
            if s in steps:
                counts["computed"] += 1
            elif key in windows and windows[key].mode == "drop":
                counts["dropped"] += 1
            else:
                counts["reused"] += 1
        out[key] = counts
    return out


@pytest.mark.parametrize("name", MECHANISMS)
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_counted_macs_equal_the_analytic_policy_macs(tiny_pipe, table, condition, name, cfg):
    policy = _policy(tiny_pipe, name)
    with apply_policy(tiny_pipe, policy, count_macs=True) as handle:
        _call(tiny_pipe, condition, cfg)
        summary = handle.summary()
    assert summary.macs is not None
    for convention in ("paper", "complete"):
        analytic = policy_macs(policy, table, cfg=cfg, convention=convention)
        counted = summary.macs[convention]
        assert counted.executed_total == analytic["policy"], (name, convention)
        assert counted.full_total == analytic["full"]
        assert dict(counted.executed) == {
            "controlnet": analytic["policy.controlnet"],
            "unet": analytic["policy.unet"],
        }
        assert counted.reduction == pytest.approx(analytic["reduction"])
    saves = name != "full" and (cfg or name != "guidance")  # without CFG a guidance window saves nothing
    assert (summary.macs["paper"].reduction > 0) == saves


@pytest.mark.parametrize("name", MECHANISMS)
def test_module_counts_and_guidance_steps_follow_the_policy_schedule(tiny_pipe, condition, name):
    policy = _policy(tiny_pipe, name)
    with apply_policy(tiny_pipe, policy) as handle:
        _call(tiny_pipe, condition)
        summary = handle.summary()
    assert {key: counts.to_dict() for key, counts in summary.modules.items()} == _expected_counts(policy)
    assert "controlnet" in summary.modules  # the whole ControlNet is always reported
    cfg_until = policy.guidance.cfg_until if policy.guidance else STEPS
    assert (summary.steps, summary.cfg_steps, summary.cfg_truncated_steps) == (
        STEPS,
        cfg_until,
        STEPS - cfg_until,
    )
    assert summary.macs is None  # not counted without count_macs=True


def test_the_summary_is_of_the_last_call_only(tiny_pipe, table, condition):
    policy = _policy(tiny_pipe, "mixed")
    with apply_policy(tiny_pipe, policy, count_macs=True) as handle:
        before = handle.summary()
        _call(tiny_pipe, condition)
        first = handle.summary()
        _call(tiny_pipe, condition, cfg=False)
        second = handle.summary()
    assert (before.steps, before.macs) == (0, None)
    assert all(c.computed == c.reused == c.dropped == 0 for c in before.modules.values())
    assert first.modules == second.modules  # reset at each call, not added up
    assert (first.cfg_steps, first.cfg_truncated_steps) == (4, 2)
    assert (second.steps, second.cfg_steps, second.cfg_truncated_steps) == (STEPS, 0, 0)
    assert first.macs is not None and second.macs is not None
    assert second.macs["paper"].executed_total == policy_macs(policy, table, cfg=False)["policy"]
    assert second.macs["paper"].executed_total < first.macs["paper"].executed_total
    # read after the `with` block: the thread's last call, kept when the policy was removed
    assert handle.summary() == second


def test_to_dict_is_json_ready(tiny_pipe, condition):
    with apply_policy(tiny_pipe, _policy(tiny_pipe, "controlnet-drop"), count_macs=True) as handle:
        _call(tiny_pipe, condition)
    data = json.loads(json.dumps(handle.summary().to_dict()))
    assert data["policy"] == "controlnet-drop" and data["steps"] == STEPS
    assert data["modules"]["controlnet"] == {"computed": 2, "reused": 0, "dropped": STEPS - 2}
    assert data["guidance"] == {"cfg_steps": STEPS, "cfg_truncated_steps": 0}
    paper = data["macs"]["paper"]
    assert paper["executed"] == sum(paper["executed_by_denoiser"].values()) < paper["full"]


def _torch_hooks(pipe) -> int:
    return sum(
        len(module._forward_hooks) + len(module._forward_pre_hooks)
        for component in ("unet", "controlnet")
        for module in getattr(pipe, component).modules()
    )


def test_counting_leaves_no_hook_and_changes_no_output(tiny_pipe, condition):
    policy = _policy(tiny_pipe, "mixed")
    hooks = _torch_hooks(tiny_pipe)
    outputs = []
    for count_macs in (False, True):
        with apply_policy(tiny_pipe, policy, count_macs=count_macs):
            outputs.append(
                tiny_pipe(
                    "a red circle",
                    image=condition,
                    num_inference_steps=STEPS,
                    output_type="latent",
                    generator=torch.Generator().manual_seed(0),
                ).images
            )
    assert torch.equal(*outputs)
    assert _torch_hooks(tiny_pipe) == hooks


def test_a_copied_pipeline_counts_its_own_calls(tiny_pipe, condition):
    policy = _policy(tiny_pipe, "blocks")
    handle = apply_policy(tiny_pipe, policy, count_macs=True)
    try:
        _call(tiny_pipe, condition)
        handle.summary()  # builds the MAC table, which the copy leaves behind
        twin = copy.deepcopy(tiny_pipe)
        twin_handle = policy_handle(twin)
        _call(twin, condition, cfg=False)
        assert twin_handle.summary().cfg_steps == 0
        twin_handle.remove()
        summary = handle.summary()
        assert summary.cfg_steps == STEPS  # the original's last call, untouched by the copy's
        assert summary.macs is not None and summary.macs["paper"].executed_total > 0
    finally:
        handle.remove()


def test_several_controlnets_each_report_their_window_and_the_macs_match():
    pipe = load_pipeline("tiny", condition="seg,depth")
    target = target_for_pipeline(pipe, num_steps=5, condition_type="seg,depth")
    policy = Policy(
        target,
        blocks={"controlnet.nets.1.mid_block": (0, 1, 3), "unet.mid_block": (0, 3)},
        controlnets={
            "controlnet.nets.0": ControlNetWindow((0, 1), "reuse"),
            "controlnet.nets.1": ControlNetWindow((1, 2, 3), "drop"),
        },
        guidance=GuidanceWindow(3),
        name="two-nets",
    )
    images = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in (0, 1)]
    with apply_policy(pipe, policy, condition_type="seg,depth", count_macs=True) as handle:
        pipe("a red circle", image=images, num_inference_steps=5, output_type="latent")
    summary = handle.summary()
    counts = {key: c.to_dict() for key, c in summary.modules.items()}
    assert counts["controlnet.nets.0"] == {"computed": 2, "reused": 3, "dropped": 0}
    assert counts["controlnet.nets.1"] == {"computed": 3, "reused": 0, "dropped": 2}
    # called at steps 1-3 only (its net drops elsewhere): computes at 1 and 3, reuses at 2
    assert counts["controlnet.nets.1.mid_block"] == {"computed": 2, "reused": 1, "dropped": 0}
    assert (summary.cfg_steps, summary.cfg_truncated_steps) == (3, 2)
    table = count_pipeline_macs(pipe, height=64, width=64)
    assert summary.macs is not None
    for convention in ("paper", "complete"):
        analytic = policy_macs(policy, table, convention=convention)
        assert summary.macs[convention].executed_total == analytic["policy"]
        assert summary.macs[convention].full_total == analytic["full"]
