"""The executor on ``StableDiffusionXLControlNetPipeline`` (the tiny-sdxl preset): full compute is plain
generation, removal restores it, every technique runs with SDXL's added conditioning, and a policy made for
an SD1.5 pipeline is refused before anything is attached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hgc_tune.errors import PolicyMismatchError
from hgc_tune.executor import apply_policy, check_policy_fits, policy_handle
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.policy import (
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    ReuseWindow,
    full_compute_policy,
    load_policy,
    peer_policy,
    target_for_pipeline,
)

STEPS = 5
POLICIES = Path(__file__).resolve().parents[2] / "policies"


def _generate(pipe, image, guidance_scale: float = 7.5) -> np.ndarray:
    return pipe(
        "a red square",
        image=image,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def baselines(tiny_sdxl_pipe, condition_image):
    return {g: _generate(tiny_sdxl_pipe, condition_image, g) for g in (7.5, 1.0)}


@pytest.fixture(scope="module")
def target(tiny_sdxl_pipe):
    return target_for_pipeline(tiny_sdxl_pipe, num_steps=STEPS, model="tiny-sdxl")


def _no_hooks(pipe) -> bool:
    for component in ("unet", "controlnet"):
        for module in getattr(pipe, component).modules():
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and registry.hooks:
                return False
    return "set_timesteps" not in vars(pipe.scheduler) and "step" not in vars(pipe.scheduler)


def test_all_compute_policy_is_bit_identical(tiny_sdxl_pipe, condition_image, baselines, target):
    with apply_policy(tiny_sdxl_pipe, full_compute_policy(target)):
        for g, expected in baselines.items():
            assert np.array_equal(_generate(tiny_sdxl_pipe, condition_image, g), expected)
    assert _no_hooks(tiny_sdxl_pipe)


@pytest.mark.parametrize(
    "name", ["deepcache-n2-b0", "tgate-g2-cfg", "cnwin-k2-drop", "cnwin-k2-reuse", "mixed"]
)
def test_policy_runs_and_removal_restores_plain_generation(
    tiny_sdxl_pipe, condition_image, baselines, target, name
):
    pipe = tiny_sdxl_pipe
    if name == "mixed":
        policy = Policy(
            target,
            blocks={"unet.down_blocks.2": (0, 2, 4), "unet.up_blocks.0": (0, 3)},
            attention={"unet.up_blocks.1.attentions.1.transformer_blocks.1.attn2": (ReuseWindow(1, STEPS),)},
            controlnet=ControlNetWindow((0, 1, 3), "reuse"),
            guidance=GuidanceWindow(3),
            name="mixed",
        )
    else:
        policy = peer_policy(name, target, cacheable_module_keys(pipe))
    handle = apply_policy(pipe, policy)
    try:
        assert policy_handle(pipe) is handle
        for g in (7.5, 1.0):
            cached = _generate(pipe, condition_image, g)
            assert np.isfinite(cached).all()
            assert not np.array_equal(cached, baselines[g]), (name, g)
    finally:
        handle.remove()
    assert policy_handle(pipe) is None and _no_hooks(pipe)
    for g, expected in baselines.items():
        assert np.array_equal(_generate(pipe, condition_image, g), expected)


def test_sd15_policy_is_refused_and_nothing_is_applied(tiny_sdxl_pipe, condition_image, baselines):
    policy = load_policy(POLICIES / "tiny-deepcache-n3-b0.json").select()
    with pytest.raises(PolicyMismatchError) as info:
        apply_policy(tiny_sdxl_pipe, policy)
    message = str(info.value)
    assert (
        "pipeline_class: policy has 'StableDiffusionControlNetPipeline', "
        "pipeline has 'StableDiffusionXLControlNetPipeline'" in message
    )
    with pytest.raises(PolicyMismatchError, match="pipeline_class"):
        check_policy_fits(tiny_sdxl_pipe, policy)
    assert policy_handle(tiny_sdxl_pipe) is None and _no_hooks(tiny_sdxl_pipe)
    assert np.array_equal(_generate(tiny_sdxl_pipe, condition_image), baselines[7.5])


def test_sd15_shaped_policy_under_the_sdxl_pipeline_class_is_refused_by_fingerprint(tiny_sdxl_pipe, target):
    """Same classes, other architecture: the structural fingerprint tells them apart, named in the error."""
    import dataclasses

    tiny = load_policy(POLICIES / "tiny-deepcache-n3-b0.json").select()
    disguised = dataclasses.replace(
        tiny, target=dataclasses.replace(tiny.target, pipeline_class=target.pipeline_class)
    )
    with pytest.raises(PolicyMismatchError, match=rf"fingerprint: policy has '{tiny.target.fingerprint}', "):
        apply_policy(tiny_sdxl_pipe, disguised)
    assert policy_handle(tiny_sdxl_pipe) is None and _no_hooks(tiny_sdxl_pipe)
