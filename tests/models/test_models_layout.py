"""Block layouts, the structural fingerprint, schedulers and dtypes of loaded pipelines."""

from __future__ import annotations

import copy

import pytest
import torch

from hgc_tune.errors import ModelLoadError, UnregisteredModelError
from hgc_tune.models import load_pipeline, model_fingerprint
from hgc_tune.models._blocks import (
    _LAYOUTS,
    ModuleLayout,
    block_paths,
    cacheable_module_keys,
    deep_block_keys,
    forward_order,
    is_attention_key,
    max_branch,
    module_groups,
    module_layout,
    register_module_layout,
)
from hgc_tune.models._loading import SCHEDULERS, make_scheduler


def test_cacheable_keys_follow_sd15s_layout(tiny_pipe):
    keys = cacheable_module_keys(tiny_pipe)
    unet_blocks = [k for k in keys if k.startswith("unet.") and not k.endswith("attn2")]
    assert unet_blocks == [
        *(f"unet.down_blocks.{i}" for i in range(4)),
        "unet.mid_block",
        *(f"unet.up_blocks.{i}" for i in range(4)),
    ]
    # the whole ControlNet is one unit too; it has no up blocks
    assert "controlnet" in keys and keys["controlnet"] is tiny_pipe.controlnet
    assert not any(k.startswith("controlnet.up_blocks") for k in keys)
    attn2 = [k for k in keys if k.endswith(".attn2")]
    assert attn2
    for key in attn2:
        component, path = key.split(".", 1)
        assert keys[key] is getattr(tiny_pipe, component).get_submodule(path), key
    # SD1.5: no cross-attention in the last down block nor in the first up block
    assert not any(k.startswith(("unet.down_blocks.3.", "unet.up_blocks.0.")) for k in attn2)


def test_an_unregistered_class_is_refused_with_the_way_out(tiny_pipe):
    class MyUNet(torch.nn.Module):
        pass

    with pytest.raises(UnregisteredModelError, match="'MyUNet' has no registered block layout.*register"):
        block_paths(MyUNet())


def test_a_custom_class_registers_its_layout_as_data(tiny_pipe):
    class MyUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
            self.bottleneck = torch.nn.Identity()
            self.decoder = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])

    register_module_layout("MyUNet", ModuleLayout(down="encoder", mid="bottleneck", up="decoder"))
    try:
        assert block_paths(MyUNet()) == ["encoder.0", "encoder.1", "bottleneck", "decoder.0", "decoder.1"]
        keys = [f"unet.{p}" for p in block_paths(MyUNet())]
        assert deep_block_keys(keys, 0, {"unet": "MyUNet"}) == [
            "unet.encoder.1",
            "unet.bottleneck",
            "unet.decoder.0",
        ]
        assert max_branch(keys, "MyUNet") == 1
    finally:
        del _LAYOUTS["MyUNet"]
    with pytest.raises(UnregisteredModelError, match="'MyUNet'"):
        module_layout("MyUNet")


def test_the_layout_owns_every_module_kind_of_the_pipeline(tiny_pipe):
    blocks, attentions = module_groups(tiny_pipe)
    assert {**blocks, **attentions} == cacheable_module_keys(tiny_pipe)
    classes = {c: type(getattr(tiny_pipe, c)).__name__ for c in ("unet", "controlnet")}
    assert all(is_attention_key(k, classes) for k in attentions)
    assert not any(is_attention_key(k, classes) for k in blocks)
    assert module_layout(tiny_pipe.unet) is module_layout("UNet2DConditionModel")
    # the deepest branch leaves only the mid blocks deep; every deep block is a cacheable block
    deepest = max_branch(blocks, classes["unet"])
    assert deep_block_keys(blocks, deepest, classes) == ["unet.mid_block", "controlnet.mid_block"]
    assert set(deep_block_keys(blocks, 0, classes)) <= set(blocks) - {"controlnet"}


def test_fingerprint_follows_structure_not_weights(tiny_pipe):
    fingerprint = model_fingerprint(tiny_pipe)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    reseeded = load_pipeline("tiny", seed=1)  # other weights, same architecture
    assert model_fingerprint(reseeded) == fingerprint
    changed = copy.copy(tiny_pipe)
    changed.unet = copy.deepcopy(tiny_pipe.unet)
    changed.unet.register_to_config(layers_per_block=3)
    assert model_fingerprint(changed) != fingerprint


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_loads_with_sd15s_noise_schedule(name):
    pipe = load_pipeline("tiny", scheduler=name)
    assert type(pipe.scheduler).__name__ == SCHEDULERS[name]
    config = pipe.scheduler.config
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.012, "scaled_linear")


def test_bad_scheduler_and_dtype_name_the_field():
    with pytest.raises(ModelLoadError, match=r"`scheduler` must be one of .*scheduler='heun'"):
        make_scheduler("heun")
    with pytest.raises(ModelLoadError, match="dtype"):
        load_pipeline("tiny", dtype="fp8")


def test_dtype_reaches_every_model():
    pipe = load_pipeline("tiny", dtype="bf16")
    for component in ("unet", "controlnet", "vae", "text_encoder"):
        assert getattr(pipe, component).dtype == torch.bfloat16, component


def test_weights_digest_tells_checkpoints_apart(tiny_pipe):
    from hgc_tune.models._fingerprint import weights_digest

    digest = weights_digest(tiny_pipe)
    assert len(digest) == 16 and weights_digest(tiny_pipe) == digest
    assert weights_digest(load_pipeline("tiny")) == digest  # same seed, same weights
    assert weights_digest(load_pipeline("tiny", seed=1)) != digest
    retrained = copy.copy(tiny_pipe)
    retrained.controlnet = copy.deepcopy(tiny_pipe.controlnet)
    with torch.no_grad():  # a small update of one block, as a few training steps would make
        for p in retrained.controlnet.mid_block.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    assert weights_digest(retrained) != digest
    assert model_fingerprint(retrained) == model_fingerprint(tiny_pipe)  # the structure did not change
    assert weights_digest(load_pipeline("tiny", dtype="bf16")) != digest


def test_attention_keys_follow_the_layout_of_their_class():
    register_module_layout("MyUNet", ModuleLayout(attention="xattn"))
    try:
        assert is_attention_key("unet.blocks.0.xattn", {"unet": "MyUNet"})
        assert not is_attention_key("unet.blocks.0.attn2", {"unet": "MyUNet"})
    finally:
        del _LAYOUTS["MyUNet"]
    # a class not registered here (a policy file read without its model): any registered layout's name
    assert is_attention_key("unet.blocks.0.attn2", {"unet": "NotRegistered"})
    assert not is_attention_key("unet.blocks.0.xattn", {"unet": "NotRegistered"})


def test_the_merged_forward_order_keeps_each_layouts_order():
    # the order the MAC table's breakdown has always read in
    assert forward_order() == (
        "conv_in",
        "time_proj",
        "time_embedding",
        "class_embedding",
        "add_time_proj",
        "add_embedding",
        "encoder_hid_proj",
        "controlnet_cond_embedding",
        "down_blocks",
        "mid_block",
        "controlnet_down_blocks",
        "controlnet_mid_block",
        "up_blocks",
        "conv_norm_out",
        "conv_act",
        "conv_out",
    )
    for name in ("UNet2DConditionModel", "ControlNetModel"):
        own = module_layout(name).forward_order
        assert sorted(own, key=forward_order().index) == list(own)


def test_the_controlnet_layout_names_its_outputs(tiny_pipe):

    cn = tiny_pipe.controlnet
    sample = torch.randn(1, cn.config.in_channels, 8, 8)
    cond = torch.randn(1, 3, 16, 16)  # the tiny ControlNet embeds a condition at half its size
    text = torch.randn(1, 4, cn.config.cross_attention_dim)
    with torch.no_grad():
        as_object = cn(sample, 1, text, controlnet_cond=cond, return_dict=True)
        as_tuple = cn(sample, 1, text, controlnet_cond=cond, return_dict=False)
    layout = module_layout(cn)
    expected = [*as_object.down_block_res_samples, as_object.mid_block_res_sample]
    for output in (as_object, as_tuple):
        tensors = layout.output_tensors(output)
        assert len(tensors) == len(expected) and all(torch.equal(a, b) for a, b in zip(tensors, expected))
    with pytest.raises(UnregisteredModelError, match="names no `outputs`"):
        ModuleLayout().output_tensors(as_tuple)


def test_multi_controlnet_layout_keys_each_net_under_nets() -> None:
    from hgc_tune.models import module_layout
    from hgc_tune.models._blocks import deep_block_keys, is_whole_model_key

    layout = module_layout("MultiControlNetModel")
    assert layout.nets == "nets"
    keys = [
        "unet.down_blocks.0",
        "unet.down_blocks.1",
        "unet.mid_block",
        "unet.up_blocks.0",
        "unet.up_blocks.1",
    ]
    for i in (0, 1):
        keys += [
            f"controlnet.nets.{i}",
            f"controlnet.nets.{i}.down_blocks.0",
            f"controlnet.nets.{i}.down_blocks.1",
        ]
        keys += [f"controlnet.nets.{i}.mid_block"]
    classes = {"unet": "UNet2DConditionModel", "controlnet": "MultiControlNetModel"}
    assert deep_block_keys(keys, 0, classes) == [
        "unet.down_blocks.1",
        "unet.mid_block",
        "unet.up_blocks.0",
        "controlnet.nets.0.down_blocks.1",
        "controlnet.nets.0.mid_block",
        "controlnet.nets.1.down_blocks.1",
        "controlnet.nets.1.mid_block",
    ]
    assert is_whole_model_key("controlnet") and is_whole_model_key("controlnet.nets.1")
    assert not is_whole_model_key("controlnet.nets.1.mid_block") and not is_whole_model_key("unet")
