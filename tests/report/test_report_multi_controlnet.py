"""Profile -> search space -> policy file -> executor -> report on a pipeline with two ControlNets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hgc_tune.data import open_dataset
from hgc_tune.models import load_pipeline
from hgc_tune.policy import load_policy, save_policy, target_for_pipeline
from hgc_tune.profile import profile_pipeline
from hgc_tune.report import build_report
from hgc_tune.search import PolicySpace

STEPS = 4
CONDITIONS = "seg,depth"


@pytest.fixture(scope="module")
def multi_pipe():
    torch.set_num_threads(1)
    return load_pipeline("tiny", condition=CONDITIONS)


@pytest.fixture(scope="module")
def profile(multi_pipe):
    dataset = open_dataset("shapes", condition_type=CONDITIONS, limit=2)
    return profile_pipeline(
        multi_pipe, dataset, num_steps=STEPS, progress=False, model_name="tiny", condition_type=CONDITIONS
    )


def test_two_controlnets_from_profile_to_report(multi_pipe, profile, tmp_path) -> None:
    target = target_for_pipeline(multi_pipe, num_steps=STEPS, condition_type=CONDITIONS, model="tiny")
    space = PolicySpace.from_profile(profile, target)
    assert space.controlnet_keys == ["controlnet.nets.0", "controlnet.nets.1"]
    params = dict(space.peer_params("full-compute"))
    params.update(
        {
            "blocks.schedule": "threshold",
            "blocks.branch": 0,
            "blocks.unet.threshold": space.threshold_bounds("unet")[1],
            "blocks.controlnet.nets.0.threshold": space.threshold_bounds("controlnet.nets.0")[1],
            "blocks.controlnet.nets.1.threshold": space.threshold_bounds("controlnet.nets.1")[0],
            "controlnet.nets.0.steps": 2,
            "controlnet.nets.0.mode": "drop",
        }
    )
    policy = space.build(params, name="two-controlnets")
    assert policy.controlnets["controlnet.nets.0"].steps == (0, 1)
    assert "controlnet.nets.1" not in policy.controlnets
    path = save_policy(policy, tmp_path / "multi.json")
    loaded = load_policy(path).select(CONDITIONS)
    assert loaded == policy

    result = build_report(profile, tmp_path / "report", policy=loaded, samples=1, pipe=multi_pipe)
    assert {"similarity_controlnet_0", "similarity_controlnet_1"} <= set(result.figures)
    assert "similarity_controlnet" not in result.figures
    assert {"policy_grid", "controlnet_residuals", "samples"} <= set(result.figures)
    assert result.summary["policy"]["controlnets"]["controlnet.nets.0"] == {"steps": [0, 1], "mode": "drop"}
    page = result.index.read_text()
    assert "ControlNet 1 block similarity (controlnet.nets.1, depth)" in page
    assert "controlnet.nets.0: runs at steps [0, 1]; elsewhere dropped" in page
    # the report's policy images are the executor's: compare one with a direct run
    from hgc_tune.executor import apply_policy
    from hgc_tune.generation._inputs import condition_input

    with apply_policy(multi_pipe, loaded, condition_type=CONDITIONS):
        out = multi_pipe(
            profile.prompts[0],
            negative_prompt=profile.negative_prompts[0],
            image=condition_input(profile.condition_images[0]),
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(profile.seeds[0]),
            output_type="np",
        ).images[0]
    assert np.isfinite(out).all()


def test_search_on_two_controlnets_writes_a_version_2_policy(multi_pipe, profile, tmp_path) -> None:
    from hgc_tune.policy import dumps_policy
    from hgc_tune.search import SearchConfig, search_policy, write_search_outputs

    folder = profile.save(tmp_path / "profile")
    heldout = open_dataset("shapes", condition_type=CONDITIONS, split="validation", limit=1)
    test = open_dataset("shapes", condition_type=CONDITIONS, split="test", limit=1)
    config = SearchConfig(budget=0.5, metric="ssim", n_trials=6, seed=1, confidence=0, calibration_samples=2)
    result = search_policy(folder, multi_pipe, config, heldout=heldout, test=test)
    assert result.ok, result.message
    paths = write_search_outputs(result, tmp_path / "policies" / "multi.json")
    policy = load_policy(paths["policy"]).select(CONDITIONS)
    assert [c.condition_type for c in policy.target.controlnets] == ["seg", "depth"]
    # several ControlNets need version 2; the constraints it was searched under, version 3
    assert '"schema_version": 3' in dumps_policy(policy) and policy.provenance.constraints is not None
    with __import__("hgc_tune").apply_policy(multi_pipe, policy, condition_type=CONDITIONS):
        pass
