"""Regional compilation around the policy's hooks, and cached outputs that survive CUDA graph replays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hgc_tune.executor import apply_policy
from hgc_tune.policy import ControlNetWindow, Policy
from hgc_tune.runtime import compile_regions, run_context

STEPS = 4
DEEP = ("unet.mid_block", "unet.up_blocks.0", "controlnet.mid_block")


@pytest.fixture
def fresh_tiny():
    """A pipeline of its own: compiling modules in place must not leak into the shared fixture."""
    from hgc_tune.models import load_pipeline

    return load_pipeline("tiny")


def _policy(target) -> Policy:
    return Policy(
        target(STEPS),
        blocks={k: (0, 2) for k in DEEP},
        controlnet=ControlNetWindow((0, 1), "reuse"),
        name="deep",
    )


def _is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_regions_leave_every_hooked_module_in_python(fresh_tiny, tiny_target):
    handle = apply_policy(fresh_tiny, _policy(tiny_target))
    regions = compile_regions(fresh_tiny)
    modules = {
        **{f"unet.{k}": m for k, m in fresh_tiny.unet.named_modules() if k},
        **{f"controlnet.{k}": m for k, m in fresh_tiny.controlnet.named_modules() if k},
    }
    hooked = {*DEEP, "controlnet"}
    assert regions and not hooked & set(regions)
    for key in regions:
        assert _is_compiled(modules[key]), key
        # a compiled region never contains a hooked module (its hook would be traced and guard on the step)
        assert not any(key == h or h.startswith(f"{key}.") for h in hooked), key
    for key in DEEP:
        assert not _is_compiled(modules[key])
        # the blocks inside a hooked block are compiled instead
        assert any(r.startswith(f"{key}.") for r in regions), key
    assert not run_context(fresh_tiny).copy_cached_outputs  # torch's default mode replays no graphs
    handle.remove()


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "reduce-overhead"}, {"mode": "max-autotune"}, {"options": {"triton.cudagraphs": True}}],
)
def test_modes_that_replay_cuda_graphs_make_the_hooks_keep_copies(fresh_tiny, tiny_target, kwargs):
    handle = apply_policy(fresh_tiny, _policy(tiny_target))
    compile_regions(fresh_tiny, **kwargs)
    assert run_context(fresh_tiny).copy_cached_outputs
    handle.remove()


def test_kept_copies_change_no_result_and_share_no_memory(tiny_pipe, condition_image, tiny_target, generate):
    handle = apply_policy(tiny_pipe, _policy(tiny_target))
    try:
        expected = generate(tiny_pipe, condition_image, STEPS)
        run_context(tiny_pipe).copy_cached_outputs = True
        outputs = {"mid": [], "controlnet": []}
        grabs = [
            module.register_forward_hook(lambda m, a, out, key=key: outputs[key].append(out))
            for key, module in (("mid", tiny_pipe.unet.mid_block), ("controlnet", tiny_pipe.controlnet))
        ]
        try:
            assert np.array_equal(generate(tiny_pipe, condition_image, STEPS), expected)
        finally:
            for grab in grabs:
                grab.remove()
        assert len(outputs["mid"]) == len(outputs["controlnet"]) == STEPS
        # the mid block computes at steps 0 and 2; what it keeps equals step 2's output in memory of its own
        kept = handle.step_hooks["unet.mid_block"].state.output
        assert torch.equal(kept, outputs["mid"][2]) and kept.data_ptr() != outputs["mid"][2].data_ptr()
        assert outputs["mid"][3] is kept  # step 3 reuses the copy
        # the ControlNet runs at steps 0 and 1 and keeps a copy of step 1's residuals
        kept_down = handle.controlnet_hook.state.residuals[0][0]
        computed_down = outputs["controlnet"][1][0][0]
        assert torch.equal(kept_down, computed_down) and kept_down.data_ptr() != computed_down.data_ptr()
    finally:
        run_context(tiny_pipe).copy_cached_outputs = False
        handle.remove()


def test_compiled_regions_reproduce_the_eager_policy(fresh_tiny, condition_image, tiny_target, generate):
    """Dynamo traces every region (eager backend: no C++ toolchain needed) and the step-dependent dispatch
    stays in Python, so the policy's images are those of the uncompiled hooked pipeline."""
    handle = apply_policy(fresh_tiny, _policy(tiny_target))
    expected = generate(fresh_tiny, condition_image, STEPS)
    compile_regions(fresh_tiny, backend="eager")
    np.testing.assert_allclose(generate(fresh_tiny, condition_image, STEPS), expected, atol=1e-5)
    handle.remove()
