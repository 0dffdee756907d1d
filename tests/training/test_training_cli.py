"""The training command line: flags, device-dependent defaults and usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.shapes.train import build_parser, config_from_args, main


def _config(*argv):
    return config_from_args(build_parser().parse_args(["--out", "x", *argv]))


def test_cuda_defaults():
    config = _config("--device", "cuda")
    assert config.budget_minutes == 7.0
    assert (config.unet_batch_size, config.controlnet_batch_size, config.pool_size) == (512, 128, 50_000)
    assert config.stages == ("vae", "unet", "controlnet")
    assert config.conditions == ("seg", "canny", "hed", "depth")
    assert config.eval_samples == 16 and config.eval_steps == 20
    assert config.out == Path("x")


def test_cpu_defaults_fit_the_cpu_budget():
    config = _config("--device", "cpu")
    assert config.budget_minutes == 85.0
    assert config.pool_size < 50_000 and config.unet_batch_size < 512


def test_flags_override_defaults():
    config = _config(
        "--device", "cpu", "--budget-minutes", "3", "--stages", "unet,controlnet",
        "--iterations", "unet=5,controlnet=7", "--eval-guidance", "5,2.5", "--seed", "4",
    )  # fmt: skip
    assert config.budget_minutes == 3.0
    assert config.stages == ("unet", "controlnet")
    assert dict(config.iterations) == {"unet": 5, "controlnet": 7}
    assert config.eval_guidance == (5.0, 2.5)
    assert config.seed == 4


def test_self_check_guidance_defaults_to_the_recorded_recommendation(tmp_path):
    assert _config("--device", "cuda").eval_guidance == (7.5,)  # no weights trained on: SD1.5's default
    init = tmp_path / "weights"
    (init / "base").mkdir(parents=True)
    (init / "base" / "model_index.json").write_text("{}")
    (init / "training.json").write_text('{"recommended_guidance": 3.0}')
    assert _config("--device", "cpu", "--init-from", str(init)).eval_guidance == (3.0,)
    (init / "training.json").write_text('{"self_check": {"recommended_guidance": 4.0}}')  # unmeasured
    assert _config("--device", "cpu", "--init-from", str(init)).eval_guidance == (7.5,)


def test_bad_iterations_flag_is_a_usage_error():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--out", "x", "--iterations", "encoder=3"])


def test_unknown_stage_exits_2(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--device", "cpu", "--stages", "vae,encoder"]) == 2
    err = capsys.readouterr().err
    assert "`stages` must be a non-empty subset of vae, decoder, unet, controlnet, joint" in err


def test_stage_without_saved_input_exits_2(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--device", "cpu", "--stages", "controlnet", "--pool-size", "4"]
    assert main([*argv, "--iterations", "controlnet=1", "--eval-samples", "0"]) == 2
    captured = capsys.readouterr()
    assert "holds no saved AutoencoderKL" in captured.err and "add vae to --stages" in captured.err
    assert "rendering" not in captured.out  # refused before any work


def test_text_path_flags_default_to_todays_training():
    default = _config()
    assert (default.mean_loss_weight, default.lr_text_encoder, default.noise_offset) == (0.0, 0.0, 0.0)
    config = _config("--mean-loss-weight", "2", "--lr-text-encoder", "1e-4", "--noise-offset", "0.1")
    assert (config.mean_loss_weight, config.lr_text_encoder, config.noise_offset) == (2.0, 1e-4, 0.1)


def test_a_negative_text_path_setting_exits_2(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--device", "cpu", "--lr-text-encoder", "-1"]) == 2
    assert (
        "`lr_text_encoder` must be finite and >= 0, but got lr_text_encoder=-1.0" in capsys.readouterr().err
    )
