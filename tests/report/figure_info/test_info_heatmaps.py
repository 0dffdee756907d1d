"""The heatmaps' rows, values and colour ranges: block similarity and cross-attention drift."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hgc_tune.report._figure_info._heatmaps import _get_attention_drift_info, _get_block_similarity_info

NAN = math.nan
DOWN_ATTN = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"
UP_ATTN = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2"
CN_ATTN = "controlnet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"


def blocks_profile(make_profile):
    stats = {}
    for key, cos, rel in [
        ("unet.mid_block", [NAN, 0.990, 0.995], [NAN, 0.10, 0.05]),
        ("unet.down_blocks.0", [NAN, 0.980, 0.999], [NAN, 0.20, 0.01]),
        ("controlnet", [NAN, 0.970, 0.990], [NAN, 0.30, 0.02]),
        ("controlnet.down_blocks.0", [NAN, 0.960, 0.980], [NAN, 0.40, 0.03]),
    ]:
        stats[f"mean_cos/{key}"], stats[f"mean_rel_l1/{key}"] = cos, rel
    return make_profile(block_keys=[k.split("/")[1] for k in stats if k.startswith("mean_cos/")], stats=stats)


def test_unet_rows_in_data_order_with_values_in_percent(make_profile):
    info = _get_block_similarity_info(blocks_profile(make_profile), "unet")
    assert info.name == "U-Net" and info.keys == ["unet.down_blocks.0", "unet.mid_block"]
    assert info.rows == ["down.0", "mid"]
    np.testing.assert_allclose(info.cos, [[NAN, 0.98, 0.999], [NAN, 0.99, 0.995]], rtol=1e-6)
    np.testing.assert_allclose(info.rel_percent, [[NAN, 20.0, 1.0], [NAN, 10.0, 5.0]], rtol=1e-6)
    # the colour ranges: from the lowest cosine to 1, from 0 to the largest change
    assert info.cos_limits == pytest.approx((0.98, 1.0)) and info.rel_max == pytest.approx(20.0)
    assert (info.num_steps, info.num_samples) == (3, 2)


def test_controlnet_rows_start_with_the_whole_net(make_profile):
    info = _get_block_similarity_info(blocks_profile(make_profile), "controlnet")
    assert info.name == "ControlNet" and info.rows == ["controlnet (whole)", "down.0"]
    assert info.cos_limits == pytest.approx((0.96, 1.0)) and info.rel_max == pytest.approx(40.0)


def test_one_of_several_controlnets_and_its_title(make_profile):
    keys = ["controlnet.nets.1", "controlnet.nets.1.mid_block", "controlnet.nets.10.mid_block"]
    stats = {f"{name}/{k}": [NAN, 0.9995, 0.9999] for k in keys for name in ("mean_cos", "mean_rel_l1")}
    info = _get_block_similarity_info(
        make_profile(block_keys=keys, stats=stats), "controlnet.nets.1", title="T"
    )
    # nets.10 is another net, not a block of nets.1
    assert info.name == "T" and info.keys == keys[:2] and info.rows == ["controlnet (whole)", "mid"]
    # every cosine above 0.999: the colour range still starts at 0.999
    assert info.cos_limits == pytest.approx((0.999, 1.0))


def test_a_component_without_blocks_draws_nothing(make_profile):
    info = _get_block_similarity_info(blocks_profile(make_profile), "controlnet.nets.0")
    assert info.keys == [] and info.rows == [] and info.name == "controlnet.nets.0"
    assert info.cos.shape == info.rel_percent.shape == (0, 3)
    assert info.cos_limits == (0.0, 1.0) and info.rel_max == 1e-6


def test_attention_rows_separators_and_scaled_divergence(make_profile):
    keys = [CN_ATTN, UP_ATTN, DOWN_ATTN]
    stats = {}
    for key, rel, js in [
        (CN_ATTN, [NAN, 0.01, 0.02], [NAN, 0.0005, 0.001]),
        (UP_ATTN, [NAN, 0.03, 0.01], [NAN, 0.004, 0.002]),
        (DOWN_ATTN, [NAN, 0.02, 0.02], [NAN, 0.003, 0.001]),
    ]:
        stats[f"mean_map_rel_l1/{key}"], stats[f"mean_js/{key}"] = rel, js
    info = _get_attention_drift_info(make_profile(block_keys=[], attention_keys=keys, stats=stats))
    assert info.keys == [DOWN_ATTN, UP_ATTN, CN_ATTN]
    assert info.rows == ["unet.down.0.attn.0.tb.0", "unet.up.1.attn.0.tb.0", "controlnet.down.0.attn.0.tb.0"]
    # the ControlNet's rows begin at row 2
    assert info.separators == [2]
    np.testing.assert_allclose(info.rel_percent[:, 1:], [[2.0, 2.0], [3.0, 1.0], [1.0, 2.0]], rtol=1e-6)
    assert info.rel_max == pytest.approx(3.0)
    # the largest divergence is 0.004 nats: shown in units of 10⁻³ nats
    assert info.js_exponent == -3 and info.js_unit == "×10⁻³ nats"
    np.testing.assert_allclose(info.js[:, 1:], [[3.0, 1.0], [4.0, 2.0], [0.5, 1.0]], rtol=1e-5)
    assert info.js_max == pytest.approx(4.0, rel=1e-5)


def test_divergences_of_a_tenth_or_more_stay_in_nats(make_profile):
    stats = {f"mean_map_rel_l1/{UP_ATTN}": [NAN, 0.1, 0.1], f"mean_js/{UP_ATTN}": [NAN, 0.25, 0.1]}
    info = _get_attention_drift_info(make_profile(block_keys=[], attention_keys=[UP_ATTN], stats=stats))
    assert info.js_exponent == 0 and info.js_unit == "nats" and info.separators == []
    np.testing.assert_allclose(info.js, [[NAN, 0.25, 0.1]], rtol=1e-6)


def test_a_profile_without_cross_attention(make_profile):
    info = _get_attention_drift_info(make_profile(block_keys=["unet.mid_block"]))
    assert info.keys == [] and info.js.shape == (0, 3) and info.js_exponent == 0
