"""Mismatches between a policy and the pipeline it runs on are refused, never accepted silently:
ControlNets in another order, a U-Net or ControlNet replaced after ``apply_policy``, a scheduler that calls
the denoisers more than once per step (Heun, PNDM); and two threads calling one pipeline get the images of
sequential calls."""

from __future__ import annotations

import copy
import dataclasses
import threading

import diffusers
import numpy as np
import pytest
import torch

from hgc_tune.errors import PolicyAlreadyAppliedError, PolicyMismatchError
from hgc_tune.executor import apply_policy, policy_handle
from hgc_tune.models import load_pipeline
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.policy import PolicyFile, peer_policy, target_for_pipeline

STEPS = 4


def _policy(pipe, condition_type=None, steps=STEPS, name="deepcache-n3-b0"):
    target = target_for_pipeline(pipe, num_steps=steps, condition_type=condition_type)
    return peer_policy(name, target, cacheable_module_keys(pipe))


def _hooked(pipe) -> bool:
    modules = (*pipe.unet.modules(), *pipe.controlnet.modules())
    registries = [getattr(m, "_diffusers_hook", None) for m in modules]
    return any(r is not None and r.hooks for r in registries)


@pytest.fixture(scope="module")
def depth_seg_pipe():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_pipeline("tiny", condition="depth,seg")


def test_a_policy_for_the_controlnets_in_another_order_is_refused(depth_seg_pipe):
    pipe = depth_seg_pipe
    seg_depth = _policy(pipe, "seg,depth")
    order = r"in the order 'seg,depth', pipeline runs them as 'depth,seg'"
    with pytest.raises(PolicyMismatchError, match=order):
        apply_policy(pipe, seg_depth)
    assert not _hooked(pipe) and policy_handle(pipe) is None
    # Naming the wrong order by hand is refused too, with the order load_pipeline built.
    unlabelled = dataclasses.replace(seg_depth, target=_policy(pipe).target)
    given = r"condition_type='seg,depth' was given, but .* 'depth,seg'"
    with pytest.raises(PolicyMismatchError, match=given):
        apply_policy(pipe, PolicyFile((unlabelled,)), "seg,depth")
    assert not _hooked(pipe)
    # The right order applies, and a file is read for the order the pipeline was built with.
    both = PolicyFile((seg_depth, _policy(pipe, "depth,seg")))
    with apply_policy(pipe, both) as handle:
        assert handle.policy.target.condition_type == "depth,seg"


def test_replacing_the_unet_detaches_the_policy_and_the_next_call_is_refused(
    tiny_pipe, condition_image, generate
):
    policy = _policy(tiny_pipe)
    with apply_policy(tiny_pipe, policy):
        cached = generate(tiny_pipe, condition_image, STEPS)
    original = tiny_pipe.unet
    handle = apply_policy(tiny_pipe, policy)
    try:
        tiny_pipe.unet = copy.deepcopy(original)
        plain_unet_calls = []
        probe = tiny_pipe.unet.register_forward_pre_hook(lambda *a: plain_unet_calls.append(1))
        # The hooks are on the U-Net that was replaced: the handle no longer says active.
        assert not handle.active
        assert "detached: pipe.unet replaced" in repr(handle)
        assert policy_handle(tiny_pipe) is handle  # still there to be removed
        with pytest.raises(PolicyMismatchError, match=r"pipe\.unet was replaced after policy .* remove\(\)"):
            generate(tiny_pipe, condition_image, STEPS)
        assert plain_unet_calls == []  # refused before any denoiser ran
        with pytest.raises(PolicyAlreadyAppliedError, match="remove"):
            apply_policy(tiny_pipe, policy)
        probe.remove()
    finally:
        tiny_pipe.unet = original
        handle.remove()
    assert policy_handle(tiny_pipe) is None and not _hooked(tiny_pipe)
    # Remove and apply again: the policy runs (the same images as before the swap).
    with apply_policy(tiny_pipe, policy) as again:
        assert again.active
        assert np.array_equal(generate(tiny_pipe, condition_image, STEPS), cached)


def test_replacing_the_controlnet_is_detected_and_compile_wrapping_is_not(
    tiny_pipe, condition_image, generate
):
    policy = _policy(tiny_pipe)
    original = tiny_pipe.controlnet
    handle = apply_policy(tiny_pipe, policy)
    try:
        tiny_pipe.unet = torch.compile(tiny_pipe.unet)  # wraps the same module: the policy stays
        assert handle.active
        tiny_pipe.unet = tiny_pipe.unet._orig_mod
        tiny_pipe.controlnet = copy.deepcopy(original)
        assert not handle.active
        with pytest.raises(PolicyMismatchError, match=r"pipe\.controlnet was replaced"):
            generate(tiny_pipe, condition_image, STEPS)
    finally:
        tiny_pipe.controlnet = original
        handle.remove()
    assert not _hooked(tiny_pipe)


def test_replacing_one_net_of_several_controlnets_is_detected(depth_seg_pipe, condition_image):
    pipe = depth_seg_pipe
    handle = apply_policy(pipe, _policy(pipe, "depth,seg"))
    nets = pipe.controlnet.nets
    original = nets[1]
    try:
        nets[1] = copy.deepcopy(original)
        assert not handle.active
        with pytest.raises(PolicyMismatchError, match=r"pipe\.controlnet\.nets\[1\] was replaced"):
            pipe("a", image=[condition_image] * 2, num_inference_steps=STEPS, output_type="np")
    finally:
        nets[1] = original
        handle.remove()


@pytest.mark.parametrize("scheduler", ["HeunDiscreteScheduler", "PNDMScheduler", "KDPM2DiscreteScheduler"])
def test_a_scheduler_with_several_denoiser_calls_per_step_is_refused(tiny_pipe, scheduler):
    """Heun and DPM2 evaluate the denoisers twice per step, PNDM adds warm-up calls: a policy's step (one
    denoiser call) is not a step of theirs, so the policy is refused when applied, naming the scheduler."""
    original = tiny_pipe.scheduler
    tiny_pipe.scheduler = getattr(diffusers, scheduler).from_config(original.config)
    try:
        policy = _policy(tiny_pipe, steps=6)
        message = rf"scheduler {scheduler} calls the denoisers \d+ times for num_inference"
        with pytest.raises(PolicyMismatchError, match=message):
            apply_policy(tiny_pipe, policy)
        assert not _hooked(tiny_pipe) and policy_handle(tiny_pipe) is None
    finally:
        tiny_pipe.scheduler = original


def test_two_threads_calling_one_pipeline_get_the_images_of_sequential_calls(condition_image):
    """Each call keeps its own step index and cached outputs. DDIM keeps nothing across its steps, so
    without a policy the threaded images equal the sequential ones too; the threads run step by step in
    lockstep (a barrier in the step callback), so their calls interleave."""
    pipe = load_pipeline("tiny", scheduler="ddim")
    apply_policy(pipe, _policy(pipe, steps=6))

    def call(seed: int, barrier: threading.Barrier | None = None) -> np.ndarray:
        def step_end(p, i, t, kwargs):
            if barrier is not None:
                barrier.wait(timeout=60)
            return kwargs

        return pipe(
            ["a red square", "a blue dog"][seed],
            image=condition_image,
            num_inference_steps=6,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
            callback_on_step_end=step_end,
        ).images

    sequential = [call(0), call(1)]
    barrier, threaded, errors = threading.Barrier(2), [None, None], []

    def run(i: int) -> None:
        try:
            threaded[i] = call(i, barrier)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not np.array_equal(sequential[0], sequential[1])
    for mine, alone in zip(threaded, sequential):
        assert np.array_equal(mine, alone)
