"""Peer schedules (DeepCache, T-GATE, ControlNet windows) expressed as policies."""

from __future__ import annotations

import pytest
from _policy_fixtures import SD15_KEYS, TINY_KEYS, make_target

from hgc_tune.errors import PolicyError
from hgc_tune.policy import (
    ControlNetWindow,
    GuidanceWindow,
    ReuseWindow,
    controlnet_window_policy,
    deepcache_policy,
    dumps_policy,
    loads_policy,
    peer_policy,
    tgate_policy,
)
from hgc_tune.policy._peers import DEFAULT_PEERS, PEERS

T20 = make_target(20)


def test_deepcache_n3_b0_tiny_hand_listed() -> None:
    p = deepcache_policy(T20, TINY_KEYS, 3, 0)
    refresh = (0, 3, 6, 9, 12, 15, 18)
    assert dict(p.blocks) == {
        "controlnet.down_blocks.1": refresh,
        "controlnet.down_blocks.2": refresh,
        "controlnet.down_blocks.3": refresh,
        "controlnet.mid_block": refresh,
        "unet.down_blocks.1": refresh,
        "unet.down_blocks.2": refresh,
        "unet.down_blocks.3": refresh,
        "unet.mid_block": refresh,
        "unet.up_blocks.0": refresh,
        "unet.up_blocks.1": refresh,
        "unet.up_blocks.2": refresh,
    }
    assert dict(p.attention) == {} and p.controlnet is None and p.guidance is None
    assert p.name == "deepcache-n3-b0" and p.provenance.source == "peer:deepcache-n3-b0"


def test_deepcache_deeper_branches() -> None:
    p = deepcache_policy(make_target(7), TINY_KEYS, 5, 1)
    assert dict(p.blocks) == {
        key: (0, 5)
        for key in [
            "controlnet.down_blocks.2",
            "controlnet.down_blocks.3",
            "controlnet.mid_block",
            "unet.down_blocks.2",
            "unet.down_blocks.3",
            "unet.mid_block",
            "unet.up_blocks.0",
            "unet.up_blocks.1",
        ]
    }
    # the deepest branch caches only the mid blocks
    assert set(deepcache_policy(T20, TINY_KEYS, 2, 3).blocks) == {"controlnet.mid_block", "unet.mid_block"}
    # key order does not matter; SD1.5's layout gives the same blocks as tiny's
    assert (
        deepcache_policy(T20, SD15_KEYS[::-1], 3, 0).blocks == deepcache_policy(T20, TINY_KEYS, 3, 0).blocks
    )


def test_deepcache_degenerate_intervals() -> None:
    assert dict(deepcache_policy(T20, TINY_KEYS, 1, 0).blocks) == {}
    p = deepcache_policy(T20, TINY_KEYS, 50, 0)
    assert set(p.blocks.values()) == {(0,)}


def test_deepcache_without_controlnet_keys() -> None:
    keys = [k for k in TINY_KEYS if k.startswith("unet")]
    assert all(k.startswith("unet.") for k in deepcache_policy(T20, keys, 3, 0).blocks)


@pytest.mark.parametrize(
    ("interval", "branch", "message"),
    [
        (0, 0, r"`interval` must be an integer >= 1, but got interval=0"),
        (True, 0, r"`interval` must be an integer >= 1, but got interval=True"),
        (3, 4, r"`branch` must be an integer \[0, 3\], but got branch=4"),
        (3, -1, r"`branch` must be an integer \[0, 3\], but got branch=-1"),
    ],
)
def test_deepcache_bad_parameters(interval, branch, message) -> None:
    with pytest.raises(PolicyError, match=message):
        deepcache_policy(T20, TINY_KEYS, interval, branch)


def test_deepcache_needs_unet_blocks() -> None:
    with pytest.raises(PolicyError, match="needs the U-Net's down and up blocks"):
        deepcache_policy(T20, ["controlnet", "controlnet.down_blocks.0"], 3, 0)


def test_tgate() -> None:
    p = tgate_policy(T20, TINY_KEYS, 10)
    attn2 = sorted(k for k in TINY_KEYS if k.endswith(".attn2"))
    assert len(attn2) == 14
    assert dict(p.attention) == {k: (ReuseWindow(9, 20),) for k in attn2}
    # cross-attention computes at steps 0..9 (the gate step's map is the one kept), reused from 10 on
    assert all(steps == frozenset(range(10)) for steps in p.compute_sets().values())
    assert p.guidance is None and dict(p.blocks) == {}
    assert p.name == "tgate-g10" and p.provenance.source == "peer:tgate-g10"
    q = tgate_policy(T20, TINY_KEYS, 10, truncate_cfg=True)
    assert q.guidance == GuidanceWindow(10) and q.attention == p.attention and q.name == "tgate-g10-cfg"
    assert [q.cfg_branches(s, True) for s in (9, 10)] == [2, 1]


def test_tgate_edges() -> None:
    assert dict(tgate_policy(T20, TINY_KEYS, 20).attention) == {}
    assert set(tgate_policy(T20, TINY_KEYS, 1).attention.values()) == {(ReuseWindow(0, 20),)}
    with pytest.raises(PolicyError, match=r"`gate_step` must be an integer \[1, 20\], but got gate_step=21"):
        tgate_policy(T20, TINY_KEYS, 21)
    with pytest.raises(PolicyError, match="gate_step=0"):
        tgate_policy(T20, TINY_KEYS, 0)
    with pytest.raises(PolicyError, match="needs cross-attention"):
        tgate_policy(T20, ["unet.mid_block"], 10)


def test_controlnet_window() -> None:
    p = controlnet_window_policy(T20, TINY_KEYS, 10)
    assert p.controlnet == ControlNetWindow(tuple(range(10)), "drop")
    assert dict(p.blocks) == {} and dict(p.attention) == {}
    assert p.name == "cnwin-k10-drop" and p.provenance.source == "peer:cnwin-k10-drop"
    assert controlnet_window_policy(T20, TINY_KEYS, 4, "reuse").controlnet == ControlNetWindow(
        (0, 1, 2, 3), "reuse"
    )
    assert controlnet_window_policy(T20, TINY_KEYS, 0).controlnet == ControlNetWindow((), "drop")
    assert controlnet_window_policy(T20, TINY_KEYS, 20).controlnet is None


def test_controlnet_window_errors() -> None:
    with pytest.raises(PolicyError, match=r"`first_k` must be an integer \[1, 20\], but got first_k=0"):
        controlnet_window_policy(T20, TINY_KEYS, 0, "reuse")
    with pytest.raises(PolicyError, match=r"`mode` must be one of \['reuse', 'drop'\], but got mode='skip'"):
        controlnet_window_policy(T20, TINY_KEYS, 3, "skip")
    with pytest.raises(PolicyError, match="needs a pipeline with a ControlNet"):
        controlnet_window_policy(T20, ["unet.mid_block"], 3)


def test_peer_policy_by_name() -> None:
    assert peer_policy("deepcache-n3-b0", T20, TINY_KEYS) == deepcache_policy(T20, TINY_KEYS, 3, 0)
    assert peer_policy("deepcache-n5-b2", T20, TINY_KEYS) == deepcache_policy(T20, TINY_KEYS, 5, 2)
    assert peer_policy("tgate-g10", T20, TINY_KEYS) == tgate_policy(T20, TINY_KEYS, 10)
    assert peer_policy("tgate-g7-cfg", T20, TINY_KEYS) == tgate_policy(T20, TINY_KEYS, 7, True)
    assert peer_policy("cnwin-k10-drop", T20, TINY_KEYS) == controlnet_window_policy(T20, TINY_KEYS, 10)
    assert peer_policy("cnwin-k3-reuse", T20, TINY_KEYS) == controlnet_window_policy(
        T20, TINY_KEYS, 3, "reuse"
    )
    assert set(PEERS) == {"deepcache", "tgate", "cnwin"}


@pytest.mark.parametrize(
    "name", ["deepcache-n3", "deepcache-n3-b0-x", "tgate", "tgate-g10-cfg2", "cnwin-k10-skip", ""]
)
def test_peer_policy_unknown_name(name: str) -> None:
    with pytest.raises(
        PolicyError, match=rf"unknown peer policy name '{name}'; known forms: deepcache-n<interval>"
    ):
        peer_policy(name, T20, TINY_KEYS)


def test_peer_policy_parameter_errors_pass_through() -> None:
    with pytest.raises(PolicyError, match="gate_step=30"):
        peer_policy("tgate-g30", T20, TINY_KEYS)


def test_default_peers_round_trip() -> None:
    for name in DEFAULT_PEERS:
        p = peer_policy(name, T20, SD15_KEYS)
        assert loads_policy(dumps_policy(p)).select() == p
