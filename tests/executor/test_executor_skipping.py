"""Skipped modules are really not executed, and the reuse plumbing is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hgc_tune.executor import apply_policy
from hgc_tune.policy import ControlNetWindow, GuidanceWindow, Policy, ReuseWindow
from hgc_tune.runtime import attach_run_context, release_run_context

STEPS = 6


class _CallCounter:
    """Counts forward calls (and input batch sizes) of observed modules with plain forward hooks."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.calls = dict.fromkeys(modules, 0)
        self.batches: dict[str, list[int]] = {k: [] for k in modules}
        self.handles = [m.register_forward_pre_hook(self._make(k)) for k, m in modules.items()]

    def _make(self, key):
        def hook(module, args):
            self.calls[key] += 1
            self.batches[key].append(args[0].shape[0])

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _run(pipe, image, steps=STEPS, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe("a red square", image=image, num_inference_steps=steps, output_type="np", **kwargs).images


def test_skipped_blocks_do_not_execute(tiny_pipe, condition_image, tiny_target):
    unet, cn = tiny_pipe.unet, tiny_pipe.controlnet
    observed = {
        "unet.mid_block.resnets.0": unet.mid_block.resnets[0],
        "unet.down_blocks.3.resnets.0": unet.down_blocks[3].resnets[0],
        "unet.down_blocks.0.resnets.0": unet.down_blocks[0].resnets[0],
        "attn2.to_q": unet.up_blocks[3].attentions[0].transformer_blocks[0].attn2.to_q,
        "controlnet.conv_in": cn.conv_in,
        "controlnet.mid_block.resnets.0": cn.mid_block.resnets[0],
    }
    policy = Policy(
        tiny_target(STEPS),
        blocks={"unet.mid_block": (0, 3), "unet.down_blocks.3": (0, 2, 4), "controlnet.mid_block": (0, 5)},
        attention={"unet.up_blocks.3.attentions.0.transformer_blocks.0.attn2": (ReuseWindow(1, 4),)},
        controlnet=ControlNetWindow((0, 1, 2, 5), "reuse"),
    )
    counter = _CallCounter(observed)
    try:
        with apply_policy(tiny_pipe, policy):
            _run(tiny_pipe, condition_image)
            _run(tiny_pipe, condition_image)
    finally:
        counter.close()
    per_call = {k: v // 2 for k, v in counter.calls.items()}
    assert per_call == {
        "unet.mid_block.resnets.0": 2,
        "unet.down_blocks.3.resnets.0": 3,
        "unet.down_blocks.0.resnets.0": STEPS,
        "attn2.to_q": STEPS - 2,  # steps 2 and 3 reuse the window [1, 4)
        "controlnet.conv_in": 4,
        # the ControlNet runs at 0, 1, 2, 5; its mid block computes at 0 and 5 only
        "controlnet.mid_block.resnets.0": 2,
    }
    assert counter.calls["unet.down_blocks.0.resnets.0"] % 2 == 0


def test_dropped_controlnet_and_truncated_cfg_compute_nothing_extra(tiny_pipe, condition_image, tiny_target):
    observed = {"controlnet.conv_in": tiny_pipe.controlnet.conv_in, "unet.conv_in": tiny_pipe.unet.conv_in}
    policy = Policy(
        tiny_target(STEPS), controlnet=ControlNetWindow((0, 1), "drop"), guidance=GuidanceWindow(4)
    )
    counter = _CallCounter(observed)
    try:
        with apply_policy(tiny_pipe, policy):
            _run(tiny_pipe, condition_image)
    finally:
        counter.close()
    assert counter.batches["controlnet.conv_in"] == [2, 2]
    assert counter.batches["unet.conv_in"] == [2, 2, 2, 2, 1, 1]


def test_control_guidance_end_skips_wasted_controlnet_compute(tiny_pipe, condition_image, tiny_target):
    expected = _run(tiny_pipe, condition_image, control_guidance_end=0.5)
    counter = _CallCounter({"controlnet.conv_in": tiny_pipe.controlnet.conv_in})
    try:
        with apply_policy(tiny_pipe, Policy(tiny_target(STEPS))):
            got = _run(tiny_pipe, condition_image, control_guidance_end=0.5)
    finally:
        counter.close()
    # diffusers keeps the ControlNet for steps i with (i + 1) / 6 <= 0.5, i.e. 0, 1, 2, and runs it x0 after
    assert counter.calls["controlnet.conv_in"] == 3
    assert np.array_equal(got, expected)


def test_guess_mode_and_batch_sizes(tiny_pipe, condition_image, tiny_target):
    policy = Policy(
        tiny_target(STEPS),
        blocks={"unet.mid_block": (0, 2, 4), "controlnet.mid_block": (0, 3)},
        controlnet=ControlNetWindow((0, 1, 2), "reuse"),
        guidance=GuidanceWindow(3),
    )
    with apply_policy(tiny_pipe, policy):
        guess = _run(tiny_pipe, condition_image, guess_mode=True)
        two = _run(tiny_pipe, condition_image, num_images_per_prompt=2)
        one = _run(tiny_pipe, condition_image)
    assert guess.shape == (1, 64, 64, 3) and np.isfinite(guess).all()
    assert two.shape == (2, 64, 64, 3) and np.isfinite(two).all()
    assert np.isfinite(one).all()


def test_reuse_of_a_fresh_cache_is_exact(tiny_pipe, tiny_target):
    """Driving the hooked U-Net and ControlNet directly with the same inputs at two consecutive steps: the
    second step, whose deep blocks reuse their step-0 outputs, equals full compute exactly."""
    unet, cn = tiny_pipe.unet, tiny_pipe.controlnet
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 32, 32, generator=gen)
    text = torch.randn(2, 77, 32, generator=gen)
    cond = torch.rand(2, 3, 64, 64, generator=gen)
    t = torch.tensor(500)

    def step():
        down, mid = cn(sample, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        return unet(
            sample,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]

    with torch.no_grad():
        expected = step()
        deep = [
            "unet.down_blocks.1",
            "unet.down_blocks.2",
            "unet.down_blocks.3",
            "unet.mid_block",
            "unet.up_blocks.0",
            "unet.up_blocks.1",
            "unet.up_blocks.2",
            "controlnet.down_blocks.1",
            "controlnet.down_blocks.2",
            "controlnet.down_blocks.3",
            "controlnet.mid_block",
        ]
        policy = Policy(
            tiny_target(2),
            blocks={k: (0,) for k in deep},
            attention={"unet.up_blocks.3.attentions.1.transformer_blocks.0.attn2": (ReuseWindow(0, 2),)},
            controlnet=ControlNetWindow((0,), "reuse"),
        )
        handle = apply_policy(tiny_pipe, policy)
        context = attach_run_context(tiny_pipe)
        try:
            context.begin(2, cfg=True)
            first = step()
            context.advance()
            counter = _CallCounter(
                {"mid": unet.mid_block.resnets[0], "cn": cn.conv_in, "shallow": unet.conv_in}
            )
            second = step()
            counter.close()
        finally:
            release_run_context(tiny_pipe)
            handle.remove()
    assert counter.calls == {"mid": 0, "cn": 0, "shallow": 1}
    assert torch.equal(first, expected)
    assert torch.equal(second, expected)


@pytest.mark.parametrize("cfg_scale", [7.5, 1.0])
def test_run_context_steps_across_calls(tiny_pipe, condition_image, cfg_scale):
    seen = []
    context = attach_run_context(tiny_pipe)
    handle = tiny_pipe.unet.register_forward_pre_hook(
        lambda m, a: seen.append((context.step, context.num_steps, context.cfg))
    )
    try:
        _run(tiny_pipe, condition_image, steps=5, guidance_scale=cfg_scale)
        _run(tiny_pipe, condition_image, steps=7, guidance_scale=cfg_scale)
    finally:
        handle.remove()
        release_run_context(tiny_pipe)
    cfg = cfg_scale > 1
    assert seen == [(s, 5, cfg) for s in range(5)] + [(s, 7, cfg) for s in range(7)]
    assert "step" not in vars(tiny_pipe.scheduler)  # the scheduler's own methods are restored
