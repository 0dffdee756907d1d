"""Policies that do not fit the pipeline: each error names the field and both values, and nothing is
applied when it fails."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hgc_tune.errors import HgcTuneError, PolicyMismatchError, StepCountMismatchError
from hgc_tune.executor import apply_policy
from hgc_tune.policy import Policy

STEPS = 4


def _hooked_modules(pipe) -> list[str]:
    return [
        f"{component}.{name}"
        for component in ("unet", "controlnet")
        for name, module in getattr(pipe, component).named_modules()
        if getattr(getattr(module, "_diffusers_hook", None), "hooks", None)
    ]


def _assert_nothing_applied(pipe, policy: Policy) -> None:
    assert _hooked_modules(pipe) == []
    assert not hasattr(pipe, "_hgc_run_context")
    apply_policy(pipe, policy).remove()  # no half-applied policy blocks the next one


@pytest.fixture
def valid(tiny_target):
    return Policy(tiny_target(STEPS), blocks={"unet.mid_block": (0, 2)}, name="valid")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fingerprint", "ffffffffffffffff"),
        ("pipeline_class", "StableDiffusionXLControlNetPipeline"),
        ("unet_class", "UNet2DModel"),
        ("controlnet_class", "MultiControlNetModel"),
        ("scheduler", "DDIMScheduler"),
    ],
)
def test_target_mismatch_names_the_field_and_both_values(tiny_pipe, condition_image, valid, field, value):
    policy = dataclasses.replace(valid, target=dataclasses.replace(valid.target, **{field: value}))
    with pytest.raises(PolicyMismatchError) as raised:
        apply_policy(tiny_pipe, policy)
    message = str(raised.value)
    assert f"{field}: policy has {value!r}, pipeline has " in message
    assert repr(getattr(valid.target, field)) in message  # the pipeline's value
    assert isinstance(raised.value, HgcTuneError)
    _assert_nothing_applied(tiny_pipe, valid)


@pytest.mark.parametrize("kind", ["blocks", "attention"])
def test_module_key_missing_from_the_pipeline_is_named(tiny_pipe, condition_image, valid, kind):
    from hgc_tune.policy import ReuseWindow

    if kind == "blocks":
        key = "unet.down_blocks.7"
        policy = dataclasses.replace(valid, blocks={**valid.blocks, key: (0,)})
    else:
        key = "unet.up_blocks.3.attentions.5.transformer_blocks.0.attn2"
        policy = dataclasses.replace(valid, attention={key: (ReuseWindow(1, STEPS),)})
    with pytest.raises(PolicyMismatchError, match=rf"{kind}\['{key}'\] names no cacheable module"):
        apply_policy(tiny_pipe, policy)
    _assert_nothing_applied(tiny_pipe, valid)


def test_step_count_mismatch_fails_at_call_time(tiny_pipe, condition_image, valid, generate):
    handle = apply_policy(tiny_pipe, valid)  # applying succeeds: the step count is only known per call
    try:
        with pytest.raises(
            StepCountMismatchError,
            match=r"made for 4 denoising steps, but this call runs 6 \(num_inference_steps=6\)",
        ):
            generate(tiny_pipe, condition_image, 6)
        # the error leaves the policy usable for a call with the right number of steps
        assert np.isfinite(generate(tiny_pipe, condition_image, STEPS)).all()
    finally:
        handle.remove()
    assert _hooked_modules(tiny_pipe) == []


def test_a_pipeline_with_another_scheduler_is_refused(tiny_pipe, condition_image, valid, generate):
    """``generate --scheduler ddim`` with a UniPC policy: the steps a policy reuses were chosen for its
    scheduler's trajectory, so another scheduler is refused before anything is attached."""
    from hgc_tune.models._loading import make_scheduler

    original = tiny_pipe.scheduler
    tiny_pipe.scheduler = make_scheduler("ddim", original.config)
    try:
        with pytest.raises(PolicyMismatchError) as raised:
            apply_policy(tiny_pipe, valid)
        message = str(raised.value)
        assert "scheduler: policy has 'UniPCMultistepScheduler', pipeline has 'DDIMScheduler'" in message
        assert _hooked_modules(tiny_pipe) == []
    finally:
        tiny_pipe.scheduler = original


def test_condition_type_is_checked_for_a_policy_object(tiny_pipe, condition_image, valid):
    seg = dataclasses.replace(valid, target=dataclasses.replace(valid.target, condition_type="seg"))
    with pytest.raises(PolicyMismatchError, match="condition_type: policy has 'seg', pipeline has 'depth'"):
        apply_policy(tiny_pipe, seg, condition_type="depth")
    _assert_nothing_applied(tiny_pipe, valid)
    apply_policy(tiny_pipe, seg, condition_type="seg").remove()
    apply_policy(tiny_pipe, valid, condition_type="depth").remove()  # a policy for any condition fits all


def test_check_policy_fits_is_the_one_comparison(tiny_pipe, valid):
    from hgc_tune.executor import check_policy_fits

    check_policy_fits(tiny_pipe, valid, condition_type="seg")
    other = dataclasses.replace(valid, target=dataclasses.replace(valid.target, scheduler="DDIMScheduler"))
    with pytest.raises(PolicyMismatchError, match="scheduler: policy has 'DDIMScheduler'"):
        check_policy_fits(tiny_pipe, other)
    assert _hooked_modules(tiny_pipe) == []
