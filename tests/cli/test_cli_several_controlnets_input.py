"""Several ControlNets from the command line: `generate --condition seg,depth` takes one `--condition-image`
per ControlNet (with and without a policy), a wrong count or an empty entry in `--condition` is refused in one
line before anything loads, and `bench` / `macs` run with `seg,depth` (the built-in `full-hooked` policy
included)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from hgc_tune.cli import main
from hgc_tune.cli._common import resolve_policy
from hgc_tune.executor import apply_policy
from hgc_tune.models import load_pipeline

TWO = ["--model", "tiny", "--condition", "seg,depth"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conditions")
    Image.new("RGB", (64, 64), (200, 40, 40)).save(folder / "seg.png")
    Image.new("RGB", (64, 64), (90, 90, 90)).save(folder / "depth.png")
    return folder / "seg.png", folder / "depth.png"


@pytest.mark.parametrize("policy", [None, "full-hooked", "peer:deepcache-n3-b0"])
def test_generate_takes_one_condition_image_per_controlnet(images, tmp_path, capsys, policy):
    out = tmp_path / "out.png"
    argv = ["generate", *TWO, "--prompt", "x", "--steps", "3", "--out", str(out), "--json"]
    argv += ["--condition-image", str(images[0]), "--condition-image", str(images[1])]
    argv += ["--policy", policy] if policy else []
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 3 and Image.open(out).size == (64, 64)


def test_generate_refuses_one_image_for_two_controlnets(images, tmp_path, limited_cli):
    code, lines, seconds = limited_cli(
        "generate",
        *TWO,
        "--prompt",
        "x",
        "--condition-image",
        str(images[0]),
        "--out",
        str(tmp_path / "o.png"),
    )
    assert code == 2 and len(lines) == 1, lines
    assert (
        "`--condition-image` must be given once per ControlNet" in lines[0]
        and "names 2 and got 1" in lines[0]
    )
    assert seconds < 5


@pytest.mark.parametrize("command", ["generate", "macs", "bench"])
@pytest.mark.parametrize("condition", ["seg,", ",depth", "seg,,depth", "seg,seg"])
def test_an_empty_or_repeated_condition_entry_is_refused(images, tmp_path, limited_cli, command, condition):
    extra = {
        "generate": ["--prompt", "x", "--condition-image", str(images[0]), "--out", str(tmp_path / "o.png")],
        "macs": [],
        "bench": ["--policy", "full"],
    }[command]
    code, lines, seconds = limited_cli(command, "--model", "tiny", "--condition", condition, *extra)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (
        f"hgc-tune {command}: error: `--condition` must name condition types joined by commas, each once and "
        f"none empty (e.g. seg,depth), but got --condition={condition!r}."
    )
    assert seconds < 5


def test_macs_with_full_hooked_on_two_controlnets(capsys):
    assert main(["macs", *TWO, "--policy", "full-hooked", "--steps", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["policy"]["name"] == "full-hooked"
    assert result["policy"]["paper"]["reduction"] == 0.0


def test_bench_with_two_controlnets(capsys):
    argv = ["bench", *TWO, "--policy", "full-hooked", "--steps", "2", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["policy"] == "full-hooked" and result["mac_ratio"] == 1.0


def test_full_hooked_computes_everything_on_two_controlnets(generate_two):
    pipe = load_pipeline("tiny", condition="seg,depth")
    policy = resolve_policy("full-hooked", pipe, num_steps=3, condition_type="seg,depth", model="tiny")
    assert set(policy.controlnets) == {"controlnet.nets.0", "controlnet.nets.1"}
    assert policy.controlnet is None and not any(k.endswith(("nets.0", "nets.1")) for k in policy.blocks)
    plain = generate_two(pipe)
    handle = apply_policy(pipe, policy)
    try:
        hooked = generate_two(pipe)
    finally:
        handle.remove()
    assert (plain == hooked).all()


@pytest.fixture
def generate_two():
    import numpy as np
    import torch

    condition = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def run(pipe) -> np.ndarray:
        return pipe(
            "a red circle",
            image=[condition, condition],
            num_inference_steps=3,
            height=64,
            width=64,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images

    return run
