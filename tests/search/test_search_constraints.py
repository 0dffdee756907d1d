"""Searches under several constraints: the plan (defaults, prompt metric, errors), and a real search on the
tiny pipeline with two constraints whose policy and Pareto files record every budget, bound, c and k."""

from __future__ import annotations

import json

import pytest
from _search_fixtures import (
    BUDGET,
    METRIC,
    copy_profile,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
)

from hgc_tune.data import open_dataset
from hgc_tune.errors import SearchError
from hgc_tune.fidelity._registry import METRICS, default_metric
from hgc_tune.policy import load_policy
from hgc_tune.policy._model import SCHEMA_VERSION
from hgc_tune.search import SearchConfig, load_pareto, search_policy, write_search_outputs
from hgc_tune.search._constraints import DEFAULT_PROMPT_BUDGET, plan_constraints


def test_default_guards_prompt_adherence_on_shapes():
    plan = plan_constraints(SearchConfig(budget=0.015), default_metric("seg"), "shapes")
    assert [(c.metric.name, c.budget) for c in plan.constraints] == [
        ("miou", 0.015),
        ("background", DEFAULT_PROMPT_BUDGET),
    ]
    assert plan.prompt_metric == "background" and plan.k == 2 and plan.level == pytest.approx(0.975)
    assert plan.reported == ("ssim", "psnr")


def test_default_guards_clip_when_a_clip_model_is_given():
    plan = plan_constraints(SearchConfig(budget=0.015, clip="some/clip"), default_metric("seg"), "sd15")
    assert [c.metric.name for c in plan.constraints] == ["miou", "clip"] and plan.prompt_metric == "clip"


def test_a_checkpoint_without_clip_leaves_the_prompt_unguarded():
    plan = plan_constraints(SearchConfig(budget=0.015), default_metric("seg"), "sd15")
    assert [c.metric.name for c in plan.constraints] == ["miou"] and plan.prompt_metric is None
    assert plan.to_json()["prompt"] is None and plan.level == 0.95


def test_explicit_guards_and_their_errors():
    plan = plan_constraints(
        SearchConfig(budget=0.015, guards=(("ssim", 0.05), ("prompt", 0.02))), default_metric("seg"), "shapes"
    )
    assert [(c.metric.name, c.budget) for c in plan.constraints] == [
        ("miou", 0.015),
        ("ssim", 0.05),
        ("background", 0.02),
    ]
    assert plan.reported == ("psnr",) and plan.level == pytest.approx(1 - 0.05 / 3)
    assert plan_constraints(SearchConfig(budget=0.015, guards=()), METRICS["miou"], "shapes").k == 1
    with pytest.raises(SearchError, match=r"--guard prompt=0.02`: model 'sd15' has no prompt-adherence"):
        plan_constraints(SearchConfig(budget=0.015, guards=(("prompt", 0.02),)), METRICS["miou"], "sd15")
    with pytest.raises(SearchError, match=r"--guard clip=0.02` needs a CLIP model"):
        plan_constraints(SearchConfig(budget=0.015, guards=(("clip", 0.02),)), METRICS["miou"], "shapes")
    with pytest.raises(SearchError, match="'ssim' is already a constraint"):
        plan_constraints(
            SearchConfig(budget=0.015, metric="ssim", guards=(("ssim", 0.1),)), METRICS["ssim"], "x"
        )


@pytest.mark.parametrize(
    ("guards", "message"),
    [
        ((("mIoU", 0.1),), "a guard's metric must be one of"),
        ((("ssim", 1.5),), r"the budget of guard 'ssim' must be in \(0, 1\), but got 1.5"),
        ((("ssim", 0.1), ("ssim", 0.2)), "guard 'ssim' is given twice"),
        ("ssim=0.1", "`guards` must be a tuple of"),
    ],
)
def test_bad_guards_name_the_field_and_value(guards, message):
    with pytest.raises(SearchError, match=message):
        SearchConfig(budget=0.015, guards=guards)


@pytest.fixture(scope="module")
def two_constraints(tiny_pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("search-constraints")
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), root / "profile")
    heldout = open_dataset("shapes", condition_type="seg", split="validation", limit=2)
    test = open_dataset("shapes", condition_type="seg", split="test", limit=2)
    # the tiny model is random: its task metric is undefined, its pictures and the prompts' backgrounds not
    config = SearchConfig(
        budget=BUDGET, metric=METRIC, guards=(("background", 0.5),), n_trials=6, seed=1, confidence=0
    )
    result = search_policy(profile, tiny_pipe, config, heldout=heldout, test=test)
    paths = write_search_outputs(result, root / "policies" / "tiny-seg.json")
    return result, paths


def test_a_real_search_under_two_constraints(two_constraints):
    result, paths = two_constraints
    assert result.constraints["k"] == 2
    assert [i["metric"] for i in result.constraints["items"]] == [METRIC, "background"]
    for r in result.trials:
        assert [c["metric"] for c in r.constraints] == [METRIC, "background"]
        # SSIM and PSNR beside every trial (SSIM is also this search's metric, PSNR is only reported)
        assert set(r.picture) == {"ssim", "psnr"} and r.picture["ssim"] == r.metric_policy
        assert r.feasible == all(c["holds"] for c in r.constraints)
    pareto = load_pareto(paths["pareto"])
    assert pareto.constraints["items"][1]["metric"] == "background"
    assert all(p.constraints for p in pareto.points)
    raw = json.loads(paths["pareto"].read_text())
    assert raw["schema_version"] == 2 and "picture" in raw["trials"][0]


def test_the_policy_records_every_constraint_c_and_k(two_constraints):
    result, paths = two_constraints
    assert result.ok, result.message
    policy = load_policy(paths["policy"]).select()
    assert json.loads(paths["policy"].read_text())["schema_version"] == SCHEMA_VERSION == 3
    c = policy.provenance.constraints
    assert c["confidence"] == 0.0 and c["k"] == 2 and c["prompt"] == "background"
    task, prompt = c["items"]
    assert (task["metric"], task["budget"], prompt["metric"], prompt["budget"]) == (
        METRIC,
        BUDGET,
        "background",
        0.5,
    )
    assert prompt["loss_mode"] == "absolute" and prompt["kind"] == "prompt"
    for item in (task, prompt):
        assert {"calibration_loss", "validation_loss", "test_loss"} <= set(item)
        assert item["test_loss_upper"] == item["test_loss"]  # confidence 0: the point estimate
    assert {"calibration_psnr", "validation_ssim", "test_psnr"} <= set(policy.provenance.picture_fidelity)


def test_the_search_table_shows_every_constraint_and_the_picture(tiny_pipe, tmp_path_factory, capsys):
    from hgc_tune.cli import main

    root = tmp_path_factory.mktemp("search-table")
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), root / "profile")
    argv = ["search", "--profile", str(profile), "--out", str(root / "p.json"), "--model", "tiny"]
    argv += ["--budget", str(BUDGET), "--metric", METRIC, "--guard", "background=0.5", "--confidence", "0"]
    argv += [
        "--trials",
        "3",
        "--peers",
        "deepcache-n3-b0",
        "--validation-samples",
        "0",
        "--test-samples",
        "0",
    ]
    assert main([*argv, "--no-progress"]) in (0, 1)
    out = capsys.readouterr().out
    assert f"budgets {METRIC} {BUDGET:g}, background 0.5; point estimates" in out
    header = next(line for line in out.splitlines() if line.startswith("schedule"))
    assert header.split() == [
        "schedule",
        "MAC",
        "reduction",
        f"{METRIC}",
        "loss",
        f"{METRIC}",
        "bound",
        "background",
        "loss",
        "background",
        "bound",
        "SSIM",
        "PSNR",
        "samples",
        "feasible",
    ]
    full = next(line for line in out.splitlines() if line.startswith("full-compute"))
    assert "1.000" in full and "60.0" in full  # SSIM 1 and PSNR at its cap: the pictures are the references
