"""``analysis/headline.py`` on the tiny preset: a tuned policy and every peer on the test split, one table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hgc_tune.policy import PolicyFile, peer_policy, save_policy, target_for_pipeline
from hgc_tune.search._space import default_peer_names

SCRIPT = Path(__file__).resolve().parents[2] / "analysis" / "headline.py"


@pytest.fixture(scope="module")
def headline():
    spec = importlib.util.spec_from_file_location("headline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_headline_table_on_tiny(headline, tiny_pipe, tmp_path):
    import torch

    torch.set_num_threads(1)
    from hgc_tune.models._blocks import cacheable_module_keys

    target = target_for_pipeline(tiny_pipe, num_steps=3, condition_type="seg", model="tiny")
    tuned = peer_policy("deepcache-n2-b0", target, cacheable_module_keys(tiny_pipe))
    policies = save_policy(PolicyFile((tuned,)), tmp_path / "tuned.json")
    out = tmp_path / "headline"
    argv = ["--model", "tiny", "--conditions", "seg", "--metric", "ssim", "--steps", "3", "--samples", "2"]
    argv += ["--policies", str(policies), "--budget", "0.5", "--out", str(out), "--no-progress"]
    assert headline.main(argv) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    (result,) = data["results"]
    assert result["split"] == "test" and result["samples"] == 2
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["tuned", *default_peer_names(3)]
    for row in rows.values():
        assert row["samples"] == 2 and row["metric"] == "ssim"
        assert row["loss_upper"] is None or row["loss_upper"] >= row["loss"]
        assert row["within"] == (row["loss_upper"] is not None and row["loss_upper"] <= 0.5)
        assert len(row["per_sample_full"]) == len(row["per_sample_policy"]) == 2
    assert rows["tuned"]["macs"]["paper"]["reduction"] > 0
    table = out.with_suffix(".md").read_text()
    assert table.startswith(
        "| condition | metric | policy | paper-MAC reduction | mean loss | 95% upper bound"
    )
    assert table.count("| seg | ssim |") == len(rows)


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
