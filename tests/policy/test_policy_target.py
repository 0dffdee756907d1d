"""target_for_pipeline and the peer generators on the real tiny preset."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _policy_fixtures import SD15_KEYS, SDXL_KEYS, TINY_KEYS

from hgc_tune.policy import PolicyTarget, load_policy, peer_policy, target_for_pipeline

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(scope="module")
def tiny():
    from hgc_tune.models import load_pipeline

    return load_pipeline("tiny")


def test_target_for_pipeline(tiny) -> None:
    from hgc_tune.models import model_fingerprint

    t = target_for_pipeline(tiny, num_steps=20, condition_type="seg", model="tiny")
    assert t == PolicyTarget(
        pipeline_class="StableDiffusionControlNetPipeline",
        unet_class="UNet2DConditionModel",
        controlnet_class="ControlNetModel",
        fingerprint=model_fingerprint(tiny),
        num_steps=20,
        scheduler="UniPCMultistepScheduler",
        condition_type="seg",
        model="tiny",
    )
    assert len(t.fingerprint) == 16


def test_tiny_module_keys_fixture_matches_the_preset(tiny) -> None:
    from hgc_tune.models._blocks import cacheable_module_keys

    assert sorted(cacheable_module_keys(tiny)) == sorted(TINY_KEYS)


def test_shipped_tiny_policies_fit_the_tiny_preset(tiny) -> None:
    from hgc_tune.models._blocks import cacheable_module_keys

    target = target_for_pipeline(tiny, num_steps=20, model="tiny")
    keys = set(cacheable_module_keys(tiny))
    paths = sorted(POLICIES.glob("tiny-*.json"))
    assert paths
    for path in paths:
        policy = load_policy(path).select()
        assert policy.target == target, path.name
        assert set(policy.compute_sets()) <= keys, path.name
        assert peer_policy(policy.name, target, keys).compute_sets() == policy.compute_sets()


def test_policy_package_import_stays_light() -> None:
    # reading and writing policies must not need torch (hgc-tune --help and policy tooling stay fast)
    import subprocess

    code = "import sys, hgc_tune.policy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_sd15_module_keys_fixture_and_shipped_targets() -> None:
    from hgc_tune.models import load_pipeline
    from hgc_tune.models._blocks import cacheable_module_keys

    pipe = load_pipeline("sd15")
    assert sorted(cacheable_module_keys(pipe)) == sorted(SD15_KEYS)
    target = target_for_pipeline(pipe, num_steps=20, model="sd15")
    for path in sorted(POLICIES.glob("sd15-*.json")):
        assert load_policy(path).select().target == target, path.name


def test_sdxl_module_keys_fixture_and_shipped_targets() -> None:
    # storage-free weights: the 2.6 B-parameter U-Net's structure without its memory
    from hgc_tune.models import load_pipeline
    from hgc_tune.models._blocks import cacheable_module_keys

    pipe = load_pipeline("sdxl", shape_only=True)
    keys = cacheable_module_keys(pipe)
    assert sorted(keys) == sorted(SDXL_KEYS)
    target = target_for_pipeline(pipe, num_steps=20, model="sdxl")
    assert target.pipeline_class == "StableDiffusionXLControlNetPipeline"
    paths = sorted(POLICIES.glob("sdxl-*.json"))
    assert paths
    for path in paths:
        policy = load_policy(path).select()
        assert policy.target == target, path.name
        assert peer_policy(policy.name, target, keys).compute_sets() == policy.compute_sets()
