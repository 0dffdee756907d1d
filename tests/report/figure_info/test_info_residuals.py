"""The ControlNet residual figure's lines and the steps a policy's window shades."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from hgc_tune.report._figure_info._residuals import _get_controlnet_residuals_info

NAN = math.nan


def statistics(keys: list[str], wholes: list[str]) -> dict[str, list[float]]:
    """Each key's mean relative L1 change at step s is (its index + 1) × s / 100; its cosine 1 - that."""
    stats = {}
    for i, key in enumerate(keys):
        rel = [NAN, *((i + 1) * s / 100 for s in (1, 2, 3))]
        stats[f"mean_rel_l1/{key}"] = rel
        stats[f"mean_cos/{key}"] = [1 - v for v in rel]
        if key in wholes:
            stats[f"std_rel_l1/{key}"] = [NAN, 0.01, 0.01, 0.01]
            stats[f"std_cos/{key}"] = [NAN, 0.02, 0.02, 0.02]
    return stats


def window_policy(**windows) -> SimpleNamespace:
    return SimpleNamespace(
        num_steps=4,
        controlnet_windows={
            key.replace("_", "."): SimpleNamespace(steps=s, mode=m) for key, (s, m) in windows.items()
        },
    )


def test_one_controlnet(make_profile):
    keys = ["unet.mid_block", "controlnet", "controlnet.mid_block", "controlnet.down_blocks.0"]
    profile = make_profile(block_keys=keys, stats=statistics(keys, ["controlnet"]), num_steps=4)
    info = _get_controlnet_residuals_info(profile, window_policy(controlnet=((0, 2), "drop")))
    assert not info.several and (info.num_steps, info.num_samples) == (4, 2)
    [net] = info.nets
    assert (net.key, net.kind) == ("controlnet", "")
    # the policy's window runs steps 0 and 2: steps 1 and 3 are dropped
    assert net.policy_steps == [1, 3] and net.policy_mode == "drop"
    rel, cos = net.panels
    assert (rel.metric, cos.metric) == ("rel_l1", "cos")
    # the whole net is key 1: relative change 2 × s %, std 1 %; its blocks in data order, module labels
    np.testing.assert_allclose(rel.mean, [NAN, 2.0, 4.0, 6.0], rtol=1e-6)
    np.testing.assert_allclose(rel.std, [NAN, 1.0, 1.0, 1.0], rtol=1e-6)
    assert [label for label, _ in rel.blocks] == ["controlnet.down.0", "controlnet.mid"]
    np.testing.assert_allclose(rel.blocks[0][1], [NAN, 4.0, 8.0, 12.0], rtol=1e-6)
    np.testing.assert_allclose(cos.mean, [NAN, 0.98, 0.96, 0.94], rtol=1e-6)
    np.testing.assert_allclose(cos.std, [NAN, 0.02, 0.02, 0.02], rtol=1e-6)
    np.testing.assert_allclose(cos.blocks[1][1], [NAN, 0.97, 0.94, 0.91], rtol=1e-6)


def test_without_a_policy_nothing_is_shaded(make_profile):
    keys = ["controlnet"]
    info = _get_controlnet_residuals_info(
        make_profile(block_keys=keys, stats=statistics(keys, keys), num_steps=4)
    )
    assert info.nets[0].policy_steps == [] and info.nets[0].policy_mode is None
    assert info.nets[0].panels[0].blocks == []


def test_several_controlnets_one_row_each_with_their_own_windows(make_profile):
    keys = [
        "controlnet.nets.0",
        "controlnet.nets.0.mid_block",
        "controlnet.nets.1",
        "controlnet.nets.1.down_blocks.0",
    ]
    profile = make_profile(
        block_keys=keys,
        stats=statistics(keys, ["controlnet.nets.0", "controlnet.nets.1"]),
        num_steps=4,
        condition_type="seg,depth",
    )
    info = _get_controlnet_residuals_info(profile, window_policy(controlnet_nets_1=((0, 1), "reuse")))
    assert info.several
    assert [(n.key, n.kind) for n in info.nets] == [
        ("controlnet.nets.0", "seg"),
        ("controlnet.nets.1", "depth"),
    ]
    # labels within the net; only the second net has a window
    assert [label for label, _ in info.nets[0].panels[0].blocks] == ["mid"]
    assert [label for label, _ in info.nets[1].panels[0].blocks] == ["down.0"]
    assert (info.nets[0].policy_steps, info.nets[0].policy_mode) == ([], None)
    assert (info.nets[1].policy_steps, info.nets[1].policy_mode) == ([2, 3], "reuse")
    np.testing.assert_allclose(info.nets[1].panels[0].mean, [NAN, 3.0, 6.0, 9.0], rtol=1e-6)


def test_condition_types_that_do_not_name_each_net_are_left_out(make_profile):
    keys = ["controlnet.nets.0", "controlnet.nets.1"]
    profile = make_profile(block_keys=keys, stats=statistics(keys, keys), num_steps=4, condition_type="seg")
    assert [n.kind for n in _get_controlnet_residuals_info(profile).nets] == ["", ""]


def test_a_profile_without_a_controlnet(make_profile):
    info = _get_controlnet_residuals_info(make_profile(block_keys=["unet.mid_block"]))
    assert info.nets == [] and not info.several
