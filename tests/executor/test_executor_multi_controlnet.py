"""Several ControlNets at once (diffusers' MultiControlNetModel): per-ControlNet windows and blocks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hgc_tune.errors import PolicyMismatchError
from hgc_tune.executor import apply_policy, check_policy_fits
from hgc_tune.models import load_pipeline
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.policy import (
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    dumps_policy,
    full_compute_policy,
    load_policy,
    loads_policy,
    target_for_pipeline,
)
from hgc_tune.runtime import attach_run_context, release_run_context

STEPS = 5
CONDITIONS = "seg,depth"


@pytest.fixture(scope="module")
def multi_pipe():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_pipeline("tiny", condition=CONDITIONS)


@pytest.fixture(scope="module")
def images(condition_image):
    from PIL import ImageOps

    return [condition_image, ImageOps.mirror(condition_image)]


def _run(pipe, images, steps=STEPS, **kwargs):
    return pipe(
        "a red square",
        image=images,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **kwargs,
    ).images


def _target(pipe, steps=STEPS, condition_type=CONDITIONS):
    return target_for_pipeline(pipe, num_steps=steps, condition_type=condition_type, model="tiny")


def _caching_policy(pipe) -> Policy:
    return Policy(
        _target(pipe),
        blocks={
            "unet.mid_block": (0, 2),
            "controlnet.nets.1.mid_block": (0, 3),
            "controlnet.nets.0.down_blocks.3": (0,),
        },
        controlnets={
            "controlnet.nets.0": ControlNetWindow((0, 2), "reuse"),
            "controlnet.nets.1": ControlNetWindow((0, 1, 2), "drop"),
        },
        name="multi",
    )


def test_the_layout_keys_each_controlnet(multi_pipe) -> None:
    keys = list(cacheable_module_keys(multi_pipe))
    assert type(multi_pipe.controlnet).__name__ == "MultiControlNetModel"
    for i in (0, 1):
        assert f"controlnet.nets.{i}" in keys
        assert f"controlnet.nets.{i}.mid_block" in keys
        assert f"controlnet.nets.{i}.down_blocks.0.attentions.0.transformer_blocks.0.attn2" in keys
    assert "controlnet" not in keys
    target = _target(multi_pipe)
    assert [c.condition_type for c in target.controlnets] == ["seg", "depth"]
    assert target.controlnets[0].fingerprint == target.controlnets[1].fingerprint  # same architecture
    assert target.controlnet_keys() == ["controlnet.nets.0", "controlnet.nets.1"]


def test_all_compute_is_bit_identical_and_remove_restores(multi_pipe, images) -> None:
    plain = _run(multi_pipe, images)
    every = tuple(range(STEPS))
    hooked = Policy(
        _target(multi_pipe),
        blocks={
            k: every
            for k in cacheable_module_keys(multi_pipe)
            if not k.endswith("attn2") and k.count(".") > 2
        }
        | {"unet.mid_block": every},
        controlnets={k: ControlNetWindow(every) for k in ("controlnet.nets.0", "controlnet.nets.1")},
    )
    for policy in (full_compute_policy(_target(multi_pipe)), hooked):
        with apply_policy(multi_pipe, policy, condition_type=CONDITIONS):
            assert np.array_equal(_run(multi_pipe, images), plain)
    with apply_policy(multi_pipe, _caching_policy(multi_pipe)):
        cached = _run(multi_pipe, images)
    assert not np.array_equal(cached, plain)
    assert np.array_equal(_run(multi_pipe, images), plain)


def test_each_controlnet_follows_its_own_window(multi_pipe, images) -> None:
    calls = {0: 0, 1: 0}
    nets = multi_pipe.controlnet.nets
    handles = [
        nets[i].conv_in.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i in (0, 1)
    ]
    try:
        with apply_policy(multi_pipe, _caching_policy(multi_pipe)) as handle:
            _run(multi_pipe, images)
            states = {k: h.state for k, h in handle.controlnet_hooks.items()}
    finally:
        for h in handles:
            h.remove()
    assert calls == {0: 2, 1: 3}
    assert (states["controlnet.nets.0"].computed, states["controlnet.nets.0"].reused) == (2, 3)
    assert (states["controlnet.nets.1"].computed, states["controlnet.nets.1"].dropped) == (3, 2)


def test_reused_residuals_are_not_changed_by_the_sum(multi_pipe, images) -> None:
    """MultiControlNetModel adds the second net's mid residual into the first net's in place: the first
    net's kept residuals must stay its own."""
    cn = multi_pipe.controlnet
    gen = torch.Generator().manual_seed(1)
    samples = [torch.randn(2, 4, 32, 32, generator=gen) for _ in range(2)]
    text = torch.randn(2, 77, 32, generator=gen)
    conds = [torch.randn(2, 3, 64, 64, generator=gen) for _ in range(2)]

    def call(sample, model=cn, **kw):
        return model(sample, 500, encoder_hidden_states=text, **kw, return_dict=False)

    with torch.no_grad():
        first0 = call(samples[0], cn.nets[0], controlnet_cond=conds[0])[1].clone()
        second1 = call(samples[1], cn.nets[1], controlnet_cond=conds[1])[1].clone()
        policy = Policy(
            _target(multi_pipe, steps=2),
            controlnets={"controlnet.nets.0": ControlNetWindow((0,), "reuse")},
        )
        handle = apply_policy(multi_pipe, policy)
        context = attach_run_context(multi_pipe)
        try:
            context.begin(2, cfg=False)
            call(samples[0], controlnet_cond=conds, conditioning_scale=[1.0, 1.0])
            context.advance()
            mid = call(samples[1], controlnet_cond=conds, conditioning_scale=[1.0, 1.0])[1]
        finally:
            release_run_context(multi_pipe)
            handle.remove()
    torch.testing.assert_close(mid, first0 + second1, rtol=0, atol=0)


def test_guidance_window_with_two_controlnets_runs(multi_pipe, images) -> None:
    policy = dataclasses.replace(_caching_policy(multi_pipe), guidance=GuidanceWindow(3))
    with apply_policy(multi_pipe, policy):
        out = _run(multi_pipe, images)
    assert np.isfinite(out).all()


def test_a_policy_file_round_trip_applies_the_same(multi_pipe, images, tmp_path) -> None:
    policy = _caching_policy(multi_pipe)
    back = loads_policy(dumps_policy(policy)).select(CONDITIONS)
    with apply_policy(multi_pipe, policy):
        a = _run(multi_pipe, images)
    with apply_policy(multi_pipe, back, condition_type=CONDITIONS):
        b = _run(multi_pipe, images)
    assert np.array_equal(a, b)


def _not_hooked(pipe) -> bool:
    models = [pipe.unet, pipe.controlnet, *getattr(pipe.controlnet, "nets", [])]
    return all(not getattr(getattr(m, "_diffusers_hook", None), "hooks", {}) for m in models)


def test_single_controlnet_policy_on_two_is_refused(multi_pipe, tiny_pipe) -> None:
    single = load_policy("policies/tiny-cnwin-k10-drop.json").select()
    with pytest.raises(PolicyMismatchError) as e:
        apply_policy(multi_pipe, single)
    msg = str(e.value)
    assert "controlnets: policy is for 1 ControlNet (ControlNetModel), pipeline has 2 ControlNets" in msg
    assert "controlnet_class: policy has 'ControlNetModel', pipeline has 'MultiControlNetModel'" in msg
    assert _not_hooked(multi_pipe)
    # and the other way round
    multi = _caching_policy(multi_pipe)
    multi20 = dataclasses.replace(multi, target=dataclasses.replace(multi.target, num_steps=20))
    with pytest.raises(PolicyMismatchError, match="policy is for 2 ControlNets .*pipeline has 1 ControlNet"):
        apply_policy(tiny_pipe, multi20)
    assert _not_hooked(tiny_pipe)


def test_another_controlnet_or_condition_order_is_refused(multi_pipe) -> None:
    policy = _caching_policy(multi_pipe)
    with pytest.raises(
        PolicyMismatchError, match=r"controlnets\[0\]\.condition_type: policy has 'seg', pipeline has 'depth'"
    ):
        check_policy_fits(multi_pipe, policy, "depth,seg")
    spec = dataclasses.replace(policy.target.controlnets[1], fingerprint="ffffffffffffffff")
    other = dataclasses.replace(
        policy, target=dataclasses.replace(policy.target, controlnets=(policy.target.controlnets[0], spec))
    )
    with pytest.raises(
        PolicyMismatchError, match=r"controlnets\[1\]\.fingerprint: policy has 'ffffffffffffffff'"
    ):
        apply_policy(multi_pipe, other)
    assert _not_hooked(multi_pipe)
