"""The weights digest and guidance scale in a policy's provenance: optional fields, written only when
recorded (older files load without them and keep their bytes), checked by the schema, and recorded by a
search from its profile."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hgc_tune.errors import PolicyFormatError
from hgc_tune.policy import Provenance, dumps_policy, full_compute_policy, load_policy, loads_policy
from hgc_tune.policy._measured_on import describe_measured_on

POLICIES = Path(__file__).resolve().parents[2] / "policies"
DIGEST = "0123456789abcdef"


def _with(tiny_target, **fields):
    return dataclasses.replace(
        full_compute_policy(tiny_target(num_steps=4)), provenance=Provenance(source="search", **fields)
    )


def test_the_fields_round_trip(tiny_target):
    text = dumps_policy(_with(tiny_target, weights_digest=DIGEST, guidance_scale=3.0))
    provenance = json.loads(text)["policies"][0]["provenance"]
    assert (provenance["weights_digest"], provenance["guidance_scale"]) == (DIGEST, 3.0)
    loaded = loads_policy(text).select().provenance
    assert (loaded.weights_digest, loaded.guidance_scale) == (DIGEST, 3.0)
    assert describe_measured_on(loaded) == f"weights {DIGEST} at guidance 3"


def test_files_without_them_load_and_keep_their_bytes():
    # policies/shapes-seg-depth.json was written before the fields existed
    text = (POLICIES / "shapes-seg-depth.json").read_text()
    file = loads_policy(text)
    for policy in file.policies:
        assert policy.provenance.weights_digest is None and policy.provenance.guidance_scale is None
        assert describe_measured_on(policy.provenance) == "unrecorded settings"
    assert dumps_policy(file) == text


def test_unset_fields_are_not_written(tiny_target):
    provenance = json.loads(dumps_policy(_with(tiny_target)))["policies"][0]["provenance"]
    assert "weights_digest" not in provenance and "guidance_scale" not in provenance


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("weights_digest", "not-a-digest", "weights_digest"), ("guidance_scale", "3", "guidance_scale")],
)
def test_the_schema_refuses_a_malformed_value(tiny_target, field, value, expected):
    document = json.loads(dumps_policy(_with(tiny_target)))
    document["policies"][0]["provenance"][field] = value
    with pytest.raises(PolicyFormatError, match=expected):
        loads_policy(json.dumps(document))


def test_a_search_records_the_profiles_weights_and_guidance(tmp_path):
    from hgc_tune.data import open_dataset
    from hgc_tune.models import load_pipeline
    from hgc_tune.profile import profile_pipeline
    from hgc_tune.search import SearchConfig, search_policy

    pipe = load_pipeline("tiny")
    samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=2)
    profile = profile_pipeline(
        pipe, samples, num_steps=3, guidance_scale=2.0, progress=False, model_name="tiny"
    )
    result = search_policy(
        profile, pipe, SearchConfig(budget=0.9, metric="ssim", confidence=0.0, n_trials=2, peers=())
    )
    assert result.policy is not None
    provenance = result.policy.provenance
    assert provenance.weights_digest == profile.weights_digest and provenance.guidance_scale == 2.0
    saved = tmp_path / "policy.json"
    saved.write_text(dumps_policy(result.policy))
    assert load_policy(saved).select().provenance.guidance_scale == 2.0
