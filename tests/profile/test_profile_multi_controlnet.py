"""Profiling a pipeline with two ControlNets: each net's block similarity, a condition image per net."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hgc_tune.data import open_dataset
from hgc_tune.data._dataset import MultiSample
from hgc_tune.macs import MacTable
from hgc_tune.models import load_pipeline
from hgc_tune.profile import Profile, profile_pipeline

STEPS = 3
EMPTY_TABLE = MacTable(model="tiny", height=64, width=64, per_image={})


@pytest.fixture(scope="module")
def multi_pipe():
    torch.set_num_threads(1)
    return load_pipeline("tiny", condition="seg,depth")


def test_shapes_samples_give_one_condition_image_per_type() -> None:
    dataset = open_dataset("shapes", condition_type="seg,depth", limit=2)
    assert len(dataset) == 2 and dataset.condition_type == "seg,depth"
    sample = dataset[0]
    assert isinstance(sample, MultiSample) and sample.condition_type == "seg,depth"
    seg, depth = sample.condition_image()
    single = open_dataset("shapes", condition_type="depth", limit=2)[0]
    assert np.array_equal(np.asarray(depth), np.asarray(single.condition_image()))
    assert sample.prompt == single.prompt and sample.seed == single.seed
    assert not np.array_equal(np.asarray(seg), np.asarray(depth))


def test_profile_records_each_controlnet(multi_pipe, tmp_path) -> None:
    dataset = open_dataset("shapes", condition_type="seg,depth", limit=2)
    profile = profile_pipeline(
        multi_pipe, dataset, num_steps=STEPS, progress=False, model_name="tiny", mac_table=EMPTY_TABLE
    )
    for i in (0, 1):
        assert f"controlnet.nets.{i}" in profile.block_keys
        assert f"controlnet.nets.{i}.mid_block" in profile.block_keys
        change = profile.stat("mean_rel_l1", f"controlnet.nets.{i}")
        assert np.isnan(change[0]) and np.isfinite(change[1:]).all()
    # the two nets see different conditions and weights: their residuals change differently
    assert not np.allclose(
        profile.stat("mean_rel_l1", "controlnet.nets.0"),
        profile.stat("mean_rel_l1", "controlnet.nets.1"),
        equal_nan=True,
    )
    assert profile.condition_type == "seg,depth"
    assert profile.condition_images.shape == (2, 2, 64, 64, 3)
    # the references are what the pipeline generates from the stored conditions
    conditions = [
        [__import__("PIL.Image").Image.fromarray(c) for c in pair] for pair in profile.condition_images
    ]
    out = multi_pipe(
        dataset[0].prompt,
        image=conditions[0],
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(profile.meta["seeds"][0]),
        output_type="np",
    ).images[0]
    assert np.array_equal((out * 255).round().astype(np.uint8), profile.reference_images[0])
    profile.save(tmp_path / "p")
    back = Profile.load(tmp_path / "p")
    assert back.condition_images.shape == (2, 2, 64, 64, 3)


def test_the_shapes_model_combines_its_controlnets() -> None:
    from hgc_tune.policy import target_for_pipeline

    pipe = load_pipeline("shapes", condition="seg,depth")
    seg = load_pipeline("shapes", condition="seg")
    nets = pipe.controlnet.nets
    assert type(pipe.controlnet).__name__ == "MultiControlNetModel" and len(nets) == 2
    assert torch.equal(nets[0].conv_in.weight, seg.controlnet.conv_in.weight)
    assert not torch.equal(nets[1].controlnet_mid_block.weight, seg.controlnet.controlnet_mid_block.weight)
    target = target_for_pipeline(pipe, num_steps=20, condition_type="seg,depth")
    assert [c.condition_type for c in target.controlnets] == ["seg", "depth"]
