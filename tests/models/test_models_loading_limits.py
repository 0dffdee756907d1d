"""Loading under the environment's limits: a model that cannot get its memory is an OutOfMemoryError naming
the model and about how much its weights need (exit 1 in one line from the CLI), shown with an injected
allocator failure and, for `generate --model sdxl`, with a real address-space limit (RLIMIT_AS) in a
subprocess; and loading a preset from Python prints nothing (and leaves the libraries' logging as it was)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from hgc_tune.cli import main
from hgc_tune.errors import OutOfMemoryError
from hgc_tune.models import _loading, load_pipeline

CPU_ALLOCATOR = (
    "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "104857600 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.mark.parametrize("failure", [MemoryError(), RuntimeError(CPU_ALLOCATOR)])
def test_an_allocator_failure_is_an_out_of_memory_error_naming_the_model(monkeypatch, failure):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(_loading, "_load", fail)
    with pytest.raises(OutOfMemoryError) as caught:
        load_pipeline("sd15", dtype="fp16")
    message = str(caught.value)
    assert message.startswith(
        "not enough memory to load model 'sd15' on 'cpu': its fp16 weights alone need about"
    )
    # SD1.5's U-Net, ControlNet, VAE and CLIP-L: about 1.4 G parameters, 2 bytes each in fp16
    about = float(re.search(r"about (\d+\.\d) GiB", message).group(1))
    assert 2.2 < about < 3.2


def test_other_runtime_errors_pass_through(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(_loading, "_load", fail)
    with pytest.raises(RuntimeError, match="something else"):
        load_pipeline("tiny")


def test_the_cli_exits_1_in_one_line_when_memory_runs_out(monkeypatch, tmp_path, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError(CPU_ALLOCATOR)

    monkeypatch.setattr(_loading, "_load", fail)
    Image.new("RGB", (64, 64)).save(tmp_path / "c.png")
    argv = ["generate", "--model", "tiny", "--condition-image", str(tmp_path / "c.png"), "--prompt", "x"]
    assert main([*argv, "--out", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "hgc-tune generate: error: not enough memory to load model 'tiny'"
    )


@pytest.mark.slow
def test_generate_sdxl_under_an_address_space_limit(tmp_path, limited_cli):
    Image.new("RGB", (64, 64)).save(tmp_path / "c.png")
    argv = ["generate", "--model", "sdxl", "--condition-image", str(tmp_path / "c.png"), "--prompt", "x"]
    code, lines, _ = limited_cli(*argv, "--out", str(tmp_path / "o.png"), memory=3 * 2**30, timeout=300)
    assert code == 1, lines
    assert len(lines) == 1
    assert re.fullmatch(
        r"hgc-tune generate: error: not enough memory to load model 'sdxl' on 'cpu': its fp32 weights alone "
        r"need about 1\d\.\d GiB; .*",
        lines[0],
    )
    assert not (tmp_path / "o.png").exists()


def test_loading_a_preset_from_python_prints_nothing():
    code = (
        "import diffusers, transformers\n"
        "from hgc_tune.models import load_pipeline\n"
        "before = [diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()]\n"
        "load_pipeline('shapes', condition='seg')\n"
        "load_pipeline('tiny', condition='seg,depth', task='img2img')\n"
        "assert diffusers.utils.logging.is_progress_bar_enabled()\n"
        "assert transformers.utils.logging.is_progress_bar_enabled()\n"
        "after = [diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()]\n"
        "assert before == after, (before, after)\n"
    )
    # Without the variables the CLI sets (an earlier in-process CLI test may have set them here).
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
