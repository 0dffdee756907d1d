"""Resumable training: EMA, atomic checkpoints, and a run killed mid-stage that resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.shapes.resume import Checkpointer, Ema
from training.shapes.train import main

_MICRO = [
    "--device", "cpu", "--pool-size", "8", "--workers", "0", "--stages", "vae,decoder,unet,joint",
    "--iterations", "vae=2,decoder=2,unet=2,joint=10", "--vae-batch-size", "2", "--decoder-batch-size", "2",
    "--unet-batch-size", "2", "--joint-batch-size", "1", "--conditions", "seg,depth", "--eval-samples", "0",
    "--log-every", "1", "--ema-decay", "0.9", "--budget-minutes", "10", "--threads", "1",
]  # fmt: skip
_SHIPPED = ("base/unet", "base/vae", "controlnet-seg", "controlnet-depth")


def _weights(out: Path) -> dict[str, bytes]:
    return {sub: (out / sub / "diffusion_pytorch_model.safetensors").read_bytes() for sub in _SHIPPED}


def _curves(out: Path) -> dict[str, list[dict[str, float]]]:
    curves = json.loads((out / "reports" / "zoo-train-losses.json").read_text())["curves"]
    # wall-clock seconds differ between runs; everything else must not
    return {
        stage: [{k: v for k, v in p.items() if k != "seconds"} for p in points]
        for stage, points in curves.items()
    }


def test_ema_warms_up_and_swaps_back():
    module = torch.nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.fill_(0.0)
    ema = Ema([module], decay=0.9)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update()  # first update: decay min(0.9, 2/11)
    expected = 1.0 - 2.0 / 11.0
    assert torch.allclose(ema.shadows[0]["weight"], torch.full((1, 2), expected))
    with ema.swapped_in():
        assert torch.allclose(module.weight, torch.full((1, 2), expected))
    assert torch.equal(module.weight, torch.ones(1, 2))
    again = Ema([module], decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 1 and torch.equal(again.shadows[0]["weight"], ema.shadows[0]["weight"])
    with pytest.raises(ValueError, match="decay"):
        Ema([module], decay=1.0)


def test_checkpoints_are_replaced_atomically(tmp_path):
    checkpointer = Checkpointer(tmp_path / "checkpoint", interval_seconds=3600)
    assert checkpointer.load() is None and not checkpointer.due()
    checkpointer.save({"done": 3, "x": torch.arange(3)})
    checkpointer.save({"done": 4, "x": torch.arange(4)})
    state = checkpointer.load()
    assert state["done"] == 4 and torch.equal(state["x"], torch.arange(4))
    assert [p.name for p in (tmp_path / "checkpoint").iterdir()] == ["checkpoint.pt"]  # no temporary left
    assert checkpointer.saved_at == [3, 4]


def _wait_for_joint_checkpoint(path: Path, process, at_least: int, timeout: float = 300.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the training process ended before it could be killed"
        if path.is_file():
            try:
                state = torch.load(path, weights_only=True)
            except Exception:  # noqa: BLE001 - being replaced right now; an atomic rename, so retry
                state = None
            loop = state and state.get("loop")
            if loop and loop["stage"] == "joint" and loop["done"] >= at_least:
                return int(loop["done"])
        time.sleep(0.05)
    raise AssertionError("no joint checkpoint appeared in time")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """An uninterrupted run, the yardstick of the resumed ones."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["--out", str(out), *_MICRO]) == 0
    return out


@pytest.mark.slow
def test_uninterrupted_runs_are_deterministic(reference, tmp_path):
    """Two uninterrupted runs agree bit for bit (what makes the resume comparisons meaningful)."""
    assert main(["--out", str(tmp_path), *_MICRO]) == 0
    assert _weights(tmp_path) == _weights(reference)


def _kill_after_a_joint_checkpoint(out: Path, argv: list[str], *, at_least: int) -> int:
    """Start a training run into ``out`` in a process, SIGKILL it once a joint-stage checkpoint holds
    ``at_least`` iterations, and return how many it holds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-m", "training.shapes.train", "--out", str(out), *argv]
    command += ["--checkpoint-minutes", "0"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        saved = _wait_for_joint_checkpoint(out / "checkpoint" / "checkpoint.pt", process, at_least=at_least)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return saved


def test_a_killed_run_resumes_exactly(reference, tmp_path):
    out = tmp_path / "killed"
    saved = _kill_after_a_joint_checkpoint(out, _MICRO, at_least=4)
    assert saved < 10

    assert main(["--resume", str(out)]) == 0
    summary = json.loads((out / "training.json").read_text())
    assert summary["stages"]["joint"]["iterations"] == 10 and "interrupted" not in summary
    assert _weights(out) == _weights(reference)
    # the loss curve goes on from the checkpoint: the same points as the uninterrupted run, none twice
    assert _curves(out) == _curves(reference)
    assert [p["iteration"] for p in _curves(out)["joint"]] == list(range(1, 11))


def test_a_budget_that_ends_mid_stage_stops_at_a_checkpoint_and_resumes(reference, tmp_path, capsys):
    out = tmp_path / "run"
    argv = list(_MICRO)
    argv[argv.index("--budget-minutes") + 1] = "0.02"  # about a second: the first stage cannot finish
    assert main(["--out", str(out), *argv]) == 3
    assert "continue with `python -m training.shapes.train --resume" in capsys.readouterr().out
    summary = json.loads((out / "training.json").read_text())
    state = torch.load(out / "checkpoint" / "checkpoint.pt", weights_only=True)
    stage, done = state["loop"]["stage"], state["loop"]["done"]
    # which stage the deadline meets depends on the machine's speed; each stage has at least a second
    planned = {"vae": 2, "decoder": 2, "unet": 2, "joint": 10}[stage]
    assert summary["interrupted"]["reason"] == f"stage {stage} stopped at iteration {done} of {planned}"
    assert stage not in state["completed"] and done < planned
    # this invocation's budget is enough: the run finishes as if it had never stopped
    assert main(["--resume", str(out), "--budget-minutes", "10"]) == 0
    assert _weights(out) == _weights(reference)
    assert "interrupted" not in json.loads((out / "training.json").read_text())


def test_resume_refuses_other_settings_and_a_missing_checkpoint(tmp_path, capsys):
    assert main(["--resume", str(tmp_path)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    (tmp_path / "checkpoint").mkdir()
    Checkpointer(tmp_path / "checkpoint", 0).save(
        {"config": {"out": str(tmp_path), "stages": ["vae"], "conditions": ["seg"], "eval_guidance": [2.0]},
         "completed": [], "loop": None}
    )  # fmt: skip
    assert main(["--resume", str(tmp_path), "--lr-joint", "0.1"]) == 2
    assert "only --budget-minutes, --threads, --workers and --checkpoint-minutes" in capsys.readouterr().err


def test_a_warm_start_trains_on_from_another_run_and_keeps_its_history(reference, tmp_path):
    argv = list(_MICRO)
    argv[argv.index("--stages") + 1] = "joint"
    argv[argv.index("--iterations") + 1] = "joint=2"
    assert main(["--out", str(tmp_path), *argv, "--init-from", str(reference)]) == 0
    earlier = json.loads((reference / "training.json").read_text())
    summary = json.loads((tmp_path / "training.json").read_text())
    for stage in ("vae", "decoder", "unet"):
        assert summary["stages"][stage] == {**earlier["stages"][stage], "from_earlier_run": True}
    assert (
        summary["stages"]["joint"]["iterations"] == 2 and "from_earlier_run" not in summary["stages"]["joint"]
    )
    before, after = _weights(reference), _weights(tmp_path)
    assert after["base/vae"] == before["base/vae"]  # not trained by the joint stage
    assert after["base/unet"] != before["base/unet"] and after["controlnet-seg"] != before["controlnet-seg"]


def test_centring_the_latents_keeps_the_pictures_and_is_done_once(reference, tmp_path):
    """--centre-latents on a warm start folds the pool's latent channel means into the saved VAE: its
    latents are centred, it decodes them to the same pictures, and a second run leaves it as it is."""
    from diffusers import AutoencoderKL

    from training.shapes.source import shapes_source

    argv = list(_MICRO)
    argv[argv.index("--stages") + 1] = "joint"
    argv[argv.index("--iterations") + 1] = "joint=1"
    centred = tmp_path / "centred"
    assert main(["--out", str(centred), *argv, "--init-from", str(reference), "--centre-latents"]) == 0
    summary = json.loads((centred / "training.json").read_text())
    shift = torch.tensor(summary["latents"]["centred_by"])
    assert shift.abs().max() > 0.05  # the reference's latents were not centred
    assert max(abs(x) for x in summary["latents"]["channel_means"]) < 0.05

    old = AutoencoderKL.from_pretrained(str(reference / "base" / "vae")).float().eval()
    new = AutoencoderKL.from_pretrained(str(centred / "base" / "vae")).float().eval()
    assert new.config.scaling_factor == old.config.scaling_factor
    scene = shapes_source().render(12345)
    picture = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        z_old, z_new = old.encode(picture).latent_dist.mean, new.encode(picture).latent_dist.mean
        torch.testing.assert_close(z_new, z_old - shift.view(1, -1, 1, 1), atol=2e-2, rtol=0)
        torch.testing.assert_close(new.decode(z_new).sample, old.decode(z_old).sample, atol=2e-2, rtol=0)

    again = tmp_path / "again"
    assert main(["--out", str(again), *argv, "--init-from", str(centred), "--centre-latents"]) == 0
    assert _weights(again)["base/vae"] == _weights(centred)["base/vae"]


def test_a_run_that_trains_the_text_encoder_resumes_exactly(reference, tmp_path):
    """The text encoder trained in the joint stage (with the channel-mean loss) is saved, checkpointed as the
    stage's last model and restored: a killed run resumes to the uninterrupted run's weights."""
    argv = list(_MICRO)
    argv[argv.index("--stages") + 1] = "joint"
    argv[argv.index("--iterations") + 1] = "joint=8"
    argv += ["--init-from", str(reference), "--lr-text-encoder", "1e-3", "--mean-loss-weight", "1"]
    argv += ["--noise-offset", "0.1"]
    straight = tmp_path / "straight"
    assert main(["--out", str(straight), *argv]) == 0
    encoder = "base/text_encoder/model.safetensors"
    assert (straight / encoder).read_bytes() != (reference / encoder).read_bytes()  # it trained
    assert "channel_mean" in _curves(straight)["joint"][0]

    out = tmp_path / "killed"
    saved = _kill_after_a_joint_checkpoint(out, argv, at_least=3)
    assert saved < 8
    state = torch.load(out / "checkpoint" / "checkpoint.pt", weights_only=True)
    assert len(state["loop"]["modules"]) == 1 + 2 + 1  # U-Net, two ControlNets, text encoder

    assert main(["--resume", str(out)]) == 0
    assert (out / encoder).read_bytes() == (straight / encoder).read_bytes()
    assert _weights(out) == _weights(straight)
    assert _curves(out)["joint"] == _curves(straight)["joint"]
