"""count_pipeline_macs and `hgc-tune macs` on the tiny preset: structure, invariants, hand-computed parts."""

from __future__ import annotations

import json

import pytest
import torch

from hgc_tune.cli import main
from hgc_tune.errors import HgcTuneError
from hgc_tune.macs import MacTable, count_pipeline_macs
from hgc_tune.macs._count import CONVENTIONS
from hgc_tune.macs._sdpa import sdpa_macs
from hgc_tune.models._blocks import cacheable_module_keys


@pytest.fixture(scope="module")
def pipe(tiny_pipe):
    return tiny_pipe


@pytest.fixture(scope="module")
def table(pipe) -> MacTable:
    return count_pipeline_macs(pipe, height=64, width=64, model_name="tiny")


def _attention_sdpa_macs(pipe) -> dict[str, int]:
    """SDPA MACs of every diffusers Attention module of the U-Net and ControlNet, from a plain forward.

    Independent of fvcore: the shapes come from forward pre-hooks on the attention modules.
    """
    from diffusers.models.attention_processor import Attention

    found: dict[str, int] = {}
    handles = []

    def hook(key, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        tokens = hidden.shape[-2] * hidden.shape[-1] if hidden.ndim == 4 else hidden.shape[1]
        keys = tokens if context is None else context.shape[1]
        head = module.inner_dim // module.heads
        shape_q, shape_kv = (1, module.heads, tokens, head), (1, module.heads, keys, head)
        found[key] = sdpa_macs(shape_q, shape_kv, shape_kv)

    for component in ("controlnet", "unet"):
        for path, module in getattr(pipe, component).named_modules():
            if isinstance(module, Attention):
                key = f"{component}.{path}"
                handles.append(
                    module.register_forward_pre_hook(
                        lambda m, a, k, key=key: hook(key, m, a, k), with_kwargs=True
                    )
                )
    try:
        with torch.no_grad():
            sample, text = torch.zeros(1, 4, 32, 32), torch.zeros(1, 77, 32)
            down, mid = pipe.controlnet(
                sample,
                500,
                encoder_hidden_states=text,
                controlnet_cond=torch.zeros(1, 3, 64, 64),
                return_dict=False,
            )
            pipe.unet(
                sample,
                500,
                encoder_hidden_states=text,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                return_dict=False,
            )
    finally:
        for handle in handles:
            handle.remove()
    return found


def test_keys_cover_components_blocks_and_attention(pipe, table):
    for key in (
        "unet",
        "controlnet",
        "text_encoder",
        "vae.decoder",
        "unet.down_blocks.1",
        "unet.mid_block",
        "unet.up_blocks.2.attentions.0.transformer_blocks.0.attn2",
        "controlnet.controlnet_cond_embedding",
        "controlnet.controlnet_down_blocks",
    ):
        assert key in table.per_image
    assert set(cacheable_module_keys(pipe)) <= set(table.per_image)
    assert (table.model, table.height, table.width) == ("tiny", 64, 64)


def test_hand_computed_cross_attention(table):
    # unet.up_blocks.2 runs at 16x16 latent tokens with 32 channels, 2 heads of 16; 77 text tokens of 32.
    key = "unet.up_blocks.2.attentions.0.transformer_blocks.0.attn2"
    paper = 32 * 32 * 256 + 2 * (32 * 32 * 77) + 32 * 32 * 256  # to_q, to_k + to_v, to_out
    assert table.macs(key) == paper == 681_984
    assert table.macs(key, "complete") - paper == 2 * 256 * 77 * 16 * 2 == 1_261_568


def test_hand_computed_text_encoder_and_vae_attention(table):
    # CLIP (tiny): 2 layers, 4 heads of 8, 77 tokens, SDPA attention.
    te = table.per_image["text_encoder"]
    assert (
        te["complete"] - te["paper"] == 2 * sdpa_macs((1, 4, 77, 8), (1, 4, 77, 8), (1, 4, 77, 8)) == 758_912
    )
    # VAE decoder mid-block attention: one head of 32 channels over the 32x32 latent.
    vae = table.per_image["vae.decoder"]
    assert vae["complete"] - vae["paper"] == 1024 * 1024 * 32 * 2


def test_complete_minus_paper_is_sdpa_over_attention_modules(pipe, table):
    sdpa = _attention_sdpa_macs(pipe)
    # U-Net: 3 down + 1 mid + 3x2 up transformer blocks x (attn1, attn2); ControlNet: (3 down + 1 mid) x 2.
    assert len(sdpa) == 20 + 8
    for key, macs in sdpa.items():
        assert table.macs(key, "complete") - table.macs(key, "paper") == macs, key
    for component in ("unet", "controlnet"):
        expected = sum(v for k, v in sdpa.items() if k.startswith(f"{component}."))
        assert table.macs(component, "complete") - table.macs(component) == expected
    full = table.generation_macs(steps=20, convention="complete")["total"]
    assert full - table.generation_macs(steps=20)["total"] == 20 * 2 * sum(sdpa.values())


def test_nested_modules_sum_within_parents(table):
    children: dict[str, list[str]] = {}
    for key in table.per_image:
        parent = key.rpartition(".")[0]
        if parent in table.per_image:
            children.setdefault(parent, []).append(key)
    assert len(children) > 100
    for convention in CONVENTIONS:
        for parent, kids in children.items():
            assert sum(table.macs(k, convention) for k in kids) <= table.macs(parent, convention), parent
    for key in table.per_image:
        assert table.macs(key, "complete") >= table.macs(key, "paper")


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_generation_invariants(table, convention):
    on = table.generation_macs(steps=20, cfg=True, convention=convention)
    off = table.generation_macs(steps=20, cfg=False, convention=convention)
    for g in (on, off, table.generation_macs(steps=3, cfg=True, convention=convention, batch=2)):
        assert sum(g["blocks"].values()) == g["total"] == g["unet"] + g["controlnet"]
        assert g["total_with_all"] == g["total"] + g["text_encoder"] + g["vae_decoder"]
        assert all(v >= 0 for v in g["blocks"].values())
    assert on["unet"] == 2 * off["unet"] == 40 * table.macs("unet", convention)
    assert on["controlnet"] == 2 * off["controlnet"] == 40 * table.macs("controlnet", convention)
    assert on["text_encoder"] == 2 * off["text_encoder"]
    assert on["vae_decoder"] == off["vae_decoder"] == table.macs("vae.decoder", convention)
    blocks = list(on["blocks"])
    assert blocks[blocks.index("unet.down_blocks.0") :][:4] == [f"unet.down_blocks.{i}" for i in range(4)]
    assert {"unet.mid_block", "unet.up_blocks.3", "controlnet.controlnet_cond_embedding"} <= set(blocks)


def test_json_round_trip_and_size_check(pipe, table):
    assert MacTable.from_json(json.loads(json.dumps(table.to_json()))) == table
    with pytest.raises(HgcTuneError, match="height=63"):
        count_pipeline_macs(pipe, height=63, width=64)


def test_cli_json(capsys, table):
    # Counted again from a freshly loaded pipeline: the same numbers as the fixture's table.
    assert main(["macs", "--model", "tiny", "--steps", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["resolution"], out["steps"], out["cfg"]) == ("tiny", 64, 5, True)
    for convention in CONVENTIONS:
        assert out["conventions"][convention] == table.generation_macs(steps=5, convention=convention)
    assert out["includes"] == ["controlnet", "unet"]
    assert out["per_image"]["vae.decoder"] == dict(table.per_image["vae.decoder"])


def test_cli_table_and_errors(capsys, monkeypatch, pipe, table):
    # The JSON test runs the command end to end; this one reuses the loaded pipeline.
    monkeypatch.setattr("hgc_tune.cli.macs.load_pipeline_from_args", lambda args: pipe)
    assert main(["macs", "--steps", "4", "--no-cfg", "--convention", "complete"]) == 0
    out = capsys.readouterr().out
    assert "convention: complete" in out
    assert "unet.up_blocks.2" in out and "vae_decoder (not in total)" in out
    total = table.generation_macs(steps=4, cfg=False, convention="complete")["total"]
    assert f"{total / 1e9:.3f} G  100.0%" in out
    assert main(["macs", "--steps", "0"]) == 2
    assert "steps=0" in capsys.readouterr().err


def test_every_operator_of_the_tiny_pipeline_is_counted_or_known_free(table, capsys):
    assert table.unsupported_ops == {} and table.skipped_ops() == {}
    assert main(["macs", "--model", "tiny", "--steps", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unsupported_ops"] == {} and out["unsupported_ops_by_module"] == {}


def test_an_operator_fvcore_skips_is_recorded_and_shown(capsys, monkeypatch, pipe):
    # As if SiLU were an operator nobody declared: fvcore skips it, and the table says where.
    from hgc_tune.macs import _count

    monkeypatch.setattr(
        _count, "_ZERO_MAC_OPS", tuple(op for op in _count._ZERO_MAC_OPS if op != "aten::silu")
    )
    table = count_pipeline_macs(pipe, height=64, width=64, model_name="tiny")
    skipped = table.skipped_ops()
    assert list(skipped) == ["aten::silu"]
    assert skipped["aten::silu"]["conventions"] == ["paper", "complete"]
    assert set(skipped["aten::silu"]["modules"]) == {"controlnet", "unet", "vae.decoder"}
    by_module = table.unsupported_ops
    # Nested keys are inside their parents, as in per_image.
    assert 0 < by_module["unet.mid_block"]["aten::silu"] < by_module["unet"]["aten::silu"]
    assert skipped["aten::silu"]["count"] == sum(
        by_module[k]["aten::silu"] for k in skipped["aten::silu"]["modules"]
    )
    assert MacTable.from_json(json.loads(json.dumps(table.to_json()))) == table

    monkeypatch.setattr("hgc_tune.cli.macs.load_pipeline_from_args", lambda args: pipe)
    assert main(["macs", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    count = skipped["aten::silu"]["count"]
    assert f"  aten::silu: {count}x in controlnet, unet, vae.decoder; missing from paper and complete" in out
    assert main(["macs", "--steps", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unsupported_ops"] == skipped
