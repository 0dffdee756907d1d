"""The CLI on the SDXL presets: ``macs`` (both text encoders, added conditioning, a peer's reduction),
``generate`` with a policy, and an SD1.5 policy refused on the SDXL pipeline."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from hgc_tune.cli import main

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_macs_tiny_sdxl_json(capsys, tiny_sdxl_pipe):
    from hgc_tune.macs import count_pipeline_macs

    assert main(["macs", "--model", "tiny-sdxl", "--policy", "peer:deepcache-n3-b0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["resolution"] == 64 and out["includes"] == ["controlnet", "unet"]
    assert {"unet", "controlnet", "text_encoder", "text_encoder_2", "vae.decoder"} <= set(out["per_image"])
    # counted storage-free, the same MACs as the real random-weight pipeline
    table = count_pipeline_macs(tiny_sdxl_pipe, height=64, width=64, model_name="tiny-sdxl")
    for convention in ("paper", "complete"):
        assert out["per_image"]["unet"][convention] == table.macs("unet", convention)
        assert out["conventions"][convention]["total"] == 40 * (
            table.macs("unet", convention) + table.macs("controlnet", convention)
        )
        assert 0.3 < out["policy"][convention]["reduction"] < 0.7
    assert "unet.up_blocks.2" in out["conventions"]["paper"]["blocks"]


def test_generate_tiny_sdxl_with_a_peer(tmp_path, capsys):
    condition = tmp_path / "cond.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(condition)
    out = tmp_path / "out.png"
    args = [
        "generate",
        "--model",
        "tiny-sdxl",
        "--prompt",
        "a red circle",
        "--condition-image",
        str(condition),
    ]
    assert main([*args, "--policy", "peer:tgate-g2-cfg", "--steps", "4", "--out", str(out)]) == 0
    assert Image.open(out).size == (64, 64)
    # a policy file made for the SD1.5-shaped tiny preset does not fit
    tiny_policy = POLICIES / "tiny-deepcache-n3-b0.json"
    assert main([*args, "--policy", str(tiny_policy), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "pipeline_class: policy has 'StableDiffusionControlNetPipeline'" in err
    assert not (tmp_path / "x.png").exists()
