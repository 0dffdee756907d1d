"""img2img strength: a `--strength` at which `--steps` runs no denoising step (int(4 x 0.01) = 0) is
refused in one line before anything loads, in `generate`, `profile` and `evaluate`; the smallest strength
that runs one step still runs."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from hgc_tune.cli import main

REFUSAL = (
    "`--strength` must leave at least one denoising step, but --strength 0.01 at --steps 4 runs 0; give "
    "--strength >= 0.25 or more --steps."
)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("strength") / "c.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(path)
    return path


def _argv(command: str, image, tmp_path, *extra: str) -> list[str]:
    if command == "generate":
        files = ["--condition-image", str(image), "--init-image", str(image), "--prompt", "x"]
        return ["generate", "--model", "tiny", *files, "--out", str(tmp_path / "o.png"), *extra]
    if command == "profile":
        return [
            "profile",
            "--model",
            "tiny",
            "--task",
            "img2img",
            "--samples",
            "1",
            "--out",
            str(tmp_path / "p"),
            *extra,
        ]
    return ["evaluate", "--model", "tiny", "--task", "img2img", "--policy", "none", "--samples", "1", *extra]


@pytest.mark.parametrize("command", ["generate", "profile", "evaluate"])
def test_a_strength_that_runs_no_step_is_refused_before_anything_runs(image, tmp_path, limited_cli, command):
    code, lines, seconds = limited_cli(*_argv(command, image, tmp_path, "--strength", "0.01", "--steps", "4"))
    assert code == 2, lines
    assert lines == [f"hgc-tune {command}: error: {REFUSAL}"]
    assert seconds < 5
    assert list(tmp_path.iterdir()) == []


def test_the_smallest_strength_that_runs_one_step_runs(image, tmp_path, capsys):
    argv = _argv("generate", image, tmp_path, "--strength", "0.25", "--steps", "4", "--json")
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 1 and result["num_inference_steps"] == 4
