"""``analysis/recommend_guidance.py``: the choice rule on made-up tables, and the tool on a tiny weights
folder (measure a small grid, write the choice where ``recommended_guidance`` reads it)."""

from __future__ import annotations

import json

import pytest

from hgc_tune.models._guidance import weights_recommended_guidance


@pytest.fixture(scope="module")
def tool(analysis_script):
    return analysis_script("recommend_guidance")


def _rows(table):
    """``{guidance: {type: (task, adherence)}}`` -> the tool's rows (depth is lower-is-better)."""
    return [
        {
            "guidance": g,
            "conditions": {
                t: {"task": task, "adherence": adherence, "higher_is_better": t != "depth"}
                for t, (task, adherence) in types.items()
            },
        }
        for g, types in table.items()
    ]


def test_the_best_task_metric_outside_the_adherence_window_is_not_chosen(tool):
    rows = _rows({1.0: {"seg": (0.60, 0.50)}, 3.0: {"seg": (0.70, 0.70)}, 7.5: {"seg": (0.80, 0.65)}})
    chosen, scored = tool.choose_guidance(rows)
    assert chosen == 3.0
    assert [r["eligible"] for r in scored] == [False, True, False]
    # a wider window lets the best metric in
    assert tool.choose_guidance(rows, window=0.05)[0] == 7.5


def test_one_point_below_the_best_adherence_is_inside_the_window(tool):
    rows = _rows({2.0: {"seg": (0.50, 0.70)}, 4.0: {"seg": (0.55, 0.69)}, 5.0: {"seg": (0.60, 0.6899)}})
    chosen, scored = tool.choose_guidance(rows, window=0.01)
    assert chosen == 4.0
    assert [r["eligible"] for r in scored] == [True, True, False]


def test_metrics_are_oriented_and_relative_per_condition_type(tool):
    # seg (higher is better) prefers 7.5 a little; depth RMSE (lower is better) prefers 3 by much more:
    # relative to each type's best, 3 scores (0.5/0.55 + 1) / 2 = 0.955, 7.5 scores (1 + 0.2/0.4) / 2 = 0.75
    rows = _rows(
        {3.0: {"seg": (0.50, 0.2), "depth": (0.20, 0.2)}, 7.5: {"seg": (0.55, 0.2), "depth": (0.40, 0.2)}}
    )
    chosen, scored = tool.choose_guidance(rows)
    assert chosen == 3.0
    assert scored[0]["task_score"] == pytest.approx((0.5 / 0.55 + 1) / 2)
    assert scored[1]["task_score"] == pytest.approx((1 + 0.2 / 0.4) / 2)
    assert scored[0]["adherence"] == pytest.approx(0.2)


def test_ties_go_to_higher_adherence_then_the_smaller_scale(tool):
    tied = _rows({1.5: {"seg": (0.5, 0.30)}, 3.0: {"seg": (0.5, 0.305)}, 5.0: {"seg": (0.5, 0.305)}})
    assert tool.choose_guidance(tied)[0] == 3.0
    flat = _rows({5.0: {"seg": (0.5, 0.3)}, 2.0: {"seg": (0.5, 0.3)}})
    assert tool.choose_guidance(flat)[0] == 2.0


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_pipe):
    """A shapes-style weights folder (``base/``, ``controlnet-seg/``, ``training.json``) holding the tiny
    preset."""
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("weights")
    components = {k: v for k, v in tiny_pipe.components.items() if k != "controlnet"}
    base = StableDiffusionPipeline(**{**components, "requires_safety_checker": False})
    base.save_pretrained(root / "base")
    tiny_pipe.controlnet.save_pretrained(root / "controlnet-seg")
    record = {"self_check": {"recommended_guidance": 7.5, "all_pass": True}, "size_mb": 1.0}
    (root / "training.json").write_text(json.dumps(record))
    return root


def test_the_tool_measures_chooses_and_writes(tool, tiny_weights, tmp_path, capsys):
    out = tmp_path / "measurement.json"
    argv = ["--weights", str(tiny_weights), "--conditions", "seg", "--grid", "1,3", "--samples", "2"]
    argv += ["--steps", "2", "--batch", "2", "--out", str(out), "--write", "--json", "--no-progress"]
    assert tool.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert [r["guidance"] for r in printed["rows"]] == [1.0, 3.0]
    for row in printed["rows"]:
        seg = row["conditions"]["seg"]
        assert seg["metric"] == "miou"
        assert len(seg["per_sample_task"]) == len(seg["per_sample_adherence"]) == 2
        assert set(seg["per_sample_adherence"]) <= {0.0, 1.0}
        assert seg["adherence"] == pytest.approx(sum(seg["per_sample_adherence"]) / 2)
    chosen = printed["recommended_guidance"]
    assert chosen == tool.choose_guidance(printed["rows"])[0]
    assert printed["split"] == "calibration" and set(printed["weights_digests"]) == {"seg"}
    # written where the registry reads it; the rest of the record kept, the unmeasured choice dropped
    assert weights_recommended_guidance(tiny_weights) == chosen
    record = json.loads((tiny_weights / "training.json").read_text())
    assert record["size_mb"] == 1.0 and record["self_check"] == {"all_pass": True}
    measurement = record["recommended_guidance_measurement"]
    assert measurement["grid"] == [1.0, 3.0]
    assert "per_sample_task" not in measurement["rows"][0]["conditions"]["seg"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--conditions", "seg,seg"], "--conditions"),
        (["--samples", "0"], "--samples"),
        (["--adherence-window", "2"], "--adherence-window"),
    ],
)
def test_bad_arguments_are_refused(tool, tiny_weights, capsys, argv, message):
    assert tool.main(["--weights", str(tiny_weights), *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_weights_are_refused(tool, tmp_path, capsys):
    assert tool.main(["--weights", str(tmp_path / "nowhere"), "--conditions", "seg"]) == 2
    assert "weights are not in" in capsys.readouterr().err
