"""The command line with several ControlNets: `--condition seg,depth` on a preset (one ControlNet per type),
profile -> search -> report, and a repeated `--controlnet` for local checkpoints."""

from __future__ import annotations

import json

from hgc_tune.cli import main
from hgc_tune.policy import load_policy


def test_profile_search_report_with_two_controlnets(tmp_path, capsys) -> None:
    profile = tmp_path / "profile"
    common = ["--model", "tiny", "--condition", "seg,depth"]
    assert (
        main(
            [
                "profile",
                *common,
                "--dataset",
                "shapes",
                "--samples",
                "2",
                "--steps",
                "3",
                "--out",
                str(profile),
            ]
        )
        == 0
    )
    meta = json.loads((profile / "profile.json").read_text())
    assert meta["condition_type"] == "seg,depth" and meta["conditions_per_sample"] == 2
    assert "controlnet.nets.1" in meta["block_keys"]
    policy_path = tmp_path / "multi.json"
    assert (
        main(
            [
                "search",
                "--profile",
                str(profile),
                "--budget",
                "0.5",
                "--metric",
                "ssim",
                "--trials",
                "4",
                "--confidence",
                "0",
                "--validation-samples",
                "1",
                "--test-samples",
                "1",
                "--out",
                str(policy_path),
            ]
        )
        == 0
    )
    policy = load_policy(policy_path).select("seg,depth")
    assert policy.target.controlnet_class == "MultiControlNetModel"
    assert [c.condition_type for c in policy.target.controlnets] == ["seg", "depth"]
    report = tmp_path / "report"
    assert (
        main(
            [
                "report",
                "--profile",
                str(profile),
                "--policy",
                str(policy_path),
                "--samples",
                "1",
                "--out",
                str(report),
            ]
        )
        == 0
    )
    assert (report / "similarity_controlnet_0.png").is_file() and (
        report / "similarity_controlnet_1.png"
    ).is_file()


def test_repeated_controlnet_loads_a_multi_controlnet_pipeline(tmp_path, capsys) -> None:
    from hgc_tune.cli._common import controlnet_ref
    from hgc_tune.models import load_pipeline

    pipe = load_pipeline("tiny")
    base, cn_a, cn_b = tmp_path / "base", tmp_path / "cn-a", tmp_path / "cn-b"
    pipe.save_pretrained(base)
    pipe.controlnet.save_pretrained(cn_a)
    pipe.controlnet.save_pretrained(cn_b)
    assert controlnet_ref([str(cn_a)]) == str(cn_a)
    multi = load_pipeline(str(base), controlnet=controlnet_ref([str(cn_a), str(cn_b)]))
    assert type(multi.controlnet).__name__ == "MultiControlNetModel" and len(multi.controlnet.nets) == 2
    argv = [
        "macs",
        "--model",
        str(base),
        "--controlnet",
        str(cn_a),
        "--controlnet",
        str(cn_b),
        "--resolution",
        "64",
    ]
    assert main([*argv, "--condition", "seg", "--steps", "2", "--json"]) == 2  # one type for two ControlNets
    capsys.readouterr()
    assert main([*argv, "--steps", "2", "--json"]) == 0
    macs = json.loads(capsys.readouterr().out)
    single = [
        "macs",
        "--model",
        str(base),
        "--controlnet",
        str(cn_a),
        "--resolution",
        "64",
        "--steps",
        "2",
        "--json",
    ]
    assert main(single) == 0
    one = json.loads(capsys.readouterr().out)
    assert macs != one
