"""The acceptance figure: SD1.5 + ControlNet, 512², 20 steps, CFG = 18.22T MACs in the paper convention.

The default run checks it on the real sd15 architecture without the cost of a 512² trace: the U-Net and the
ControlNet are built on the meta device, materialised as bf16 zeros (values do not change MACs), and traced at
64 and 128 px. In the paper convention every counted operator (convolution, linear, norm, upsampling) scales
with the pixel count and the rest (time embedding, text keys/values) is constant, so the per-step MACs are
exactly ``a + b·pixels`` for sizes whose latent divides by 8, and two points give 512². (Checked: this
reproduces the direct 512² trace to the MAC.) The slow test runs the CLI at 512² itself.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from hgc_tune.cli import main
from hgc_tune.macs import count_pipeline_macs

PAPER_TOTAL = 18.22e12  # HGC (arXiv 2511.11031): SD1.5 + ControlNet, 512², 20 steps, CFG
STEPS, BRANCHES = 20, 2


def _zero_sd15_denoisers():
    # The sd15 preset's own component builder, on meta: no 30-60 s of random initialisation.
    from hgc_tune.models._presets import build_preset_components

    with torch.device("meta"):
        components = build_preset_components("sd15")
    out = {}
    for name in ("unet", "controlnet"):
        module = components[name].to(torch.bfloat16).to_empty(device="cpu")
        with torch.no_grad():
            for tensor in (*module.parameters(), *module.buffers()):
                tensor.zero_()
        out[name] = module
    return SimpleNamespace(**out, vae_scale_factor=8)


def test_sd15_paper_total_matches_the_paper():
    pipe = _zero_sd15_denoisers()
    per_step = {}
    for size in (64, 128):
        table = count_pipeline_macs(pipe, height=size, width=size, model_name="sd15")
        assert set(table.block_keys("unet")) >= {f"unet.up_blocks.{i}" for i in range(4)}
        per_step[size * size] = table.macs("unet") + table.macs("controlnet")
    (n0, m0), (n1, m1) = sorted(per_step.items())
    # 512² - 64² is 21 times 128² - 64², so the extrapolation is an exact integer.
    growth, rest = divmod((m1 - m0) * (512 * 512 - n0), n1 - n0)
    assert rest == 0
    total = STEPS * BRANCHES * (m0 + growth)
    assert abs(total - PAPER_TOTAL) / PAPER_TOTAL < 0.005, total


@pytest.mark.slow
def test_sd15_cli_at_512(capsys):
    assert main(["macs", "--model", "sd15", "--resolution", "512", "--steps", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    paper, complete = out["conventions"]["paper"], out["conventions"]["complete"]
    assert abs(paper["total"] - PAPER_TOTAL) / PAPER_TOTAL < 0.005, paper["total"]
    assert out["includes"] == paper["includes"] == ["controlnet", "unet"]
    for g in (paper, complete):
        assert sum(g["blocks"].values()) == g["total"] == g["unet"] + g["controlnet"]
    assert complete["total"] > paper["total"]
    # The U-Net alone is the widely quoted ~339 GMACs per forward at 512².
    assert abs(out["per_image"]["unet"]["paper"] - 339e9) / 339e9 < 0.005
