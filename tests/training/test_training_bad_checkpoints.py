"""`--resume` refuses a checkpoint it cannot continue, in one line that says what to do (exit 2), and reads
checkpoints with ``torch.load(weights_only=True)`` only; a checkpoint saved before the trainer left the
package resumes."""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import zipfile
from pathlib import Path

import pytest
import torch

from hgc_tune.errors import TrainingCheckpointError
from training.shapes.resume import CHECKPOINT_FILE, Checkpointer
from training.shapes.run import CHECKPOINT_DIR, TrainConfig, load_resume_state
from training.shapes.stages import _restore_loop
from training.shapes.train import main

REPOSITORY = Path(__file__).resolve().parents[2]
_MICRO = [
    "--device", "cpu", "--pool-size", "4", "--workers", "0", "--stages", "vae,unet",
    "--iterations", "vae=2,unet=60", "--vae-batch-size", "2", "--unet-batch-size", "2", "--conditions", "seg",
    "--eval-samples", "0", "--log-every", "1", "--budget-minutes", "10", "--threads", "1",
]  # fmt: skip


def _config(out: Path, **changes) -> dict:
    config = TrainConfig(out=out, device="cpu", stages=("vae", "unet"), conditions=("seg",), pool_size=4)
    return {**config.to_json(), **changes}


def _state(out: Path, **changes) -> dict:
    config = changes.get("config", _config(out))
    state = {
        "config": config,
        "summary": {"config": config, "stages": {}},
        "curves": {},
        "pool_scenes": 4,
        "completed": [],
        "loop": None,
    }
    return {**state, **changes}


def _checkpoint(out: Path) -> Path:
    return out / CHECKPOINT_DIR / CHECKPOINT_FILE


def _write(out: Path, data: bytes) -> None:
    _checkpoint(out).parent.mkdir(parents=True, exist_ok=True)
    _checkpoint(out).write_bytes(data)


def _refused(out: Path, capsys, *expected: str) -> str:
    """`--resume out` exits 2 with one line on stderr that names the file and what to do."""
    assert main(["--resume", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and "rendering" not in captured.out
    assert "start the run again without --resume" in lines[0]
    for text in expected:
        assert text in lines[0]
    return lines[0]


def _valid_bytes(out: Path) -> bytes:
    Checkpointer(out / CHECKPOINT_DIR, 0).save(_state(out))
    return _checkpoint(out).read_bytes()


def test_a_truncated_checkpoint_is_refused(tmp_path, capsys):
    data = _valid_bytes(tmp_path)
    assert tuple(load_resume_state(tmp_path)["config"]["stages"]) == ("vae", "unet")  # the whole file resumes
    _write(tmp_path, data[: len(data) // 2])
    _refused(tmp_path, capsys, str(_checkpoint(tmp_path)), "is not a readable training checkpoint")


def test_garbage_is_refused(tmp_path, capsys):
    _write(tmp_path, bytes(range(256)) * 40)
    _refused(tmp_path, capsys, "is not a readable training checkpoint")


class _Payload:
    """A pickle that runs code when unpickled by plain `pickle`: it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_foreign_pickle_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    _write(tmp_path, pickle.dumps({"config": _Payload(marker)}))
    _refused(tmp_path, capsys, "is not a readable training checkpoint")
    # the same object in torch's own (zip) format: refused by the weights-only unpickler
    buffer = io.BytesIO()
    torch.save({"config": _Payload(marker)}, buffer)
    _write(tmp_path, buffer.getvalue())
    _refused(tmp_path, capsys, "is not a readable training checkpoint", "UnpicklingError")
    assert not marker.exists()
    # a pickle of a plain list loads, and is still not a checkpoint
    buffer = io.BytesIO()
    torch.save([1, 2], buffer)
    _write(tmp_path, buffer.getvalue())
    _refused(tmp_path, capsys, "holds a list, not a training checkpoint")


def test_a_checkpoint_without_its_config_is_refused(tmp_path, capsys):
    state = _state(tmp_path)
    del state["config"]
    Checkpointer(tmp_path / CHECKPOINT_DIR, 0).save(state)
    _refused(tmp_path, capsys, "holds no run settings (`config`)")
    # settings that do not rebuild the trainer's configuration
    Checkpointer(tmp_path / CHECKPOINT_DIR, 0).save(_state(tmp_path, config={"out": str(tmp_path)}))
    _refused(tmp_path, capsys, "holds run settings this trainer cannot read (KeyError")
    # the run-level parts missing
    state = _state(tmp_path)
    del state["curves"], state["loop"]
    Checkpointer(tmp_path / CHECKPOINT_DIR, 0).save(state)
    _refused(tmp_path, capsys, "lacks curves, loop, so it is not a checkpoint of this trainer")


def test_a_checkpoint_with_the_wrong_number_of_models_is_refused_before_any_work(tmp_path, capsys):
    loop = {"stage": "vae", "modules": [{}, {}], "done": 1, "planned": 2}
    Checkpointer(tmp_path / CHECKPOINT_DIR, 0).save(_state(tmp_path, loop=loop))
    _refused(tmp_path, capsys, "holds 2 weights dicts for stage 'vae', but that stage trains 1 models")
    loop = {"stage": "joint", "modules": [{}], "done": 1, "planned": 2}
    Checkpointer(tmp_path / CHECKPOINT_DIR, 0).save(_state(tmp_path, loop=loop))
    _refused(tmp_path, capsys, "loop state of stage 'joint', which its run (stages vae, unet) does not train")


def test_another_models_weights_are_refused_when_the_stage_restores_them(tmp_path, capsys, one_thread):
    """End to end: the saved VAE weights are a linear layer's; the VAE stage refuses them in one line."""
    other = torch.nn.Linear(2, 2)
    loop = {
        "stage": "vae",
        "done": 1,
        "planned": 2,
        "elapsed": 1.0,
        "rollback": {"count": 0, "lr_scale": 1.0},
        "modules": [other.state_dict()],
        "optimizer": torch.optim.AdamW(other.parameters()).state_dict(),
        "ema": None,
        "generator": torch.Generator().get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    argv = TrainConfig(out=tmp_path, device="cpu", stages=("vae", "unet"), conditions=("seg",), pool_size=4)
    config = {**argv.to_json(), "iterations": {"vae": 2, "unet": 2}, "workers": 0, "eval_samples": 0}
    Checkpointer(tmp_path / CHECKPOINT_DIR, 0).save(_state(tmp_path, config=config, loop=loop))
    assert main(["--resume", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert "the checkpoint holds another model's weights for model 0 of stage 'vae'" in lines[0]
    assert "AutoencoderKL does not load them" in lines[0]
    # --debug adds the traceback
    Checkpointer(tmp_path / CHECKPOINT_DIR, 0).save(_state(tmp_path, config=config, loop=loop))
    assert main(["--resume", str(tmp_path), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_restore_names_the_model_whose_weights_do_not_fit():
    module = torch.nn.Linear(3, 3)
    state = {"stage": "unet", "modules": [torch.nn.Linear(2, 2).state_dict()]}
    with pytest.raises(TrainingCheckpointError, match="another model's weights for model 0 of stage 'unet'"):
        _restore_loop(state, "unet", [module], None, None, None, None)


def _pickled_globals(path: Path) -> set[str]:
    """The module-level names a torch checkpoint's pickle refers to (GLOBAL and STACK_GLOBAL opcodes)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    names, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]}.{strings[-1]}")
        elif opcode.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
    return names


def test_a_checkpoint_saved_before_the_move_resumes(tmp_path, monkeypatch, capsys, one_thread):
    """The checkpoint format did not change with the move: a checkpoint refers to no trainer module (only
    torch's tensor rebuilders), so the same bytes load from `training.shapes`; its settings name the weights'
    former folder, which is mapped to the new one."""
    monkeypatch.chdir(REPOSITORY)
    out = tmp_path / "run"
    argv = list(_MICRO)
    argv[argv.index("--budget-minutes") + 1] = "0.02"  # about a second: 60 U-Net iterations cannot finish
    assert main(["--out", str(out), *argv]) == 3
    capsys.readouterr()
    names = _pickled_globals(_checkpoint(out))
    assert names and all(name.startswith(("torch.", "collections.")) for name in names), names
    # what the trainer inside the package wrote: the same state, with its own folder names in it
    state = torch.load(_checkpoint(out), weights_only=True)
    state["config"]["init_from"] = "hgc_tune/zoo/weights"
    state["summary"]["config"]["init_from"] = "hgc_tune/zoo/weights"
    torch.save(state, _checkpoint(out))
    assert not (REPOSITORY / "hgc_tune" / "zoo" / "weights").exists()
    assert load_resume_state(out)["config"]["init_from"] == "hgc_tune/models/weights/shapes"
    assert main(["--resume", str(out), "--budget-minutes", "10"]) == 0
    summary = json.loads((out / "training.json").read_text())
    assert "interrupted" not in summary and summary["stages"]["unet"]["iterations"] == 60
