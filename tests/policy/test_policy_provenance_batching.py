"""The provenance records how many samples one pipeline call generated in the search; a policy searched one
sample per call is written as before (no key), so existing files keep their bytes."""

from __future__ import annotations

import dataclasses
import json

from hgc_tune.policy import Policy, Provenance, dumps_policy, loads_policy


def test_samples_per_call_is_written_only_when_not_one_and_reads_back(tiny_target):
    plain = Policy(tiny_target(4), provenance=Provenance(source="search", trial=3), name="p")
    text = dumps_policy(plain)
    assert "samples_per_call" not in text
    assert loads_policy(text).select().provenance.samples_per_call == 1
    batched = dataclasses.replace(plain, provenance=Provenance(source="search", trial=3, samples_per_call=8))
    written = dumps_policy(batched)
    assert json.loads(written)["policies"][0]["provenance"]["samples_per_call"] == 8
    assert loads_policy(written).select().provenance.samples_per_call == 8
