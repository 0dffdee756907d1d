"""``--clip PATH|ID``: a checkpoint's prompt metric (CLIP score) on profile, search, evaluate, report and
demo, offline with a tiny random CLIPModel saved here; without it a checkpoint's prompt is unguarded (one
warning line, and the records say so)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hgc_tune.cli import build_parser, main
from hgc_tune.models._tokenizer import build_offline_tokenizer
from hgc_tune.policy import load_policy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

UNGUARDED = "warning: prompt unguarded"
PROMPT_COMMANDS = ("profile", "search", "evaluate", "report", "demo")


def _save_clip(folder: Path, seed: int) -> Path:
    """A random tiny CLIPModel and its processor (77 tokens, 32 px images), as ``save_pretrained`` writes."""
    tokenizer = build_offline_tokenizer(model_max_length=77)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    torch.manual_seed(seed)
    transformers.CLIPModel(config).save_pretrained(folder)
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny CLIP models that differ only in their random weights."""
    root = tmp_path_factory.mktemp("clip")
    return _save_clip(root / "clip-a", seed=0), _save_clip(root / "clip-b", seed=1)


@pytest.fixture(scope="module")
def checkpoint(tiny_pipe, tmp_path_factory) -> list[str]:
    """The tiny pipeline saved as a local checkpoint (base folder + ControlNet folder): a "real" model."""
    root = tmp_path_factory.mktemp("checkpoint")
    tiny_pipe.save_pretrained(root / "base")
    tiny_pipe.controlnet.save_pretrained(root / "cn")
    return ["--model", str(root / "base"), "--controlnet", str(root / "cn"), "--condition", "seg"]


def test_every_prompt_command_takes_clip():
    parser = build_parser()
    required = {
        "profile": ["--out", "o"],
        "search": ["--profile", "p", "--out", "o.json", "--budget", "0.1"],
        "evaluate": ["--policy", "none"],
        "report": ["--profile", "p", "--out", "o"],
        "demo": [],
    }
    for command in PROMPT_COMMANDS:
        args = parser.parse_args([command, *required[command], "--clip", "openai/clip-vit-large-patch14"])
        assert args.clip == "openai/clip-vit-large-patch14", command


@pytest.mark.parametrize(
    "value, message",
    [
        ("{tmp}/missing", "does not exist"),
        ("{tmp}", "is not a transformers model directory"),
        ("", "must name a CLIP model folder or hub id"),
    ],
)
def test_a_bad_clip_is_refused_in_one_line_naming_the_flag(tmp_path, capsys, value, message):
    value = value.format(tmp=tmp_path)
    argv = ["evaluate", "--model", "tiny", "--policy", "none", "--steps", "2", "--samples", "2"]
    assert main([*argv, "--clip", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--clip" in err and repr(value) in err and message in err, err


def test_a_checkpoint_without_clip_is_unguarded_and_says_so(checkpoint, tmp_path, capsys):
    profile = tmp_path / "profile"
    argv = ["profile", *checkpoint, "--dataset", "shapes", "--samples", "2", "--steps", "2", "--no-progress"]
    assert main([*argv, "--out", str(profile)]) == 0
    err = capsys.readouterr().err
    assert err.count(UNGUARDED) == 1 and "hgc-tune profile: warning: prompt unguarded" in err
    assert "--clip" in err.split(UNGUARDED)[1].splitlines()[0], "one line that says what to pass"
    meta = json.loads((profile / "profile.json").read_text())
    assert meta["prompt_metric"] == {"guarded": False, "metric": None, "model": None, "digest": None}

    evaluate = ["evaluate", *checkpoint, "--policy", "none", "--steps", "2", "--samples", "2", "--json"]
    assert main([*evaluate, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count(UNGUARDED) == 1
    assert json.loads(captured.out)["prompt"]["guarded"] is False


def test_presets_are_not_warned_about(capsys):
    argv = ["evaluate", "--model", "tiny", "--policy", "none", "--steps", "2", "--samples", "2", "--json"]
    assert main([*argv, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert UNGUARDED not in captured.err
    assert json.loads(captured.out)["prompt"] == {
        "guarded": False,
        "metric": None,
        "model": None,
        "digest": None,
    }


def test_clip_scores_the_prompt_on_profile_evaluate_search_and_report(
    checkpoint, clip_dirs, tmp_path, capsys
):
    clip_a, clip_b = (str(d) for d in clip_dirs)
    profile = tmp_path / "profile"
    argv = ["profile", *checkpoint, "--dataset", "shapes", "--samples", "3", "--steps", "3", "--no-progress"]
    assert main([*argv, "--clip", clip_a, "--out", str(profile)]) == 0
    assert UNGUARDED not in capsys.readouterr().err
    recorded = json.loads((profile / "profile.json").read_text())["prompt_metric"]
    assert recorded["guarded"] is True and recorded["metric"] == "clip" and recorded["model"] == clip_a
    assert len(recorded["digest"]) == 16 and len(recorded["reference_scores"]) == 3
    assert all(0.0 <= s <= 100.0 for s in recorded["reference_scores"])

    evaluate = ["evaluate", *checkpoint, "--policy", "peer:deepcache-n2-b0", "--steps", "3", "--samples", "3"]
    assert main([*evaluate, "--clip", clip_a, "--split", "calibration", "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert UNGUARDED not in captured.err
    prompt = json.loads(captured.out)["prompt"]
    assert (prompt["metric"], prompt["model"], prompt["digest"]) == ("clip", clip_a, recorded["digest"])
    assert prompt["samples"] == 3 and len(prompt["per_sample_policy"]) == 3
    # full compute of the calibration split is what the profile scored
    assert prompt["per_sample_full"] == pytest.approx(recorded["reference_scores"], abs=1e-4)
    assert prompt["loss_upper"] is None or prompt["loss_upper"] >= prompt["loss"]
    assert main([*evaluate, "--clip", clip_a, "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert f"prompt adherence clip (proxy, {clip_a}; higher is better)" in table
    assert "  with policy   " in table.split("prompt adherence")[1]

    search = ["search", "--profile", str(profile), "--budget", "0.5", "--metric", "ssim", "--trials", "2"]
    search += ["--confidence", "0", "--validation-samples", "0", "--test-samples", "0", *checkpoint[:4]]
    # another CLIP model than the profile's is refused, naming both
    assert main([*search, "--clip", clip_b, "--out", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err
    assert f"--clip {clip_b!r}" in err and clip_a in err and recorded["digest"] in err
    # the profile's CLIP model is the default
    policy_path = tmp_path / "policy.json"
    assert main([*search, "--out", str(policy_path)]) == 0
    assert UNGUARDED not in capsys.readouterr().err
    provenance = load_policy(policy_path).select("seg").provenance
    assert provenance.prompt == {
        "guarded": True,
        "metric": "clip",
        "model": clip_a,
        "digest": recorded["digest"],
    }

    report = tmp_path / "report"
    argv = ["report", "--profile", str(profile), "--policy", str(policy_path), "--samples", "2"]
    assert main([*argv, *checkpoint[:4], "--clip", clip_a, "--out", str(report), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["policy"]["prompt"]["metric"] == "clip"
    assert summary["prompt"]["metric"] == "clip" and summary["prompt"]["samples"] == 2
    assert summary["prompt"]["per_sample_full"] == pytest.approx(recorded["reference_scores"][:2], abs=1e-4)
    assert "CLIP" in (report / "index.html").read_text(encoding="utf-8")


def test_search_of_an_unguarded_checkpoint_records_it(checkpoint, tmp_path, capsys):
    profile = tmp_path / "profile"
    argv = ["profile", *checkpoint, "--dataset", "shapes", "--samples", "2", "--steps", "2", "--no-progress"]
    assert main([*argv, "--out", str(profile)]) == 0
    search = ["search", "--profile", str(profile), "--budget", "0.5", "--metric", "ssim", "--trials", "2"]
    search += ["--confidence", "0", "--validation-samples", "0", "--test-samples", "0", *checkpoint[:4]]
    capsys.readouterr()
    assert main([*search, "--out", str(tmp_path / "p.json")]) == 0
    assert capsys.readouterr().err.count(UNGUARDED) == 1
    provenance = load_policy(tmp_path / "p.json").select("seg").provenance
    assert provenance.prompt == {"guarded": False, "metric": None, "model": None, "digest": None}


def test_demo_passes_clip_to_its_children(monkeypatch, tmp_path):
    from hgc_tune.cli import demo

    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "_call", lambda argv: calls.append(list(argv)) or 0)
    args = build_parser().parse_args(
        ["demo", "--conditions", "seg", "--clip", "my-clip", "--runs", str(tmp_path / "r")]
        + ["--reports", str(tmp_path / "p")]
    )
    child = demo._child_argv(args, ["seg"])
    assert child[child.index("--clip") + 1] == "my-clip"
    demo._run_condition(args, "seg")
    commands = {argv[0]: argv for argv in calls}
    for command in ("profile", "search", "report"):
        assert commands[command][commands[command].index("--clip") + 1] == "my-clip", command
