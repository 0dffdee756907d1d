"""Conformance suite every cache technique of the executor passes, on the tiny offline pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from hgc_tune.errors import PolicyAlreadyAppliedError
from hgc_tune.executor import apply_policy
from hgc_tune.policy import ControlNetWindow, GuidanceWindow, Policy, ReuseWindow

STEPS = 6
DEEP_UNET = [
    "unet.down_blocks.2",
    "unet.down_blocks.3",
    "unet.mid_block",
    "unet.up_blocks.0",
    "unet.up_blocks.1",
]
DEEP_CONTROLNET = ["controlnet.down_blocks.2", "controlnet.down_blocks.3", "controlnet.mid_block"]
ATTN2 = "unet.up_blocks.3.attentions.0.transformer_blocks.0.attn2"


def _techniques(target) -> dict[str, Policy]:
    t = target(STEPS)
    return {
        "unet_blocks": Policy(t, blocks={k: (0, 3) for k in DEEP_UNET}, name="unet_blocks"),
        "controlnet_blocks": Policy(
            t, blocks={k: (0, 2, 4) for k in DEEP_CONTROLNET}, name="controlnet_blocks"
        ),
        "attention": Policy(t, attention={ATTN2: (ReuseWindow(1, STEPS),)}, name="attention"),
        "controlnet_reuse": Policy(t, controlnet=ControlNetWindow((0, 2, 4), "reuse"), name="cn_reuse"),
        "controlnet_drop": Policy(t, controlnet=ControlNetWindow((0, 1), "drop"), name="cn_drop"),
        "guidance": Policy(t, guidance=GuidanceWindow(3), name="guidance"),
    }


@pytest.fixture(scope="module")
def baselines(tiny_pipe, condition_image, generate):
    return {g: generate(tiny_pipe, condition_image, STEPS, g) for g in (7.5, 1.0)}


def test_all_compute_policy_is_bit_identical_to_no_policy(
    tiny_pipe, condition_image, tiny_target, baselines, generate
):
    with apply_policy(tiny_pipe, Policy(tiny_target(STEPS))):
        for g, expected in baselines.items():
            assert np.array_equal(generate(tiny_pipe, condition_image, STEPS, g), expected)


@pytest.mark.parametrize(
    "technique",
    ["unet_blocks", "controlnet_blocks", "attention", "controlnet_reuse", "controlnet_drop", "guidance"],
)
def test_technique_conformance(technique, tiny_pipe, condition_image, tiny_target, baselines, generate):
    policy = _techniques(tiny_target)[technique]
    handle = apply_policy(tiny_pipe, policy)
    try:
        with pytest.raises(PolicyAlreadyAppliedError):
            apply_policy(tiny_pipe, policy)
        # two calls in a row, CFG on then off (guidance truncation only acts with CFG)
        for g in (7.5, 1.0, 7.5):
            cached = generate(tiny_pipe, condition_image, STEPS, g)
            assert np.isfinite(cached).all()
            if technique != "guidance" or g > 1:
                assert not np.array_equal(cached, baselines[g]), f"{technique} changed nothing at g={g}"
            else:
                assert np.array_equal(cached, baselines[g])
    finally:
        handle.remove()
    handle.remove()  # idempotent
    for g, expected in baselines.items():
        assert np.array_equal(generate(tiny_pipe, condition_image, STEPS, g), expected)
    # after removal a policy can be applied again
    apply_policy(tiny_pipe, policy).remove()


def test_a_scheduler_replaced_after_apply_is_refused(
    tiny_pipe, condition_image, tiny_target, baselines, generate
):
    from hgc_tune.errors import PolicyError
    from hgc_tune.models._loading import make_scheduler

    original = tiny_pipe.scheduler
    handle = apply_policy(tiny_pipe, _techniques(tiny_target)["unet_blocks"])
    try:
        tiny_pipe.scheduler = make_scheduler("unipc", original.config)
        with pytest.raises(PolicyError, match="scheduler was replaced"):
            generate(tiny_pipe, condition_image, STEPS)
    finally:
        tiny_pipe.scheduler = original
        handle.remove()
    assert np.array_equal(generate(tiny_pipe, condition_image, STEPS), baselines[7.5])


def test_diffusers_reset_of_stateful_hooks_reaches_the_policy(
    tiny_pipe, condition_image, tiny_target, generate
):
    from diffusers.hooks import HookRegistry

    policy = Policy(
        tiny_target(STEPS),
        blocks={k: (0, 3) for k in [*DEEP_UNET, *DEEP_CONTROLNET]},
        controlnet=ControlNetWindow((0, 2, 4), "reuse"),
    )
    with apply_policy(tiny_pipe, policy) as handle:
        generate(tiny_pipe, condition_image, STEPS)
        hooks = [*handle.step_hooks.values(), handle.controlnet_hook]
        assert all(h._is_stateful for h in hooks)
        assert all(h.state.output is not None for h in handle.step_hooks.values())
        for denoiser in (tiny_pipe.unet, tiny_pipe.controlnet):
            HookRegistry.check_if_exists_or_initialize(denoiser).reset_stateful_hooks()
        assert all(h.state.output is None for h in handle.step_hooks.values())
        assert handle.controlnet_hook.state.residuals is None
