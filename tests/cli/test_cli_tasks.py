"""`hgc-tune generate` with --init-image (img2img), --mask (inpainting) and --strength: the steps run count,
an all-compute policy changes nothing, and bad options name the flag and value; `hgc-tune macs` of an
img2img policy."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from hgc_tune.cli import main
from hgc_tune.cli._common import _inference_steps
from hgc_tune.errors import HgcTuneError
from hgc_tune.models import load_pipeline
from hgc_tune.policy import Policy, save_policy, target_for_pipeline

ARGS = ["generate", "--model", "tiny", "--prompt", "a red square", "--seed", "3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, condition_image, init_image):
    root = tmp_path_factory.mktemp("generate-tasks")
    condition_image.save(root / "seg.png")
    init_image.save(root / "init.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return root


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_all_compute_policy_changes_nothing_and_the_steps_run_count(task, files, tmp_path, capsys):
    base = [*ARGS, "--condition-image", str(files / "seg.png"), "--init-image", str(files / "init.png")]
    base += ["--mask", str(files / "mask.png")] if task == "inpaint" else []
    base += ["--steps", "5", "--strength", "0.6"]
    plain, full = tmp_path / "plain.png", tmp_path / "full.png"
    assert main([*base, "--out", str(plain)]) == 0
    assert main([*base, "--out", str(full), "--policy", "full-hooked", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert np.array_equal(_pixels(plain), _pixels(full))
    assert (result["task"], result["steps"], result["num_inference_steps"]) == (task, 3, 5)
    assert result["strength"] == 0.6 and result["macs"]["paper"]["reduction"] == 0


def test_a_policy_file_fixes_the_steps_run(files, tmp_path, capsys):
    pipe = load_pipeline("tiny", task="img2img")
    path = save_policy(
        Policy(target_for_pipeline(pipe, num_steps=3), blocks={"unet.mid_block": (0, 2)}, name="i2i"),
        tmp_path / "i2i.json",
    )
    base = [*ARGS, "--condition-image", str(files / "seg.png"), "--init-image", str(files / "init.png")]
    base += ["--policy", str(path), "--strength", "0.6", "--json"]
    assert main([*base, "--out", str(tmp_path / "a.png")]) == 0  # --steps 5 is derived
    result = json.loads(capsys.readouterr().out)
    assert (result["steps"], result["num_inference_steps"]) == (3, 5)
    assert main([*base, "--steps", "8", "--out", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert "was made for 3 denoising steps, but --steps 8 at --strength 0.6 runs 4; give --steps 5" in err


def test_a_text2img_policy_is_refused_on_img2img(files, tmp_path, tiny_pipe, capsys):
    path = save_policy(Policy(target_for_pipeline(tiny_pipe, num_steps=4), name="t2i"), tmp_path / "t2i.json")
    argv = [*ARGS, "--condition-image", str(files / "seg.png"), "--init-image", str(files / "init.png")]
    argv += ["--policy", str(path), "--strength", "0.5", "--out", str(tmp_path / "o.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "pipeline_class: policy has 'StableDiffusionControlNetPipeline', pipeline has "
        "'StableDiffusionControlNetImg2ImgPipeline'"
    ) in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strength", "1.5"], "`--strength` must be in (0, 1], but got --strength=1.5."),
        (["--strength", "0"], "`--strength` must be in (0, 1], but got --strength=0."),
        (
            ["--strength", "0.5"],
            "`--strength` needs `--init-image` (img2img, inpainting), but got --strength=0.5",
        ),
        (["--mask", "m.png"], "`--mask` needs `--init-image` (inpainting), but got --mask='m.png'"),
        (["--init-image", "missing.png"], "cannot read --init-image 'missing.png'"),
    ],
)
def test_bad_options_name_the_flag_and_value(extra, message, files, tmp_path, capsys):
    argv = [*ARGS, "--condition-image", str(files / "seg.png"), "--out", str(tmp_path / "o.png"), *extra]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_macs_of_an_img2img_policy(tmp_path, capsys):
    pipe = load_pipeline("tiny", task="img2img")
    path = save_policy(
        Policy(target_for_pipeline(pipe, num_steps=3), blocks={"unet.mid_block": (0,)}, name="i2i"),
        tmp_path / "i2i.json",
    )
    assert main(["macs", "--model", "tiny", "--policy", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 3 and 0 < result["policy"]["paper"]["reduction"] < 1


def test_evaluate_on_img2img(capsys):
    argv = ["evaluate", "--model", "tiny", "--condition", "seg", "--metric", "ssim", "--samples", "1"]
    argv += ["--task", "img2img", "--strength", "0.6", "--steps", "5", "--policy", "full-hooked", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loss"] == 0 and (result["task"], result["strength"]) == ("img2img", 0.6)
    assert result["macs"]["paper"]["reduction"] == 0
    assert main([*argv, "--task", "text2img"]) == 2  # the last --task counts
    assert "`--strength` needs `--task img2img` or `--task inpaint`" in capsys.readouterr().err


def test_a_task_with_no_strength_is_refused_in_one_line():
    args = argparse.Namespace(steps=None, policy=None)
    with pytest.raises(
        HgcTuneError, match=r"task 'img2img' runs at a strength in \(0, 1\], but got strength=None"
    ):
        _inference_steps(args, None, "img2img", None)
    assert _inference_steps(args, None, "img2img", 0.5) == (20, 10)
