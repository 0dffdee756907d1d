"""A short search on the tiny pipeline: peers first, a feasible policy validated on held-out samples,
policy + Pareto JSON written, a resumed run that adds nothing and reuses the cached held-out work."""

from __future__ import annotations

import json
import shutil

import pytest
from _search_fixtures import (
    BUDGET,
    METRIC,
    STEPS,
    TINY_KEYS,
    copy_profile,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
)

from hgc_tune.cli import main
from hgc_tune.data import open_dataset
from hgc_tune.fidelity import ConstrainedEstimate, FidelityEstimate
from hgc_tune.generation import jobs_from_samples
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.policy import load_policy, peer_policy, target_for_pipeline
from hgc_tune.search import (
    SearchConfig,
    load_pareto,
    prepare_search,
    run_search,
    search_policy,
    write_search_outputs,
)
from hgc_tune.search._heldout import heldout_key
from hgc_tune.search._space import FULL_COMPUTE, default_peer_names, policy_key

N_TRIALS = 8
PEERS = default_peer_names(STEPS)


def test_tiny_module_keys_match_the_fixture(tiny_pipe):
    assert sorted(cacheable_module_keys(tiny_pipe)) == sorted(TINY_KEYS)


@pytest.fixture(scope="module")
def searched(tiny_pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("search-run")
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), root / "profile")
    heldout = open_dataset("shapes", condition_type="seg", split="validation", limit=2)
    test = open_dataset("shapes", condition_type="seg", split="test", limit=2)
    # the point estimate (confidence 0): on 3 calibration samples a 95% bound of the random tiny model is wide
    config = SearchConfig(budget=BUDGET, metric=METRIC, n_trials=N_TRIALS, seed=1, confidence=0)
    result = search_policy(profile, tiny_pipe, config, heldout=heldout, test=test)
    paths = write_search_outputs(result, root / "policies" / "tiny-seg.json")
    return {
        "root": root,
        "profile": profile,
        "heldout": heldout,
        "test": test,
        "config": config,
        "result": result,
        "paths": paths,
    }


def test_peers_are_the_first_trials_and_rebuild_the_generators(searched, tiny_pipe):
    result = searched["result"]
    assert [r.peer for r in result.trials[: len(PEERS) + 1]] == [FULL_COMPUTE, *PEERS]
    target = target_for_pipeline(tiny_pipe, num_steps=STEPS, condition_type="seg", model="tiny")
    for name in PEERS:
        record = result.record(result.peers[name])
        assert record.policy_key == policy_key(peer_policy(name, target, TINY_KEYS))
    assert result.record(result.peers[FULL_COMPUTE]).loss == 0.0


def test_every_trial_recorded(searched):
    result = searched["result"]
    assert len(result.trials) == N_TRIALS
    assert [r.number for r in result.trials] == list(range(N_TRIALS))
    for r in result.trials:
        assert r.state == "COMPLETE"
        assert set(r.macs) == {"paper", "complete"}
        assert r.macs["paper"]["full"] == result.macs_full["paper"]
        assert r.feasible == (r.loss <= BUDGET and not r.rejected_early)
        assert r.policy_json is not None and r.samples == 3


def test_result_is_a_feasible_policy_no_worse_than_the_peers(searched):
    result = searched["result"]
    assert result.ok and result.validated and result.message is None
    chosen = result.chosen
    assert chosen.feasible and chosen.loss <= BUDGET
    peer_reductions = [result.record(n).reduction for n in result.peers.values() if result.record(n).feasible]
    assert chosen.reduction >= max(peer_reductions) > 0
    check = result.validation[-1]
    assert check["trial"] == chosen.number and check["holds"] and check["loss"] <= BUDGET
    assert check["samples"] == 2


def test_policy_file_and_provenance(searched, tiny_pipe):
    paths = searched["paths"]
    policy = load_policy(paths["policy"]).select("seg")
    result = searched["result"]
    assert policy_key(policy) == result.chosen.policy_key
    prov = policy.provenance
    assert prov.budget == BUDGET and prov.metric == METRIC and prov.trial == result.chosen.number
    from hgc_tune.models._fingerprint import weights_digest

    # the weights are part of the default name: a retrained model does not resume the old model's trials
    digest = weights_digest(tiny_pipe)
    assert prov.study == result.study_name == f"tiny-seg-{METRIC}-budget{BUDGET:g}-w{digest[:8]}"
    assert set(prov.fidelity) >= {
        "calibration_full",
        "calibration_policy",
        "calibration_loss",
        "validation_full",
        "validation_policy",
        "validation_loss",
        "validation_loss_upper",
        "test_full",
        "test_policy",
        "test_loss",
        "test_loss_upper",
        "test_samples",
    }
    assert prov.confidence == 0
    assert prov.fidelity["calibration_loss"] == pytest.approx(result.chosen.loss)
    assert prov.fidelity["validation_loss"] == pytest.approx(result.validation[-1]["loss"])
    # the reported figure comes from the test split, which took no part in the choice
    assert prov.fidelity["test_loss"] == pytest.approx(result.test["loss"])
    assert result.test["trial"] == result.chosen.number and result.test["samples"] == 2
    for convention in ("paper", "complete"):
        assert prov.macs[convention]["policy"] == pytest.approx(result.chosen.macs[convention]["policy"])
        assert prov.macs[convention]["full"] == pytest.approx(result.macs_full[convention])
    assert prov.hgc_tune_version and prov.diffusers_version


def test_pareto_json(searched):
    paths = searched["paths"]
    assert paths["pareto"].name == "tiny-seg.pareto.json"
    data = json.loads(paths["pareto"].read_text())
    result = searched["result"]
    assert data["budget"] == BUDGET and data["metric"] == METRIC
    assert len(data["trials"]) == N_TRIALS
    assert data["chosen"] == result.chosen.number
    assert [t["number"] for t in data["trials"] if t["chosen"]] == [result.chosen.number]
    assert sorted(t["number"] for t in data["trials"] if t["on_front"]) == sorted(data["front"])
    assert set(data["peers"]) == {FULL_COMPUTE, *PEERS}
    for t in data["trials"]:
        assert t["feasible"] == (t["loss"] <= BUDGET)
    # the front: no trial beats a front trial on both reduction and loss
    points = {t["number"]: (t["macs"]["paper"]["reduction"], t["loss"]) for t in data["trials"]}
    for n in data["front"]:
        red, loss = points[n]
        assert not any(r > red and other < loss for r, other in points.values())
    assert result.chosen.number in data["front"] or any(
        points[n] == points[result.chosen.number] for n in data["front"]
    )
    # what the search writes, the Pareto file's reader reads back
    read = load_pareto(paths["pareto"])
    assert read.chosen.number == result.chosen.number and read.budget == BUDGET
    assert [p.number for p in read.front] == sorted(data["front"])
    assert {name for p in read.points for name in p.peers} == {FULL_COMPUTE, *PEERS}
    assert [p.number for p in read.points if p.is_full_compute] == [result.peers[FULL_COMPUTE]]


def test_resume_adds_no_trials_and_reuses_held_out_work(searched, tiny_pipe):
    profile = searched["profile"]
    cache = sorted((profile / "heldout").iterdir())
    assert len(cache) == 2
    stamp = cache[0].stat().st_mtime_ns
    again = search_policy(
        profile, tiny_pipe, searched["config"], heldout=searched["heldout"], test=searched["test"]
    )
    assert [r.number for r in again.trials] == list(range(N_TRIALS))
    assert again.chosen.number == searched["result"].chosen.number
    assert all(v["cached"] for v in again.validation) and again.test["cached"]
    assert len(sorted((profile / "heldout").iterdir())) == 2  # the validation and test references
    assert cache[0].stat().st_mtime_ns == stamp


def test_early_rejection_and_no_feasible_policy(tiny_pipe, tmp_path_factory, tmp_path):
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), tmp_path / "profile")
    config = SearchConfig(
        budget=1e-5,
        metric="latent_rel_error",
        n_trials=2,
        peers=("deepcache-n3-b0",),
        early_rejection_min_samples=1,
        confidence=0,
    )
    result = search_policy(profile, tiny_pipe, config, heldout=None)
    deepcache = result.record(result.peers["deepcache-n3-b0"])
    assert deepcache.rejected_early and deepcache.samples == 1 and not deepcache.feasible
    assert deepcache.loss > 2e-5
    assert not result.ok and result.chosen is None and "no policy cheaper than full compute" in result.message
    paths = write_search_outputs(result, tmp_path / "out.json")
    assert paths["policy"] is None and not (tmp_path / "out.json").exists()
    data = json.loads(paths["pareto"].read_text())
    assert data["chosen"] is None and data["message"] == result.message
    assert [t["rejected_early"] for t in data["trials"]] == [False, True]


def _candidates(result):
    """The calibration-feasible policies cheaper than full compute, cheapest first (one per policy)."""
    seen, out = set(), []
    ordered = sorted(
        (r for r in result.trials if r.feasible and r.duplicate_of is None and r.reduction > 0),
        key=lambda r: (r.macs["paper"]["policy"], r.loss, r.number),
    )
    for r in ordered:
        if r.policy_key not in seen:
            seen.add(r.policy_key)
            out.append(r.number)
    return out


def _fake_heldout(session, heldout, number, loss):
    key = heldout_key(
        session.pipe, jobs_from_samples(heldout, seed=session.config.seed + 100_000), session.settings
    )
    one = FidelityEstimate(metric=METRIC, full=1.0, policy=1.0 - loss, loss=loss, samples=2, total=2)
    estimate = ConstrainedEstimate((one,), (BUDGET,))
    session.study.set_user_attr(f"hgc.heldout.{number}", {"key": key, **estimate.to_dict()})


def test_next_cheapest_policy_when_the_cheapest_breaks_the_budget_on_held_out(searched, tiny_pipe, tmp_path):
    profile = shutil.copytree(searched["profile"], tmp_path / "profile")
    session = prepare_search(profile, tiny_pipe, searched["config"])
    first, second = _candidates(searched["result"])[:2]
    _fake_heldout(session, searched["heldout"], first, 2 * BUDGET)
    _fake_heldout(session, searched["heldout"], second, BUDGET / 2)
    result = run_search(session, heldout=searched["heldout"])
    assert [(v["trial"], v["holds"], v["cached"]) for v in result.validation] == [
        (first, False, True),
        (second, True, True),
    ]
    assert result.chosen.number == second
    assert result.policy.provenance.fidelity["validation_loss"] == pytest.approx(BUDGET / 2)


def test_cli_exits_1_when_no_policy_holds_on_held_out(searched, tiny_pipe, tmp_path, capsys):
    profile = shutil.copytree(searched["profile"], tmp_path / "profile")
    session = prepare_search(profile, tiny_pipe, searched["config"])
    tried = _candidates(searched["result"])[:3]
    for number in tried:
        _fake_heldout(session, searched["heldout"], number, 3 * BUDGET)
    out = tmp_path / "policies" / "p.json"
    argv = ["search", "--profile", str(profile), "--budget", str(BUDGET), "--metric", METRIC]
    argv += ["--trials", str(N_TRIALS), "--validation-samples", "2", "--test-samples", "0"]
    argv += ["--confidence", "0", "--no-progress", "--out", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"none of the {len(tried)} plausible policies tried holds" in captured.err
    assert not out.exists()
    data = json.loads((tmp_path / "policies" / "p.pareto.json").read_text())
    assert data["chosen"] is None and [v["trial"] for v in data["validation"]] == tried
    assert "pareto:" in captured.out


def test_cli_validation_tries_bounds_the_held_out_checks(searched, tiny_pipe, tmp_path, capsys):
    profile = shutil.copytree(searched["profile"], tmp_path / "profile")
    session = prepare_search(profile, tiny_pipe, searched["config"])
    candidates = _candidates(searched["result"])
    assert len(candidates) >= 3
    for number in candidates[:2]:
        _fake_heldout(session, searched["heldout"], number, 3 * BUDGET)
    out = tmp_path / "p.json"
    argv = ["search", "--profile", str(profile), "--budget", str(BUDGET), "--metric", METRIC]
    argv += ["--trials", str(N_TRIALS), "--heldout-samples", "2", "--test-samples", "0", "--confidence", "0"]
    argv += ["--no-progress", "--out", str(out)]
    assert main([*argv, "--validation-tries", "2"]) == 1
    assert "none of the 2 plausible policies tried holds" in capsys.readouterr().err
    data = json.loads((tmp_path / "p.pareto.json").read_text())
    assert [v["trial"] for v in data["validation"]] == candidates[:2]


def test_failed_trials_are_recorded_and_the_search_goes_on(tiny_pipe, tmp_path_factory, tmp_path):
    profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), tmp_path / "profile")
    config = SearchConfig(budget=BUDGET, metric=METRIC, n_trials=4, peers=("deepcache-n3-b0", "tgate-g2"))
    session = prepare_search(profile, tiny_pipe, config)

    def out_of_memory(policy):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # a generator, like the real one

    session.objective.outputs = out_of_memory
    result = run_search(session)
    states = [r.state for r in result.trials]
    assert states == ["COMPLETE", "FAIL", "FAIL", "FAIL"]  # full compute needs no generation
    assert all("out of memory" in r.error for r in result.trials[1:])
    assert result.chosen is None and "no policy cheaper than full compute" in result.message


@pytest.fixture(scope="module")
def twice(tiny_pipe, tmp_path_factory):
    """The same trial-bounded search (95% bounds, sequential, screens) run twice from scratch."""
    results = []
    for run in ("a", "b"):
        root = tmp_path_factory.mktemp(f"repro-{run}")
        profile = copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), root / "profile")
        config = SearchConfig(
            budget=0.3, metric=METRIC, n_trials=10, seed=3, startup_trials=3, early_rejection_min_samples=2
        )
        results.append(search_policy(profile, tiny_pipe, config))
    return results


def test_same_seed_and_trial_count_give_the_same_policy(twice):
    a, b = twice
    assert len(a.trials) == len(b.trials) == 10
    assert [r.params for r in a.trials] == [r.params for r in b.trials]
    assert [(r.loss, r.loss_upper, r.samples) for r in a.trials] == [
        (r.loss, r.loss_upper, r.samples) for r in b.trials
    ]
    assert a.ok and b.ok and a.chosen.number == b.chosen.number
    assert policy_key(a.policy) == policy_key(b.policy)
    assert a.policy.provenance.confidence == 0.95


def test_feasible_means_the_upper_bound_is_within_budget_and_dearer_trials_are_screened(twice):
    result = twice[0]
    assert result.confidence == 0.95
    for r in result.trials:
        assert r.confidence == 0.95
        assert r.feasible == (r.loss_upper is not None and r.loss_upper <= 0.3 and not r.rejected_early)
        if r.loss_upper is not None:
            assert r.loss_upper >= r.loss
    incumbent = float("inf")
    for r in result.trials:  # one worker: trials ran in number order
        if r.screen:
            assert r.macs["paper"]["policy"] >= incumbent and r.samples <= 2
        elif r.duplicate_of is None:
            assert r.macs["paper"]["policy"] < incumbent or r.peer == FULL_COMPUTE or r.number == 0
        if r.feasible:
            incumbent = min(incumbent, r.macs["paper"]["policy"])
    assert result.chosen.loss_upper <= 0.3
