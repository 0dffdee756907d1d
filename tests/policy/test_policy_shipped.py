"""The policy files shipped in policies/: valid, canonical, schema-conformant and what their names say."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
from _policy_fixtures import SD15_KEYS, SDXL_KEYS, TINY_KEYS

from hgc_tune.policy import Provenance, dumps_policy, load_policy, peer_policy
from hgc_tune.policy._peers import DEFAULT_PEERS

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SCHEMA = POLICIES / "policy.schema.json"
# Peer schedules are shipped as <model>-<peer>.json; tuned policies (from `hgc-tune search`) as <model>.json,
# <model>-<conditions>.json for several ControlNets at once (shapes-seg-depth.json: seg and depth), or
# <model>-caching-only.json for the same searches without the guidance window (the headline's column).
CACHING_ONLY = "caching-only"
SHIPPED = sorted(
    p for p in POLICIES.glob("*-*.json") if p != SCHEMA and p.stem.split("-", 1)[1] in DEFAULT_PEERS
)
TUNED = sorted(p for p in POLICIES.glob("*.json") if p != SCHEMA and p not in SHIPPED)
# The shapes model has SD1.5's block layout, so the same module keys; sdxl has SDXL base's.
KEYS = {"tiny": TINY_KEYS, "sd15": SD15_KEYS, "shapes": SD15_KEYS, "sdxl": SDXL_KEYS}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_preset_ships_every_default_peer() -> None:
    names = {p.name for p in SHIPPED}
    for model in KEYS:
        for peer in DEFAULT_PEERS:
            assert f"{model}-{peer}.json" in names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_policy_file(path: Path, validator) -> None:
    text = path.read_text()
    validator.validate(json.loads(text))
    pf = load_policy(path)
    # canonical: writing it again gives the same bytes
    assert dumps_policy(pf) == text
    policy = pf.select()
    model, peer = path.stem.split("-", 1)
    assert policy.target.model == model
    assert policy.target.num_steps == 20
    assert policy.target.scheduler == "UniPCMultistepScheduler"
    assert policy.target.condition_type is None
    assert policy.name == peer
    assert policy.provenance.source == f"peer:{peer}"
    # the schedule is exactly the peer generator's, for the preset's module keys
    expected = peer_policy(peer, policy.target, KEYS[model])
    assert dataclasses.replace(policy, provenance=Provenance(source=policy.provenance.source)) == expected


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_policy_macs_are_consistent(path: Path) -> None:
    macs = load_policy(path).select().provenance.macs
    if not macs:
        pytest.skip("written without a MAC table")
    assert set(macs) == {"paper", "complete"}
    for m in macs.values():
        assert m["policy"] == m["policy.unet"] + m["policy.controlnet"]
        assert m["full"] == m["full.unet"] + m["full.controlnet"]
        assert 0 < m["policy"] < m["full"]
        assert m["reduction"] == pytest.approx(1 - m["policy"] / m["full"])


@pytest.mark.parametrize("path", TUNED, ids=[p.stem for p in TUNED])
def test_tuned_policy_file(path: Path, validator) -> None:
    text = path.read_text()
    validator.validate(json.loads(text))
    pf = load_policy(path)
    assert dumps_policy(pf) == text
    assert len(set(pf.condition_types)) == len(pf.policies) >= 1
    for policy in pf.policies:
        prov = policy.provenance
        model, _, conditions = path.stem.partition("-")
        assert policy.target.model == model and policy.target.num_steps == 20
        if conditions == CACHING_ONLY:  # full CFG at every step: every MAC it saves is saved by caching
            assert policy.guidance is None or policy.guidance.cfg_until >= policy.num_steps
            assert policy.target.condition_type is not None
        elif conditions:  # one ControlNet per condition type, in the file name's order
            assert policy.target.condition_type == conditions.replace("-", ",")
            assert [c.condition_type for c in policy.target.controlnets] == conditions.split("-")
        # the search held it within its budget on the validation split, with the stated confidence, and
        # measured it on the test split, which took no part in choosing it; it saves MACs
        assert prov.source and prov.budget is not None and prov.metric and prov.confidence == 0.95
        assert prov.fidelity["validation_loss_upper"] <= prov.budget
        assert prov.fidelity["validation_loss"] <= prov.fidelity["validation_loss_upper"]
        assert prov.fidelity["test_samples"] >= 12 and "test_loss_upper" in prov.fidelity
        assert 0 < prov.macs["paper"]["reduction"] < 1
        assert pf.select(policy.target.condition_type) is policy
