"""The policy grid's sections: which modules, their row labels, values and what the policy does."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hgc_tune.report._figure_info._policy_grid import _get_policy_grid_info
from hgc_tune.report._grid import COMPUTE, COND_ONLY, DROPPED, INSIDE_REUSED, REUSE, PolicyGrid

NAN = math.nan
ATTN = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture
def profile(make_profile):
    stats = {
        "mean_rel_l1/unet.mid_block": [NAN, 0.01, 0.02],
        "mean_rel_l1/unet.down_blocks.0": [NAN, 0.03, 0.04],
        "mean_rel_l1/controlnet": [NAN, 0.05, 0.06],
        "mean_map_rel_l1/" + ATTN: [NAN, 0.002, 0.001],
    }
    return make_profile(
        block_keys=["unet.mid_block", "unet.down_blocks.0", "controlnet"], attention_keys=[ATTN], stats=stats
    )


GRID = PolicyGrid(
    keys=("unet.mid_block", "controlnet", "unet.down_blocks.0", ATTN, "unet.up_blocks.0"),
    states=np.array(
        [
            [COMPUTE, REUSE, REUSE],
            [COMPUTE, DROPPED, COMPUTE],
            [COMPUTE, COND_ONLY, COND_ONLY],
            [COMPUTE, INSIDE_REUSED, REUSE],
            [COMPUTE, COMPUTE, COMPUTE],
        ],
        dtype=np.int8,
    ),
)


def test_blocks_then_attention_with_runs_per_row(profile):
    info = _get_policy_grid_info(profile, GRID, policy_name="p", cfg_until=1)
    assert (info.num_steps, info.policy_name, info.cfg_until) == (3, "p", 1)
    blocks, attention = info.sections
    # the grid's unet.up_blocks.0 was not profiled: no row
    assert blocks.keys == ["unet.down_blocks.0", "unet.mid_block", "controlnet"]
    # runs: computed or cond-half-only steps
    assert blocks.rows == ["unet.down.0  (3/3)", "unet.mid  (1/3)", "controlnet  (2/3)"]
    assert blocks.separators == [2] and blocks.label.startswith("blocks:")
    np.testing.assert_allclose(blocks.values[:, 1:], [[3.0, 4.0], [1.0, 2.0], [5.0, 6.0]], rtol=1e-6)
    assert blocks.vmax == pytest.approx(6.0)
    np.testing.assert_array_equal(blocks.states, GRID.states[[2, 0, 1]])
    assert attention.keys == [ATTN] and attention.rows == ["unet.up.1.attn.0.tb.0.attn2  (1/3)"]
    assert attention.label.startswith("attn2:") and attention.separators == []
    np.testing.assert_allclose(attention.values, [[NAN, 0.2, 0.1]], rtol=1e-5)
    np.testing.assert_array_equal(attention.states, [GRID.states[3]])


def test_guidance_to_the_end_draws_no_line(profile):
    assert _get_policy_grid_info(profile, GRID, cfg_until=3).cfg_until is None
    assert _get_policy_grid_info(profile, GRID).cfg_until is None


def test_a_grid_of_modules_the_profile_lacks_has_no_sections(profile):
    grid = PolicyGrid(keys=("unet.up_blocks.0",), states=np.zeros((1, 3), dtype=np.int8))
    assert _get_policy_grid_info(profile, grid).sections == []
