"""`--lora PATH[:SCALE]`: loaded by profile, search (and its workers), evaluate, generate, bench and macs;
recorded in a searched policy's provenance; bad values refused in one line."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from hgc_tune.cli import build_parser, main
from hgc_tune.cli._common import parse_lora
from hgc_tune.policy import LoraMismatchWarning, load_policy

GENERATE = ["generate", "--model", "tiny", "--prompt", "a red square", "--steps", "3", "--seed", "1"]


@pytest.fixture(scope="module")
def condition_file(tmp_path_factory, condition_image):
    path = tmp_path_factory.mktemp("condition") / "seg.png"
    condition_image.save(path)
    return path


def test_every_pipeline_command_takes_lora():
    parser = build_parser()
    for command in (
        ["profile", "--out", "p"],
        ["search", "--profile", "p", "--out", "p.json", "--budget", "0.1"],
        ["evaluate", "--policy", "full"],
        ["generate", "--out", "a.png", "--prompt", "a", "--condition-image", "c.png"],
        ["bench", "--policy", "full"],
        ["macs"],
    ):
        args = parser.parse_args([*command, "--lora", "a.safetensors:0.5", "--lora", "b"])
        assert args.lora == ["a.safetensors:0.5", "b"], command


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("style.safetensors", ("style.safetensors", 1.0)),
        ("style.safetensors:0.5", ("style.safetensors", 0.5)),
        ("/loras/v1:2/style.safetensors", ("/loras/v1:2/style.safetensors", 1.0)),
        ("style:-1", ("style", -1.0)),
        ("style:abc", ("style:abc", 1.0)),
    ],
)
def test_lora_values_are_split_at_a_numeric_scale(value, expected):
    assert parse_lora(value) == expected


def test_generate_with_a_lora_and_its_scale(tmp_path, condition_file, tiny_lora):
    base = [*GENERATE, "--condition-image", str(condition_file)]
    lora = str(tiny_lora())
    paths = {name: tmp_path / f"{name}.png" for name in ("plain", "off", "half")}
    assert main([*base, "--out", str(paths["plain"])]) == 0
    assert main([*base, "--lora", f"{lora}:0", "--out", str(paths["off"])]) == 0
    assert main([*base, "--lora", f"{lora}:0.5", "--out", str(paths["half"])]) == 0
    plain, off, half = (np.asarray(Image.open(p)) for p in paths.values())
    assert np.array_equal(plain, off)  # scale 0: the adapter adds nothing
    assert not np.array_equal(plain, half)


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":nan", "SCALE must be a finite number"),
        (":inf", "SCALE must be a finite number"),
        ("-missing", "does not exist"),
    ],
)
def test_a_bad_lora_is_refused_in_one_line(tmp_path, condition_file, tiny_lora, capsys, suffix, message):
    out = tmp_path / "out.png"
    argv = [*GENERATE, "--condition-image", str(condition_file), "--out", str(out)]
    assert main([*argv, "--lora", f"{tiny_lora()}{suffix}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_macs_says_the_lora_is_counted(tiny_lora, capsys):
    assert main(["macs", "--model", "tiny", "--steps", "2", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "lora" not in plain
    assert main(["macs", "--model", "tiny", "--steps", "2", "--json", "--lora", f"{tiny_lora()}:0.5"]) == 0
    with_lora = json.loads(capsys.readouterr().out)
    (entry,) = with_lora["lora"]
    assert entry["name"] == "style" and entry["scale"] == 0.5 and entry["counted"] is True
    # Unfused: its low-rank products are in the U-Net's count.
    assert with_lora["per_image"]["unet"]["paper"] > plain["per_image"]["unet"]["paper"]
    assert main(["macs", "--model", "tiny", "--steps", "2", "--lora", str(tiny_lora())]) == 0
    assert "LoRA 'style' (scale 1): unfused: its low-rank products are counted" in capsys.readouterr().out


def test_profile_search_record_the_lora_and_another_pipeline_warns(
    tmp_path, tiny_lora, condition_file, capsys
):
    lora = f"{tiny_lora()}:0.8"
    profile = tmp_path / "profile"
    common = ["--model", "tiny", "--condition", "seg"]
    profile_argv = ["profile", *common, "--dataset", "shapes", "--samples", "2", "--steps", "3"]
    assert main([*profile_argv, "--lora", lora, "--out", str(profile)]) == 0
    policy_path = tmp_path / "lora.json"
    search = ["search", "--profile", str(profile), "--budget", "0.5", "--metric", "ssim", "--trials", "3"]
    search += ["--confidence", "0", "--validation-samples", "1", "--test-samples", "1"]
    # The profile's weights include the LoRA: a search without it is refused.
    assert main([*search, "--out", str(tmp_path / "without.json")]) == 2
    assert "weights digest" in capsys.readouterr().err
    assert main([*search, "--lora", lora, "--out", str(policy_path)]) == 0
    capsys.readouterr()
    (spec,) = load_policy(policy_path).select("seg").provenance.lora
    assert (spec.name, spec.scale) == ("style", 0.8)
    # Applied without the LoRA: generated, with one warning naming both.
    out = tmp_path / "image.png"
    generate = [*GENERATE, "--condition", "seg", "--condition-image", str(condition_file)]
    with pytest.warns(
        LoraMismatchWarning, match=r"tuned with LoRA 'style' .*, but this pipeline carries no LoRA"
    ):
        assert main([*generate, "--policy", str(policy_path), "--out", str(out)]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert (
            main([*generate, "--policy", str(policy_path), "--lora", lora, "--out", str(out), "--overwrite"])
            == 0
        )
    assert not [w for w in caught if issubclass(w.category, LoraMismatchWarning)]


def test_search_workers_load_the_same_loras():
    from hgc_tune.cli._search_options import config_from_args
    from hgc_tune.cli.search import _worker_argv

    argv = ["search", "--profile", "p", "--out", "p.json", "--budget", "0.1", "--workers", "2"]
    args = build_parser().parse_args([*argv, "--lora", "a.safetensors:0.5", "--lora", "b"])
    worker = build_parser().parse_args(_worker_argv(args, config_from_args(args), 1))
    assert worker.lora == ["a.safetensors:0.5", "b"] and worker.worker_only
