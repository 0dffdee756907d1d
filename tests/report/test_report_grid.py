"""The policy grid: what each module does at each step, against hand-laid expectations."""

from __future__ import annotations

import numpy as np
import pytest

from hgc_tune.errors import ReportError
from hgc_tune.policy import ControlNetWindow, GuidanceWindow, Policy, PolicyTarget, ReuseWindow
from hgc_tune.report._grid import COMPUTE, COND_ONLY, DROPPED, INSIDE_REUSED, REUSE, STATE_NAMES, policy_grid

S = 6
MID = "unet.mid_block"
MID_ATTN = "unet.mid_block.attentions.0.transformer_blocks.0.attn2"
UP_ATTN = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2"
KEYS = [
    "unet.down_blocks.0",
    MID,
    MID_ATTN,
    UP_ATTN,
    "controlnet",
    "controlnet.down_blocks.0",
    "controlnet.down_blocks.0.attentions.0.transformer_blocks.0.attn2",
]

C, H, R, N, D = COMPUTE, COND_ONLY, REUSE, INSIDE_REUSED, DROPPED


def _target(steps: int = S) -> PolicyTarget:
    return PolicyTarget("P", "U", "C", "0123456789abcdef", steps, "UniPCMultistepScheduler")


def _policy(mode: str = "drop", guidance: int | None = 5) -> Policy:
    return Policy(
        _target(),
        blocks={MID: (0, 3)},
        attention={MID_ATTN: (ReuseWindow(1, 3),), UP_ATTN: (ReuseWindow(2, 6),)},
        controlnet=ControlNetWindow((0, 1, 2), mode),
        guidance=GuidanceWindow(guidance) if guidance is not None else None,
    )


def test_grid_follows_the_reuse_rule_by_hand():
    grid = policy_grid(_policy(), KEYS)
    expected = {
        # computes everywhere; from step 5 on, the conditional half only
        "unet.down_blocks.0": [C, C, C, C, C, H],
        # compute set {0, 3}
        MID: [C, R, R, C, R, R],
        # window [1, 3) reuses step 2; at 1, 2, 4, 5 the mid block around it reuses
        MID_ATTN: [C, N, R, C, N, N],
        # window [2, 6) reuses steps 3..5
        UP_ATTN: [C, C, C, R, R, R],
        # window steps {0, 1, 2}, dropped elsewhere, the whole ControlNet and everything in it
        "controlnet": [C, C, C, D, D, D],
        "controlnet.down_blocks.0": [C, C, C, D, D, D],
        "controlnet.down_blocks.0.attentions.0.transformer_blocks.0.attn2": [C, C, C, D, D, D],
    }
    for key, row in expected.items():
        assert grid.row(key).tolist() == row, key
    assert grid.states.dtype == np.int8
    assert grid.num_steps == S
    counts = grid.counts()
    assert sum(counts.values()) == len(KEYS) * S
    assert counts[STATE_NAMES[DROPPED]] == 9
    assert counts[STATE_NAMES[REUSE]] == 4 + 1 + 3
    assert counts[STATE_NAMES[COND_ONLY]] == 1


def test_controlnet_reuse_window_marks_the_whole_model_reused_and_its_blocks_inside():
    grid = policy_grid(_policy(mode="reuse", guidance=None), KEYS)
    assert grid.row("controlnet").tolist() == [C, C, C, R, R, R]
    assert grid.row("controlnet.down_blocks.0").tolist() == [C, C, C, N, N, N]
    assert not (grid.states == COND_ONLY).any()


def test_without_cfg_nothing_is_conditional_only():
    grid = policy_grid(_policy(guidance=2), KEYS, cfg=False)
    assert not (grid.states == COND_ONLY).any()
    with_cfg = policy_grid(_policy(guidance=2), KEYS)
    assert with_cfg.row("unet.down_blocks.0").tolist() == [C, C, H, H, H, H]


def test_a_policy_module_missing_from_the_keys_is_an_error():
    with pytest.raises(ReportError, match="unet.mid_block"):
        policy_grid(_policy(), [k for k in KEYS if k != MID])
