"""End to end: the training script on CPU with a micro budget, and its output loading like a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hgc_tune.models._shapes import shapes_checkpoint
from training.shapes.train import main

_MICRO = [
    "--device", "cpu", "--pool-size", "8", "--workers", "0", "--iterations", "vae=2,unet=2,controlnet=2",
    "--vae-batch-size", "2", "--unet-batch-size", "2", "--controlnet-batch-size", "1", "--eval-samples", "1",
    "--eval-steps", "2", "--eval-guidance", "3", "--log-every", "1", "--budget-minutes", "10",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("shapes")
    # bf16 autocast as on CUDA, so the GPU run's mixed-precision code path runs here too
    assert main(["--out", str(out), "--conditions", "seg,depth", "--amp", "on", *_MICRO]) == 0
    return out


def test_outputs_are_diffusers_folders_in_safetensors(trained):
    for sub in ("base/unet", "base/vae", "base/text_encoder", "controlnet-seg", "controlnet-depth"):
        files = {p.name for p in (trained / sub).iterdir()}
        assert "config.json" in files and any(f.endswith(".safetensors") for f in files), sub
        assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files), sub
    index = json.loads((trained / "base" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    assert index["safety_checker"] == [None, None] and "controlnet" not in index
    scheduler = json.loads((trained / "base" / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (
        0.00085,
        0.012,
        "scaled_linear",
    )


def test_summary_and_reports(trained):
    summary = json.loads((trained / "training.json").read_text())
    assert {s: summary["stages"][s]["iterations"] for s in ("vae", "unet", "controlnet")} == {
        "vae": 2,
        "unet": 2,
        "controlnet": 2,
    }
    vae_config = json.loads((trained / "base" / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == pytest.approx(summary["latents"]["scaling_factor"])
    assert vae_config["scaling_factor"] != 0.18215  # computed, not diffusers' default
    assert "error" not in summary
    # fp16 weights: the base plus two ControlNets of the shipped architecture
    assert 15 < summary["size_mb"] < 30
    reports = trained / "reports"
    for name in (
        "zoo-train-losses.json",
        "zoo-train-losses.png",
        "zoo-selfcheck.json",
        "zoo-samples-seg.png",
    ):
        assert (reports / name).is_file(), name
    curves = json.loads((reports / "zoo-train-losses.json").read_text())["curves"]
    assert [p["iteration"] for p in curves["unet"]] == [1, 2]
    assert set(curves["controlnet"][0]) >= {"mse_seg", "mse_depth"}
    check = summary["self_check"]
    assert set(check["conditions"]) == {"seg", "depth"}
    entry = check["conditions"]["seg"]["3.0"]
    assert entry["metric"] == "miou" and 0.0 <= entry["with_control"] <= 1.0
    # the self-check judges its bars at the guidance asked for and chooses none: the recommended guidance
    # has one writer, analysis/recommend_guidance.py
    assert check["judged_guidance"] == 3.0
    assert "recommended_guidance" not in check and "recommended_guidance" not in summary
    # the decoder's ceiling on the colour-read figures, on the same held-out scenes
    reconstruction = check["vae_reconstruction"]
    assert reconstruction["samples"] == 1 and 0.0 <= reconstruction["reconstruction"] <= 1.0
    assert reconstruction["ground_truth"] > 0.9


def test_output_loads_as_a_controlnet_pipeline_in_fp32(trained):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    base, controlnet_dir = shapes_checkpoint("seg", weights_dir=trained)
    controlnet = ControlNetModel.from_pretrained(controlnet_dir, torch_dtype=torch.float32)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        base, controlnet=controlnet, torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32 and pipe.vae.config.block_out_channels == [32, 64, 128]
    control = Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8))
    image = pipe(
        "a photo of a red striped circle on a wood background",
        image=control,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_output_loads_through_load_pipeline(trained):
    from hgc_tune.models import load_pipeline
    from hgc_tune.models._blocks import cacheable_module_keys

    base, controlnet_dir = shapes_checkpoint("depth", weights_dir=trained)
    pipe = load_pipeline(str(base), controlnet=str(controlnet_dir))
    keys = cacheable_module_keys(pipe)
    # SD1.5's layout: cross-attention in down blocks 0-2 and up blocks 1-3, two layers per block
    assert "unet.up_blocks.3.attentions.1.transformer_blocks.0.attn2" in keys
    assert "unet.down_blocks.2.attentions.1.transformer_blocks.0.attn2" in keys
    assert "controlnet.mid_block" in keys or "controlnet" in keys


@pytest.mark.slow
def test_all_conditions_and_resuming_a_stage(tmp_path, one_thread):
    """The default four ControlNets, then the ControlNet stage alone rerun from the saved base."""
    assert main(["--out", str(tmp_path), *_MICRO]) == 0
    before = (tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    summary = json.loads((tmp_path / "training.json").read_text())
    assert set(summary["self_check"]["conditions"]) == {"seg", "canny", "hed", "depth"}
    assert summary["size_mb"] < 40
    assert main(["--out", str(tmp_path), *_MICRO, "--stages", "controlnet", "--eval-samples", "0"]) == 0
    assert (tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    resumed = json.loads((tmp_path / "training.json").read_text())
    assert resumed["stages"]["unet"] == {**summary["stages"]["unet"], "from_earlier_run": True}
    assert "from_earlier_run" not in resumed["stages"]["controlnet"]
    assert resumed["latents"] == summary["latents"]


def test_a_failing_stage_keeps_the_earlier_ones(tmp_path, one_thread, monkeypatch, capsys):
    from training.shapes import stages

    def broken(*args, **kwargs):
        raise RuntimeError("out of luck")

    monkeypatch.setattr(stages, "train_controlnets", broken)
    assert main(["--out", str(tmp_path), "--conditions", "seg", *_MICRO]) == 1
    assert "RuntimeError: out of luck" in capsys.readouterr().err
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["error"] == "RuntimeError: out of luck"
    assert set(summary["stages"]) == {"vae", "unet"}
    assert (tmp_path / "base" / "model_index.json").is_file()
    assert (tmp_path / "reports" / "zoo-train-losses.json").is_file()


def test_shapes_preset_loads_the_trained_output(trained, monkeypatch):
    from hgc_tune.models import _shapes, load_pipeline

    monkeypatch.setattr(_shapes, "WEIGHTS_DIR", trained)
    pipe = load_pipeline("shapes", condition="seg")
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert pipe.controlnet.config.conditioning_embedding_out_channels == [16, 32, 64]
    assert pipe.unet.config.layers_per_block == 2


def test_continuing_controlnets_trains_on_from_the_saved_ones(trained, tmp_path, one_thread):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    earlier = json.loads((out / "training.json").read_text())
    curves_file = out / "reports" / "zoo-train-losses.json"
    earlier_curve = json.loads(curves_file.read_text())["curves"]["controlnet"]
    weights = {c: (out / f"controlnet-{c}" / "diffusion_pytorch_model.safetensors") for c in ("seg", "depth")}
    before = {c: path.read_bytes() for c, path in weights.items()}
    argv = ["--out", str(out), *_MICRO, "--stages", "controlnet", "--conditions", "seg"]
    assert main([*argv, "--continue-controlnets"]) == 0
    assert weights["seg"].read_bytes() != before["seg"]  # trained on ...
    assert weights["depth"].read_bytes() == before["depth"]  # ... and only the one asked for
    config = json.loads((out / "controlnet-seg" / "config.json").read_text())
    assert "_name_or_path" not in config  # the folder it was loaded from does not ship
    summary = json.loads((out / "training.json").read_text())
    assert summary["stages"]["controlnet"]["continued_from"] == earlier["stages"]["controlnet"]
    assert summary["stages"]["controlnet"]["iterations"] == 2
    curve = json.loads(curves_file.read_text())["curves"]["controlnet"]
    assert curve[: len(earlier_curve)] == earlier_curve
    shift = earlier_curve[-1]["iteration"]
    assert [p["iteration"] for p in curve[len(earlier_curve) :]] == [shift + 1, shift + 2]
    # the self-check covers what ships: the ControlNet not continued as well
    assert set(summary["self_check"]["conditions"]) == {"seg", "depth"}
    assert (out / "reports" / "zoo-train-losses.png").is_file()


def test_continuing_needs_saved_controlnets(tmp_path, capsys):
    argv = ["--out", str(tmp_path), *_MICRO, "--stages", "controlnet", "--continue-controlnets"]
    (tmp_path / "base" / "vae").mkdir(parents=True)
    (tmp_path / "base" / "unet").mkdir()
    (tmp_path / "base" / "vae" / "config.json").write_text("{}")
    (tmp_path / "base" / "unet" / "config.json").write_text("{}")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "`continue_controlnets` is set but" in err
    assert "controlnet-seg holds no saved ControlNetModel" in err


def test_a_saved_copy_names_no_folder_and_keeps_the_random_stream(tmp_path, one_thread):
    from diffusers import ControlNetModel

    from training.shapes.run import _save_model

    loaded = ControlNetModel.from_pretrained(str(shapes_checkpoint("seg")[1]))
    assert "_name_or_path" in loaded.config
    state = torch.random.get_rng_state()
    _save_model(loaded, tmp_path / "cn", "fp32")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert "_name_or_path" not in json.loads((tmp_path / "cn" / "config.json").read_text())
    again = ControlNetModel.from_pretrained(str(tmp_path / "cn"))
    assert dict(again.config) == {**loaded.config, "_name_or_path": str(tmp_path / "cn")}
    saved, original = again.state_dict(), loaded.state_dict()
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)
