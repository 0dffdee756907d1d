"""The policy together with diffusers' own hooks (Pyramid Attention Broadcast): removal in any order
restores the exact prior behaviour, and combinations that cannot work are refused before any compute."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from diffusers.hooks import HookRegistry, PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

from hgc_tune.errors import PolicyError
from hgc_tune.executor import apply_policy
from hgc_tune.policy import GuidanceWindow, Policy, ReuseWindow

STEPS = 6
PAB = "pyramid_attention_broadcast"
ATTN2 = [f"unet.up_blocks.{i}.attentions.0.transformer_blocks.0.attn2" for i in (1, 2, 3)]


def _apply_pab(pipe) -> None:
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2,
        cross_attention_block_skip_range=2,
        current_timestep_callback=lambda: 500,
    )
    apply_pyramid_attention_broadcast(pipe.unet, config)


def _remove_pab(pipe) -> None:
    HookRegistry.check_if_exists_or_initialize(pipe.unet).remove_hook(PAB, recurse=True)


def _reset_pab(pipe) -> None:
    HookRegistry.check_if_exists_or_initialize(pipe.unet).reset_stateful_hooks()


def _cache_policy(target) -> Policy:
    # attn2 modules carry both a step-cache hook and PAB's hook
    return Policy(
        target(STEPS),
        blocks={"unet.mid_block": (0, 3), "unet.up_blocks.0": (0, 2, 4)},
        attention={k: (ReuseWindow(1, 4),) for k in ATTN2},
        name="cache",
    )


def _hook_names(pipe) -> set[str]:
    return {
        name
        for component in (pipe.unet, pipe.controlnet)
        for module in component.modules()
        for name in getattr(getattr(module, "_diffusers_hook", None), "hooks", {})
    }


@pytest.fixture(scope="module")
def plain(tiny_pipe, condition_image, generate):
    return generate(tiny_pipe, condition_image, STEPS)


@pytest.mark.parametrize("order", ["hgc-first", "pab-first"])
@pytest.mark.parametrize("removal", ["hgc-first", "pab-first"])
def test_removal_in_any_order_restores_the_pipeline(
    tiny_pipe, condition_image, tiny_target, generate, plain, order, removal
):
    handle = None
    try:
        if order == "hgc-first":
            handle = apply_policy(tiny_pipe, _cache_policy(tiny_target))
            _apply_pab(tiny_pipe)
        else:
            _apply_pab(tiny_pipe)
            handle = apply_policy(tiny_pipe, _cache_policy(tiny_target))
        both = generate(tiny_pipe, condition_image, STEPS)
        assert np.isfinite(both).all() and not np.array_equal(both, plain)
        _reset_pab(tiny_pipe)
        if removal == "hgc-first":
            handle.remove()
            _reset_pab(tiny_pipe)
            with_pab = generate(tiny_pipe, condition_image, STEPS)
            _remove_pab(tiny_pipe)
            assert not np.array_equal(with_pab, plain)  # PAB still acts after the policy is gone
        else:
            _remove_pab(tiny_pipe)
            alone = generate(tiny_pipe, condition_image, STEPS)
            handle.remove()
            # the policy keeps working once PAB is gone from under its hooks
            with apply_policy(tiny_pipe, _cache_policy(tiny_target)):
                assert np.array_equal(alone, generate(tiny_pipe, condition_image, STEPS))
    finally:
        if handle is not None:
            handle.remove()
        _remove_pab(tiny_pipe)
    assert _hook_names(tiny_pipe) == set()
    assert np.array_equal(generate(tiny_pipe, condition_image, STEPS), plain)


def test_pab_under_a_cfg_truncating_policy_is_refused_at_apply(tiny_pipe, condition_image, tiny_target):
    _apply_pab(tiny_pipe)
    try:
        with pytest.raises(PolicyError, match=rf"truncates CFG.*'{PAB}' on unet\..*attn1"):
            apply_policy(tiny_pipe, Policy(tiny_target(STEPS), guidance=GuidanceWindow(3), name="g"))
        assert _hook_names(tiny_pipe) == {PAB}
    finally:
        _remove_pab(tiny_pipe)


def test_pab_on_top_of_a_cfg_truncating_policy_is_refused_before_compute(
    tiny_pipe, condition_image, tiny_target, generate, plain
):
    calls = []
    probe = tiny_pipe.unet.conv_in.register_forward_pre_hook(lambda *a: calls.append(1))
    handle = apply_policy(tiny_pipe, Policy(tiny_target(STEPS), guidance=GuidanceWindow(3), name="g"))
    try:
        _apply_pab(tiny_pipe)
        with pytest.raises(PolicyError, match=rf"truncates CFG.*'{PAB}' on unet\..*attn1"):
            generate(tiny_pipe, condition_image, STEPS)
        assert calls == []  # refused when the call begins, before the denoisers ran
    finally:
        probe.remove()
        handle.remove()
        _remove_pab(tiny_pipe)
    assert np.array_equal(generate(tiny_pipe, condition_image, STEPS), plain)


def test_copying_a_policy_with_a_diffusers_hook_is_refused(tiny_pipe, tiny_target):
    """diffusers keeps its hooks' forwards in closures: a deep copy would share them with the original, so it
    is refused (pickle fails on the closures by itself)."""
    _apply_pab(tiny_pipe)
    try:
        with apply_policy(tiny_pipe, _cache_policy(tiny_target)):
            with pytest.raises(PolicyError, match=r"only without other diffusers hooks.* 'pyramid_attention"):
                copy.deepcopy(tiny_pipe)
    finally:
        _remove_pab(tiny_pipe)


def _timestep() -> int:
    return 500


def test_pickling_fails_on_diffusers_closures_with_or_without_a_policy(tiny_pipe, tiny_target):
    """pickle cannot write diffusers' hooks (their forwards are closures): it fails on them before it reaches
    the policy, exactly as it does for the same pipeline without a policy. A picklable callback is used,
    so the closure is what fails."""
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, current_timestep_callback=_timestep
    )
    apply_pyramid_attention_broadcast(tiny_pipe.unet, config)
    try:
        with pytest.raises(AttributeError, match=r"Can't (pickle|get) local object .*new_forward"):
            pickle.dumps(tiny_pipe)
        with apply_policy(tiny_pipe, _cache_policy(tiny_target)):
            with pytest.raises(AttributeError, match=r"Can't (pickle|get) local object .*new_forward"):
                pickle.dumps(tiny_pipe)
    finally:
        _remove_pab(tiny_pipe)
