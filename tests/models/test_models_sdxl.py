"""The SDXL presets: ``sdxl`` has SDXL base's architecture (checked on the meta device and storage-free, never
with its 10 GB of weights), ``tiny-sdxl`` its structure; the module layout reads their three-block U-Nets."""

from __future__ import annotations

import pytest
import torch

from hgc_tune.errors import ModelLoadError
from hgc_tune.models import load_pipeline, model_fingerprint
from hgc_tune.models._blocks import (
    block_paths,
    cacheable_module_keys,
    cross_attention_paths,
    deep_block_keys,
    max_branch,
)
from hgc_tune.models._loading import check_controlnet_fits
from hgc_tune.models._presets import SDXL_UNET_CONFIG, build_preset_components

CLASSES = {"unet": "UNet2DConditionModel", "controlnet": "ControlNetModel"}


@pytest.fixture(scope="module")
def sdxl_meta():
    with torch.device("meta"):
        return build_preset_components("sdxl")


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sdxl_preset_is_sdxl_base(sdxl_meta):
    unet, controlnet = sdxl_meta["unet"], sdxl_meta["controlnet"]
    for field, value in SDXL_UNET_CONFIG.items():
        got = unet.config[field]
        assert (list(got) if isinstance(got, list | tuple) else got) == (
            list(value) if isinstance(value, tuple) else value
        ), field
    # SDXL base U-Net: 2,567,463,684 parameters; a ControlNet.from_unet of it (controlnet-*-sdxl-1.0)
    assert _params(unet) == 2_567_463_684
    assert _params(controlnet) == 1_251_014_160
    check_controlnet_fits(unet.config, controlnet.config)
    assert controlnet.config.addition_embed_type == "text_time"
    assert list(controlnet.config.transformer_layers_per_block) == [1, 2, 10]
    te1, te2 = sdxl_meta["text_encoder"], sdxl_meta["text_encoder_2"]
    assert type(te1).__name__ == "CLIPTextModel" and te1.config.hidden_size == 768
    assert type(te2).__name__ == "CLIPTextModelWithProjection"
    assert (te2.config.hidden_size, te2.config.num_hidden_layers, te2.config.projection_dim) == (
        1280,
        32,
        1280,
    )
    # the cross-attention context is both encoders' hidden states side by side; the text_time embedding takes
    # the pooled projection and six time ids
    assert te1.config.hidden_size + te2.config.hidden_size == unet.config.cross_attention_dim
    assert te2.config.projection_dim + 6 * unet.config.addition_time_embed_dim == 2816
    assert sdxl_meta["vae"].config.scaling_factor == 0.13025


def test_sdxl_shape_only_pipeline_takes_no_memory():
    pipe = load_pipeline("sdxl", shape_only=True)
    assert type(pipe).__name__ == "StableDiffusionXLControlNetPipeline"
    for component in ("unet", "controlnet", "text_encoder_2", "vae"):
        for p in getattr(pipe, component).parameters():
            assert p.device.type == "cpu" and p.untyped_storage().nbytes() <= 4
    keys = cacheable_module_keys(pipe)
    blocks = [k for k in keys if "attn2" not in k]
    assert blocks == [
        "controlnet",
        *[f"controlnet.down_blocks.{i}" for i in range(3)],
        "controlnet.mid_block",
        *[f"unet.down_blocks.{i}" for i in range(3)],
        "unet.mid_block",
        *[f"unet.up_blocks.{i}" for i in range(3)],
    ]
    # attn2 per transformer layer: down 2x2 + 2x10, mid 10, up 3x10 + 3x2 (the ControlNet: down and mid)
    assert len(cross_attention_paths(pipe.unet)) == 70
    assert len(cross_attention_paths(pipe.controlnet)) == 34
    assert max_branch(keys, "UNet2DConditionModel") == 2
    # DeepCache's rule on three blocks: the shallowest branch keeps down_blocks.0 and up_blocks.2 computing
    assert deep_block_keys(blocks, 0, CLASSES) == [
        "unet.down_blocks.1",
        "unet.down_blocks.2",
        "unet.mid_block",
        "unet.up_blocks.0",
        "unet.up_blocks.1",
        "controlnet.down_blocks.1",
        "controlnet.down_blocks.2",
        "controlnet.mid_block",
    ]
    assert deep_block_keys(blocks, 2, CLASSES) == ["unet.mid_block", "controlnet.mid_block"]


def test_shape_only_is_for_random_weight_presets_only():
    with pytest.raises(ModelLoadError, match="shape_only"):
        load_pipeline("shapes", shape_only=True)


def test_tiny_sdxl_has_sdxl_structure(tiny_sdxl_pipe):
    pipe = tiny_sdxl_pipe
    assert type(pipe).__name__ == "StableDiffusionXLControlNetPipeline"
    unet = pipe.unet
    assert unet.config.addition_embed_type == "text_time"
    assert [type(b).__name__ for b in unet.down_blocks] == [
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    ]
    assert max(unet.config.transformer_layers_per_block) > 1
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert block_paths(unet) == [
        "down_blocks.0",
        "down_blocks.1",
        "down_blocks.2",
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
        "up_blocks.2",
    ]
    assert block_paths(pipe.controlnet) == [
        "",
        "down_blocks.0",
        "down_blocks.1",
        "down_blocks.2",
        "mid_block",
    ]
    # the tiny preset has SDXL's module keys at every depth the layout names
    sdxl = load_pipeline("sdxl", shape_only=True)
    blocks = [k for k in cacheable_module_keys(sdxl) if "attn2" not in k]
    assert [k for k in cacheable_module_keys(pipe) if "attn2" not in k] == blocks
    assert model_fingerprint(pipe) != model_fingerprint(sdxl)


def test_local_sdxl_checkpoint_loads_as_the_xl_controlnet_pipeline(tiny_sdxl_pipe, tmp_path):
    from hgc_tune.models._fingerprint import weights_digest

    tiny_sdxl_pipe.save_pretrained(tmp_path / "base")
    tiny_sdxl_pipe.controlnet.save_pretrained(tmp_path / "cn")
    for controlnet in (None, str(tmp_path / "cn")):
        pipe = load_pipeline(str(tmp_path / "base"), controlnet=controlnet)
        assert type(pipe).__name__ == "StableDiffusionXLControlNetPipeline"
        assert model_fingerprint(pipe) == model_fingerprint(tiny_sdxl_pipe)
        assert weights_digest(pipe) == weights_digest(tiny_sdxl_pipe)
