"""Policies survive ``copy.deepcopy`` and ``pickle`` (e.g. to ship them to worker processes)."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
from _policy_fixtures import make_target

from hgc_tune.policy import (
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    Provenance,
    ReuseWindow,
    load_policy,
)

ATTN2 = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2"
SHIPPED = sorted(p for p in (Path(__file__).parents[2] / "policies").glob("*.json") if "schema" not in p.name)


def _every_field() -> Policy:
    return Policy(
        make_target(8, condition_type="seg"),
        blocks={"unet.mid_block": (0, 4), "controlnet.down_blocks.3": (0, 2, 6)},
        attention={ATTN2: (ReuseWindow(1, 4), ReuseWindow(5, 8))},
        controlnet=ControlNetWindow((0, 1, 2), "drop"),
        guidance=GuidanceWindow(6),
        provenance=Provenance(budget=0.015, fidelity={"full": 0.9}, macs={"paper": {"policy": 1.0}}),
        name="every-field",
    )


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda p: pickle.loads(pickle.dumps(p))])
def test_a_policy_copies_equal_and_stays_read_only(copier):
    policy = _every_field()
    copied = copier(policy)
    assert copied == policy and copied is not policy
    assert copied.compute_sets() == policy.compute_sets()
    with pytest.raises(TypeError):
        copied.blocks["unet.up_blocks.0"] = (0,)  # type: ignore[index]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policy_files_pickle(path):
    policy_file = load_policy(path)
    assert pickle.loads(pickle.dumps(policy_file)) == policy_file
