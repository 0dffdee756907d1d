"""The executor on a pipeline with an unfused LoRA adapter (peft's layers inside the cached blocks and
cross-attention modules): the conformance rules hold, and the adapter stays in what is cached."""

from __future__ import annotations

import numpy as np
import pytest

from hgc_tune.executor import apply_policy
from hgc_tune.models import load_pipeline
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.models._lora import load_lora
from hgc_tune.policy import Policy, ReuseWindow, peer_policy, target_for_pipeline

STEPS = 5
ATTN2 = "unet.up_blocks.3.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture(scope="module")
def lora_pipe(tiny_lora):
    pipe = load_pipeline("tiny")
    load_lora(pipe, str(tiny_lora()), 0.8)
    return pipe


def test_policies_on_a_lora_pipeline_follow_the_conformance_rules(
    lora_pipe, tiny_pipe, condition_image, generate
):
    plain = generate(tiny_pipe, condition_image, STEPS)
    with_lora = generate(lora_pipe, condition_image, STEPS)
    assert not np.array_equal(with_lora, plain)  # the adapter is live
    target = target_for_pipeline(lora_pipe, num_steps=STEPS)
    # The LoRA changes no module key: the pipeline's cacheable modules and fingerprint are the base model's.
    assert cacheable_module_keys(lora_pipe).keys() == cacheable_module_keys(tiny_pipe).keys()
    assert target.fingerprint == target_for_pipeline(tiny_pipe, num_steps=STEPS).fingerprint
    with apply_policy(lora_pipe, Policy(target, name="full")):
        assert np.array_equal(generate(lora_pipe, condition_image, STEPS), with_lora)
    for policy in (
        peer_policy("deepcache-n3-b0", target, cacheable_module_keys(lora_pipe)),
        Policy(target, attention={ATTN2: (ReuseWindow(1, STEPS),)}, name="attention"),
    ):
        with apply_policy(lora_pipe, policy):
            cached = generate(lora_pipe, condition_image, STEPS)
            assert np.isfinite(cached).all() and not np.array_equal(cached, with_lora)
        assert np.array_equal(generate(lora_pipe, condition_image, STEPS), with_lora)
