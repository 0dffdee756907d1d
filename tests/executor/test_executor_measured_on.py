"""A tuned policy applied to other weights, or called at another guidance scale, than its figures were
measured on: it runs, and warns once (``ProvenanceMismatchWarning``) saying what they were measured on."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from hgc_tune.errors import ProvenanceMismatchWarning
from hgc_tune.executor import apply_policy
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.models._fingerprint import weights_digest
from hgc_tune.policy import Provenance, peer_policy, target_for_pipeline

STEPS = 2
OTHER_WEIGHTS = "0123456789abcdef"


@pytest.fixture(autouse=True)
def _fresh_warnings(tiny_pipe):
    """The shared pipeline remembers the warnings it gave (once each): start every test without them."""
    vars(tiny_pipe).pop("_hgc_provenance_warned", None)


def _policy(pipe, **measured_on):
    target = target_for_pipeline(pipe, num_steps=STEPS)
    policy = peer_policy("deepcache-n2-b0", target, cacheable_module_keys(pipe))
    return dataclasses.replace(policy, name="tuned", provenance=Provenance(source="search", **measured_on))


def _mismatches(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ProvenanceMismatchWarning)]


def test_same_weights_and_guidance_do_not_warn(tiny_pipe, condition_image, generate):
    policy = _policy(tiny_pipe, weights_digest=weights_digest(tiny_pipe), guidance_scale=7.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with apply_policy(tiny_pipe, policy):
            generate(tiny_pipe, condition_image, STEPS, guidance_scale=7.5)
    assert _mismatches(caught) == []


def test_other_weights_warn_once_naming_what_the_figures_were_measured_on(tiny_pipe):
    policy = _policy(tiny_pipe, weights_digest=OTHER_WEIGHTS, guidance_scale=3.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            apply_policy(tiny_pipe, policy).remove()
    (message,) = _mismatches(caught)
    assert f"measured on weights {OTHER_WEIGHTS} at guidance 3" in message
    assert f"this pipeline holds weights {weights_digest(tiny_pipe)}" in message


def test_another_guidance_warns_once_per_scale(tiny_pipe, condition_image, generate):
    policy = _policy(tiny_pipe, weights_digest=weights_digest(tiny_pipe), guidance_scale=3.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with apply_policy(tiny_pipe, policy):
            generate(tiny_pipe, condition_image, STEPS, guidance_scale=3.0)
            assert _mismatches(caught) == []
            for _ in range(2):
                generate(tiny_pipe, condition_image, STEPS, guidance_scale=7.5)
            generate(tiny_pipe, condition_image, STEPS, guidance_scale=1.0)
    first, second = _mismatches(caught)
    assert "called at guidance 7.5, but its figures were measured on weights" in first
    assert "at guidance 3" in first and "guidance_scale=3" in first
    assert "called at guidance 1," in second


def test_policies_that_record_neither_never_warn(tiny_pipe, condition_image, generate):
    policy = _policy(tiny_pipe)  # a file written before the fields existed, a peer schedule
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with apply_policy(tiny_pipe, policy):
            generate(tiny_pipe, condition_image, STEPS, guidance_scale=2.0)
    assert _mismatches(caught) == []
