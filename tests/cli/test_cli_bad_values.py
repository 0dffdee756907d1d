"""Values: `--device ""`, `cuda` on a CPU-only torch, a bogus device, `--guidance-scale nan` and
`--controlnet-scale nan` are refused in one line (exit 2) naming the flag and the value; from Python,
`load_pipeline` raises ModelLoadError for the same devices. A profile whose fields have the wrong type, given
to `report`, is the profile test's (tests/profile/test_profile_field_types.py)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from hgc_tune.cli import main
from hgc_tune.errors import ModelLoadError
from hgc_tune.models import load_pipeline

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("values") / "c.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(path)
    return path


def _generate(image, tmp_path, *extra: str) -> list[str]:
    files = ["--condition-image", str(image), "--prompt", "x", "--out", str(tmp_path / "o.png")]
    return ["generate", "--model", "tiny", *files, "--steps", "2", *extra]


@pytest.mark.parametrize(
    "flag, value, words",
    [
        (
            "--guidance-scale",
            "nan",
            "`--guidance-scale` must be a finite number, but got --guidance-scale=nan.",
        ),
        (
            "--guidance-scale",
            "inf",
            "`--guidance-scale` must be a finite number, but got --guidance-scale=inf.",
        ),
        (
            "--device",
            "",
            "`--device` must name a torch device (cpu, cuda, cuda:1, mps), but got --device=''.",
        ),
    ],
)
def test_generate_refuses_a_bad_value_before_anything_loads(image, tmp_path, limited_cli, flag, value, words):
    code, lines, seconds = limited_cli(*_generate(image, tmp_path, flag, value))
    assert code == 2 and lines == [f"hgc-tune generate: error: {words}"]
    assert seconds < 5 and not (tmp_path / "o.png").exists()


def test_bench_refuses_a_nan_guidance_scale(limited_cli):
    code, lines, seconds = limited_cli(
        "bench", "--model", "tiny", "--policy", "none", "--guidance-scale", "nan"
    )
    assert code == 2
    assert lines == [
        "hgc-tune bench: error: `--guidance-scale` must be a finite number, but got --guidance-scale=nan."
    ]
    assert seconds < 5


def test_evaluate_refuses_a_nan_controlnet_scale(limited_cli):
    code, lines, seconds = limited_cli(
        "evaluate", "--model", "tiny", "--policy", "none", "--controlnet-scale", "nan"
    )
    assert code == 2
    assert lines == [
        "hgc-tune evaluate: error: `--controlnet-scale` must be a finite number, but got "
        "--controlnet-scale=nan."
    ]
    assert seconds < 5


@pytest.mark.parametrize(
    "device, words",
    [
        pytest.param("cuda", "`device` 'cuda' cannot be used: this torch build", marks=NO_CUDA),
        pytest.param("cuda:1", "`device` 'cuda:1' cannot be used", marks=NO_CUDA),
        ("bogus", "`device` must be a torch device (cpu, cuda, cuda:1, mps), but got device='bogus'."),
        ("meta", "`device` must hold data (cpu, cuda, mps), but got device='meta'"),
    ],
)
def test_a_device_torch_or_the_machine_lacks_is_refused(image, tmp_path, capsys, device, words):
    assert main(_generate(image, tmp_path, "--device", device)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hgc-tune generate: error: ") and words in err[0]
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(ModelLoadError, match="`device`"):
        load_pipeline("tiny", device=device)


def test_debug_shows_the_traceback(image, tmp_path):
    with pytest.raises(ModelLoadError):
        main(["--debug", *_generate(image, tmp_path, "--device", "bogus")])
