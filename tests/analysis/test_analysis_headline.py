"""``analysis/headline.py`` on the tiny preset: a tuned policy and every peer on the test split, one table."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hgc_tune.policy import GuidanceWindow, PolicyFile, peer_policy, save_policy, target_for_pipeline
from hgc_tune.search._space import default_peer_names


@pytest.fixture(scope="module")
def headline(analysis_script):
    return analysis_script("headline")


def test_headline_table_on_tiny(headline, tiny_pipe, tmp_path):
    import torch

    torch.set_num_threads(1)
    from hgc_tune.models._blocks import cacheable_module_keys

    target = target_for_pipeline(tiny_pipe, num_steps=3, condition_type="seg", model="tiny")
    cached = peer_policy("deepcache-n2-b0", target, cacheable_module_keys(tiny_pipe))
    tuned = dataclasses.replace(cached, guidance=GuidanceWindow(cfg_until=1))  # caching and a guidance window
    policies = save_policy(PolicyFile((tuned,)), tmp_path / "tuned.json")
    caching = save_policy(PolicyFile((cached,)), tmp_path / "caching-only.json")
    out = tmp_path / "headline"
    argv = ["--model", "tiny", "--conditions", "seg", "--metric", "ssim", "--steps", "3", "--samples", "2"]
    argv += ["--policies", str(policies), "--caching-only-policies", str(caching)]
    argv += ["--budget", "0.5", "--out", str(out), "--no-progress"]
    assert headline.main(argv) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["caching_only_policies"] == str(caching)
    (result,) = data["results"]
    assert result["split"] == "test" and result["samples"] == 2
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["tuned", "caching-only", *default_peer_names(3)]
    for row in rows.values():
        assert row["samples"] == 2 and row["metric"] == "ssim"
        assert row["loss_upper"] is None or row["loss_upper"] >= row["loss"]
        assert row["within"] == (row["loss_upper"] is not None and row["loss_upper"] <= 0.5)
        assert len(row["per_sample_full"]) == len(row["per_sample_policy"]) == 2
        for convention in ("paper", "complete"):
            split = row["savings_by_mechanism"][convention]
            assert sum(split["macs"].values()) == split["saved"], row["name"]
            assert split["reduction"]["total"] == pytest.approx(row["macs"][convention]["reduction"])
    tuned_split = rows["tuned"]["savings_by_mechanism"]["paper"]["macs"]
    caching_split = rows["caching-only"]["savings_by_mechanism"]["paper"]["macs"]
    assert tuned_split["guidance_window"] > 0 and caching_split["guidance_window"] == 0
    assert caching_split["unet_blocks"] > 0
    assert rows["tuned"]["macs"]["paper"]["reduction"] > rows["caching-only"]["macs"]["paper"]["reduction"]
    table = out.with_suffix(".md").read_text()
    assert table.startswith(
        "| condition | metric | policy | paper-MAC reduction | from the guidance window | from caching | "
        "mean loss | upper bound | SSIM | PSNR | within every budget |"
    )
    assert table.count("| seg | ssim |") == len(rows)
    guidance = 100 * rows["tuned"]["savings_by_mechanism"]["paper"]["reduction"]["guidance_window"]
    assert (
        f"| seg | ssim | tuned | {100 * rows['tuned']['macs']['paper']['reduction']:.1f}% | {guidance:.1f}% |"
        in table
    )
    per_condition = table[table.index("| condition | tuned |") :]
    caching_figure = 100 * rows["caching-only"]["macs"]["paper"]["reduction"]
    assert per_condition.splitlines()[2].startswith("| seg | ")
    assert f"{caching_figure:.1f}%" in per_condition.splitlines()[2]


def test_headline_refuses_a_caching_only_policy_with_a_guidance_window(headline, tiny_pipe, tmp_path, capsys):
    from hgc_tune.models._blocks import cacheable_module_keys

    target = target_for_pipeline(tiny_pipe, num_steps=3, condition_type="seg", model="tiny")
    truncated = peer_policy("tgate-g1-cfg", target, cacheable_module_keys(tiny_pipe))
    assert truncated.guidance is not None
    caching = save_policy(PolicyFile((truncated,)), tmp_path / "not-caching-only.json")
    argv = ["--model", "tiny", "--conditions", "seg", "--metric", "ssim", "--steps", "3", "--samples", "2"]
    argv += ["--policies", "none", "--caching-only-policies", str(caching), "--out", str(tmp_path / "h")]
    assert headline.main(argv) == 2
    err = capsys.readouterr().err
    assert "--caching-only-policies" in err and "--no-guidance-window" in err
    assert not (tmp_path / "h.md").exists()


def test_headline_refuses_one_sample(headline, tmp_path, capsys):
    argv = ["--model", "tiny", "--samples", "1", "--policies", "none", "--out", str(tmp_path / "h")]
    assert headline.main(argv) == 2
    assert "at least 2" in capsys.readouterr().err


def test_headline_merges_runs_of_different_conditions(headline, tmp_path, monkeypatch):
    def run(condition, budget=0.015):
        row = {"name": "tuned", "samples": 2, "metric": "miou", "loss": 0.01, "loss_upper": 0.02}
        return {
            "model": "shapes",
            "policies": "p.json",
            "budget": budget,
            "confidence": 0.95,
            "steps": 20,
            "results": [{"condition_type": condition, "split": "test", "samples": 2, "rows": [row]}],
        }

    paths = []
    for name, data in (("a", run("seg")), ("b", run("depth")), ("c", run("hed", budget=0.02))):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(data))
    monkeypatch.setattr(
        headline, "markdown", lambda results, **_: "|".join(r["condition_type"] for r in results)
    )
    assert headline.main(["--merge", str(paths[0]), str(paths[1]), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert [r["condition_type"] for r in merged["results"]] == ["seg", "depth"]
    assert merged["policies"] == ["p.json"] and (tmp_path / "m.md").read_text() == "seg|depth"
    # runs measured under another budget do not make one table
    assert headline.main(["--merge", str(paths[0]), str(paths[2]), "--out", str(tmp_path / "x")]) == 2


def test_headline_bounds_every_row_under_every_guard(headline, tiny_pipe, tmp_path):
    """A guard (here PSNR to the full-compute picture, since the tiny model has no prompt metric) is bounded
    on every row beside the task metric, both at the Bonferroni level, and decides `within` with it."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "guarded"
    argv = ["--model", "tiny", "--conditions", "seg", "--metric", "ssim", "--steps", "3", "--samples", "3"]
    argv += [
        "--policies",
        "none",
        "--budget",
        "0.5",
        "--guard",
        "psnr=0.2",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert headline.main(argv) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["guards"] == {"psnr": 0.2}
    for row in data["results"][0]["rows"]:
        assert row["level"] == pytest.approx(0.975)  # two bounds sharing 95 %
        (guard,) = row["guards"]
        assert guard["metric"] == "psnr" and guard["budget"] == 0.2
        task_within = row["loss_upper"] is not None and row["loss_upper"] <= 0.5
        guard_within = guard["loss_upper"] is not None and guard["loss_upper"] <= 0.2
        assert row["within"] == (task_within and guard_within)
        assert 0.0 < row["picture"]["ssim"] <= 1.0
    table = out.with_suffix(".md").read_text()
    assert "| psnr loss | psnr bound |" in table and "each at 97.5%" in table


def test_without_cfg_the_tuned_policy_is_the_caching_only_one(headline):
    def row(name: str, reduction: float) -> dict:
        split = {"reduction": {"guidance_window": 0.0, "total": reduction}}
        return {
            "name": name, "metric": "miou", "macs": {"paper": {"reduction": reduction}},
            "savings_by_mechanism": {"paper": split}, "loss": 0.001, "loss_upper": 0.01, "within": True,
            "picture": {"ssim": 0.99, "psnr": 40.0},
        }  # fmt: skip

    result = {"condition_type": "hed", "samples": 64, "rows": [row("tuned", 0.179), row("tgate-g10", 0.043)]}
    without_cfg = headline.markdown([{**result, "guidance_scale": 1.0}], budget=0.015, confidence=0.95)
    assert "| hed | 17.9% (within) | 17.9% | 17.9% (within): the tuned one (no CFG) |" in without_cfg
    assert "At guidance 1 there is no classifier-free guidance" in without_cfg
    with_cfg = headline.markdown([{**result, "guidance_scale": 2.0}], budget=0.015, confidence=0.95)
    assert "| hed | 17.9% (within) | 17.9% | - |" in with_cfg and "no classifier-free" not in with_cfg
