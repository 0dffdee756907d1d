"""``evaluate_policy`` and ``hgc-tune evaluate``: metric at full compute and with a policy, loss, MACs."""

from __future__ import annotations

import json

import pytest
from _search_fixtures import (
    STEPS,
    TINY_KEYS,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
    tiny_profile_dir,
)

from hgc_tune.cli import main
from hgc_tune.data import open_dataset
from hgc_tune.fidelity import evaluate_policy
from hgc_tune.policy import full_compute_policy, peer_policy, target_for_pipeline
from hgc_tune.profile import Profile


@pytest.fixture(scope="module")
def samples():
    return open_dataset("shapes", condition_type="seg", split="heldout", limit=2)


@pytest.fixture(scope="module")
def table(tiny_pipe, tmp_path_factory):
    return Profile.load(tiny_profile_dir(tiny_pipe, tmp_path_factory.getbasetemp())).mac_table


def _evaluate(pipe, policy, samples, table, **kwargs):
    return evaluate_policy(
        pipe, policy, samples, num_steps=STEPS, metric="ssim", condition_type="seg", mac_table=table, **kwargs
    )


def test_full_compute_policy_has_no_loss(tiny_pipe, samples, table):
    target = target_for_pipeline(tiny_pipe, num_steps=STEPS, condition_type="seg")
    result = _evaluate(tiny_pipe, full_compute_policy(target), samples, table)
    assert result["loss"] == 0.0 and result["full"] == result["policy"] == 1.0
    assert result["macs"]["paper"]["reduction"] == 0.0 and result["samples"] == 2


def test_dropped_controlnet_two_ways(tiny_pipe, samples, table):
    # the executor's drop window over all steps and diffusers' scale 0 give the same images
    target = target_for_pipeline(tiny_pipe, num_steps=STEPS, condition_type="seg")
    dropped = _evaluate(tiny_pipe, peer_policy("cnwin-k0-drop", target, TINY_KEYS), samples, table)
    scaled = _evaluate(tiny_pipe, None, samples, table, controlnet_scale=0.0)
    assert dropped["loss"] > 0
    assert dropped["per_sample_policy"] == pytest.approx(scaled["per_sample_policy"], abs=1e-6)
    paper = dropped["macs"]["paper"]
    assert paper["policy"] == paper["full"] - paper["full.controlnet"]
    assert scaled["macs"]["paper"]["reduction"] == 0.0


def test_cli_json(capsys):
    argv = ["evaluate", "--model", "tiny", "--condition", "seg", "--policy", "peer:deepcache-n3-b0"]
    argv += ["--steps", str(STEPS), "--samples", "1", "--metric", "ssim", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert (
        result["metric"] == "ssim" and result["samples"] == 1 and result["policy_name"] == "deepcache-n3-b0"
    )
    assert 0 < result["macs"]["paper"]["reduction"] < 1 and set(result["macs"]) == {"paper", "complete"}
    assert result["loss"] == pytest.approx(1.0 - result["policy"])
    # one sample cannot bound a loss
    assert result["confidence"] == 0.95 and result["loss_upper"] is None and result["split"] == "test"


def test_cli_shows_the_upper_bound(capsys):
    from scipy import stats

    argv = ["evaluate", "--model", "tiny", "--condition", "seg", "--policy", "peer:deepcache-n3-b0"]
    argv += ["--steps", str(STEPS), "--samples", "2", "--metric", "ssim", "--confidence", "0.9"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    d = [1.0 - v for v in result["per_sample_policy"]]
    half = stats.t.ppf(0.9, 1) * abs(d[0] - d[1]) / 2  # sd of two values / sqrt(2)
    assert result["loss_upper"] == pytest.approx(result["loss"] + half)
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"90% upper bound  {100 * result['loss_upper']:.2f}%  (paired over 2 samples)" in out


def test_cli_refuses_a_bad_confidence(capsys):
    argv = ["evaluate", "--model", "tiny", "--condition", "seg", "--policy", "none", "--confidence", "1"]
    assert main(argv) == 2
    assert "`--confidence` must be in [0, 1), but got --confidence=1." in capsys.readouterr().err


def test_cli_refuses_a_metric_that_does_not_fit(capsys):
    argv = ["evaluate", "--model", "tiny", "--condition", "seg", "--policy", "none", "--metric", "edge_f1"]
    assert main(argv) == 2
    assert "edge_f1" in capsys.readouterr().err


def test_compare_policies_takes_the_task_and_strength(tiny_pipe, samples):
    from hgc_tune.errors import SearchError
    from hgc_tune.fidelity._evaluate_policy import compare_policies
    from hgc_tune.models import pipeline_for_task, steps_run

    pipe = pipeline_for_task(tiny_pipe, "img2img")
    run = steps_run(STEPS, 0.75)
    everything = full_compute_policy(target_for_pipeline(pipe, num_steps=run, condition_type="seg"))
    rows = compare_policies(
        pipe,
        {"all": everything},
        samples,
        num_steps=STEPS,
        metric="ssim",
        condition_type="seg",
        strength=0.75,
    )
    # each sample's init image and the strength reach the img2img calls: full compute scores no loss
    assert [(r["name"], r["loss"], r["task"], r["strength"]) for r in rows] == [("all", 0.0, "img2img", 0.75)]
    with pytest.raises(SearchError, match="`strength` is for img2img and inpainting pipelines"):
        compare_policies(tiny_pipe, {}, samples, num_steps=STEPS, metric="ssim", strength=0.5)
