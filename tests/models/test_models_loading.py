"""Presets, loading a locally saved pipeline, and the errors for bad model input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hgc_tune.errors import (
    IncompatibleControlNetError,
    ModelNotFoundError,
    NotAPipelineError,
    UnknownPresetError,
)
from hgc_tune.models import load_pipeline, model_fingerprint
from hgc_tune.models._tokenizer import build_offline_tokenizer


def _generate(pipe, image):
    return pipe(
        "a red circle",
        image=image,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


def test_saved_tiny_pipeline_loads_back_bit_identical(tiny_pipe, condition_image, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    tiny_pipe.controlnet.save_pretrained(tmp_path / "cn", safe_serialization=True)
    # the base-model + --controlnet path a real user takes, and a pipeline folder holding its ControlNet
    for controlnet in (str(tmp_path / "cn"), None):
        loaded = load_pipeline(str(tmp_path / "pipe"), controlnet=controlnet)
        assert model_fingerprint(loaded) == model_fingerprint(tiny_pipe)
        assert np.array_equal(_generate(loaded, condition_image), _generate(tiny_pipe, condition_image))


def test_tiny_preset_is_seeded():
    a, b = load_pipeline("tiny"), load_pipeline("tiny")
    assert torch.equal(a.unet.conv_in.weight, b.unet.conv_in.weight)
    assert not torch.equal(load_pipeline("tiny", seed=1).unet.conv_in.weight, a.unet.conv_in.weight)


def test_offline_tokenizer_is_clip_compatible():
    tok = build_offline_tokenizer()
    ids = tok("A photo of a red circle", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids[1:7]) == [
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "red</w>",
        "circle</w>",
    ]
    assert ids[7] == tok.eos_token_id
    # unknown words fall back to byte-level pieces rather than failing
    assert tok.convert_ids_to_tokens(tok("zq").input_ids)[1:3] == ["z", "q</w>"]


def test_unknown_preset():
    with pytest.raises(
        UnknownPresetError, match=r"preset \(sd15, sdxl, shapes, tiny, tiny-sdxl\).*model='sd99'"
    ):
        load_pipeline("sd99")


def test_missing_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_pipeline(str(tmp_path / "nowhere"))


def test_directory_that_is_not_a_pipeline(tiny_pipe, tmp_path):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    with pytest.raises(NotAPipelineError, match=r"model_index\.json"):
        load_pipeline(str(tmp_path / "random"))
    (tmp_path / "cn").mkdir()
    (tmp_path / "cn" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    with pytest.raises(
        NotAPipelineError, match="holds a 'UNet2DConditionModel'.*'ControlNetModel' was expected"
    ):
        load_pipeline(str(tmp_path / "pipe"), controlnet=str(tmp_path / "cn"))


def test_controlnet_that_does_not_fit(tiny_pipe, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    tiny_pipe.save_pretrained(tmp_path / "pipe")
    other = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    ControlNetModel.from_unet(other, conditioning_embedding_out_channels=(8, 16)).save_pretrained(
        tmp_path / "cn"
    )
    with pytest.raises(
        IncompatibleControlNetError, match=r"block_out_channels: base U-Net has \[16, 32, 32, 32\]"
    ):
        load_pipeline(str(tmp_path / "pipe"), controlnet=str(tmp_path / "cn"))


def test_hostile_model_configs_are_refused_as_not_a_pipeline(tmp_path):
    nested = "[" * 100_000 + "]" * 100_000
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model_index.json").write_text(nested)
    with pytest.raises(NotAPipelineError, match=r"pipeline index .*model_index\.json'.*nested deeper"):
        load_pipeline(str(tmp_path / "base"))
    (tmp_path / "base" / "model_index.json").write_text('{"unet": [1]')
    with pytest.raises(NotAPipelineError, match="malformed JSON at line 1"):
        load_pipeline(str(tmp_path / "base"))
