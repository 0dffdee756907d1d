"""Schema version 3: the constraints a policy was searched under and its fidelity to the full-compute picture;
older files still load and keep their version."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from _policy_fixtures import make_target

from hgc_tune.errors import PolicyFormatError
from hgc_tune.policy import Policy, PolicyFile, Provenance, dumps_policy, load_policy, loads_policy
from hgc_tune.policy._io import policy_from_json, policy_to_json

POLICIES = Path(__file__).resolve().parents[2] / "policies"

CONSTRAINTS = {
    "confidence": 0.95,
    "k": 2,
    "level": 0.975,
    "sharing": "bonferroni",
    "prompt": "background",
    "items": [
        {"metric": "miou", "kind": "task", "loss_mode": "relative", "budget": 0.015, "test_loss_upper": 0.01},
        {
            "metric": "background",
            "kind": "prompt",
            "loss_mode": "absolute",
            "budget": 0.015,
            "test_loss": 0.0,
        },
    ],
}


def _guarded() -> Policy:
    provenance = Provenance(
        source="search",
        budget=0.015,
        metric="miou",
        confidence=0.95,
        constraints=CONSTRAINTS,
        picture_fidelity={"test_ssim": 0.91, "test_psnr": 28.5},
    )
    return Policy(target=make_target(10, "seg"), blocks={"unet.mid_block": (0, 4, 8)}, provenance=provenance)


def test_constraints_and_picture_fidelity_round_trip():
    text = dumps_policy(_guarded())
    assert '"schema_version": 3' in text
    policy = loads_policy(text).select()
    assert policy.provenance.constraints == CONSTRAINTS
    assert policy.provenance.picture_fidelity == {"test_ssim": 0.91, "test_psnr": 28.5}
    assert dumps_policy(policy) == text


@pytest.mark.parametrize(
    ("path", "version"),
    [("shapes-seg-depth.json", 2), ("tiny-deepcache-n3-b0.json", 1), ("sd15-tgate-g10.json", None)],
)
def test_older_files_load_and_keep_their_version(path, version):
    file = load_policy(POLICIES / path)
    if version is not None:
        assert file.schema_version == version
    assert all(p.provenance.constraints is None for p in file.policies)
    assert dumps_policy(file) == (POLICIES / path).read_text()


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_version_cannot_hold_constraints(version):
    data = policy_to_json(_guarded())
    data["schema_version"] = version
    with pytest.raises(
        PolicyFormatError, match=rf"provenance.constraints is not allowed with schema_version {version}"
    ):
        policy_from_json(data)
    with pytest.raises(PolicyFormatError, match="write it with schema_version 3"):
        PolicyFile((_guarded(),), schema_version=version)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("k"), "missing required key 'k'"),
        (lambda c: c.update(k=0), "must be >= 1"),
        (lambda c: c["items"][1].update(budget=1.5), "budget"),
        (lambda c: c["items"][0].update(kind="visual"), "must be one of"),
        (lambda c: c.update(items=[]), "at least 1"),
    ],
)
def test_bad_constraints_name_the_field(edit, message):
    data = policy_to_json(_guarded())
    constraints = copy.deepcopy(CONSTRAINTS)
    edit(constraints)
    data["policies"][0]["provenance"]["constraints"] = constraints
    with pytest.raises(PolicyFormatError, match=message):
        policy_from_json(data)
