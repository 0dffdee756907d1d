"""Bad search input: each a clear SearchError before any work (no study, no generation)."""

from __future__ import annotations

import math

import pytest
from _search_fixtures import (
    BUDGET,
    METRIC,
    STEPS,
    copy_profile,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
    run_cli,
    tiny_profile_dir,
)

from hgc_tune.cli import main
from hgc_tune.errors import SearchError
from hgc_tune.profile import Profile
from hgc_tune.search import SearchConfig, prepare_search


@pytest.mark.parametrize("budget", [1.5, 0.0, 1.0, -0.01, math.nan, True, "0.1"])
def test_budget_outside_the_open_unit_interval(budget):
    with pytest.raises(SearchError) as info:
        SearchConfig(budget=budget)
    assert str(info.value) == f"`budget` must be in (0, 1), but got budget={budget!r}."


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_trials", 0, "`n_trials` must be a positive integer"),
        ("calibration_samples", 0, "`calibration_samples` must be a positive integer or None"),
        ("timeout", -1.0, "`timeout` must be positive"),
        ("attention_stat", "cos", "`attention_stat` must be one of"),
        ("peers", "deepcache-n3-b0", "`peers` must be a tuple"),
    ],
)
def test_other_config_fields(field, value, message):
    with pytest.raises(SearchError, match=message):
        SearchConfig(budget=BUDGET, **{field: value})


@pytest.fixture
def profile_dir(tiny_pipe, tmp_path_factory, tmp_path):
    return copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), tmp_path / "profile")


def _no_work(profile_dir, storage):
    # nothing was created: no study file, no held-out cache
    assert not storage.exists()
    assert not (profile_dir / "study.db").exists()
    assert not (profile_dir / "heldout").exists()


def test_metric_that_does_not_fit_the_condition_type(tiny_pipe, profile_dir, tmp_path):
    storage = tmp_path / "s.db"
    config = SearchConfig(budget=BUDGET, metric="edge_f1", storage=f"sqlite:///{storage}")
    with pytest.raises(SearchError, match=r"metric='edge_f1'.*condition_type='seg'"):
        prepare_search(profile_dir, tiny_pipe, config)
    _no_work(profile_dir, storage)


def test_unknown_metric(tiny_pipe, profile_dir, tmp_path):
    with pytest.raises(SearchError, match="unknown fidelity metric"):
        prepare_search(profile_dir, tiny_pipe, SearchConfig(budget=BUDGET, metric="fid"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "fingerprint",
            "ffffffffffffffff",
            "but the profile was made with 'ffffffffffffffff' \\(another model\\)",
        ),
        # same architecture, retrained
        (
            "weights_digest",
            "0123456789abcdef",
            "other weights of this architecture \\('0123",
        ),
    ],
)
def test_profile_of_another_model_or_other_weights(tiny_pipe, profile_dir, tmp_path, field, value, message):
    loaded = Profile.load(profile_dir)
    meta = loaded.meta
    meta["model"][field] = value
    other = Profile(meta, loaded.tensors())
    storage = tmp_path / "s.db"
    config = SearchConfig(budget=BUDGET, metric=METRIC, storage=f"sqlite:///{storage}")
    with pytest.raises(SearchError, match=message):
        prepare_search(other, tiny_pipe, config, cache_dir=tmp_path)
    _no_work(profile_dir, storage)


def test_held_out_references_are_keyed_by_the_weights(tiny_pipe, tmp_path):
    from hgc_tune.data import open_dataset
    from hgc_tune.generation import GenerationJob, GenerationSettings
    from hgc_tune.models import load_pipeline
    from hgc_tune.search._heldout import heldout_key

    sample = next(iter(open_dataset("shapes", condition_type="seg", split="heldout", limit=1)))
    jobs = [
        GenerationJob(prompt=sample.prompt, negative_prompt=None, seed=0, condition=sample.condition_image())
    ]
    settings = GenerationSettings(STEPS, 7.5, 64, 64)
    key = heldout_key(tiny_pipe, jobs, settings)
    assert heldout_key(load_pipeline("tiny"), jobs, settings) == key
    assert heldout_key(load_pipeline("tiny", seed=1), jobs, settings) != key
    saved = load_pipeline("tiny")
    saved.scheduler.save_config(tmp_path)  # diffusers writes `_class_name` into the live config
    assert heldout_key(saved, jobs, settings) == key


def test_profile_of_another_step_count(tiny_pipe, profile_dir, tmp_path):
    storage = tmp_path / "s.db"
    config = SearchConfig(budget=BUDGET, metric=METRIC, num_steps=20, storage=f"sqlite:///{storage}")
    with pytest.raises(
        SearchError, match=f"made for {STEPS} denoising steps, but the search asks for num_steps=20"
    ):
        prepare_search(profile_dir, tiny_pipe, config)
    _no_work(profile_dir, storage)


def test_empty_calibration_split(tiny_pipe, profile_dir, tmp_path):
    loaded = Profile.load(profile_dir)
    meta = loaded.meta
    meta.update(seeds=[], prompts=[], negative_prompts=[])
    tensors = loaded.tensors()
    for name in ("reference/latents", "reference/images", "reference/conditions"):
        tensors[name] = tensors[name][:0]
    empty = Profile(meta, tensors)
    storage = tmp_path / "s.db"
    with pytest.raises(SearchError, match="calibration split is empty"):
        prepare_search(
            empty, tiny_pipe, SearchConfig(budget=BUDGET, metric=METRIC, storage=f"sqlite:///{storage}")
        )
    _no_work(profile_dir, storage)


def test_missing_profile(tiny_pipe, tmp_path):
    with pytest.raises(SearchError, match=r"no profile at .*run `hgc-tune profile --out .*` first"):
        prepare_search(tmp_path / "runs" / "nothing", tiny_pipe, SearchConfig(budget=BUDGET))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("recorded", "message"),
    [
        (True, "made with other weights of this architecture"),
        # a profile made before digests were recorded: the reference check still catches it
        (False, "does not reproduce the profile's reference output"),
    ],
)
def test_pipeline_with_other_weights_is_refused(tiny_pipe, profile_dir, tmp_path, recorded, message):
    import torch

    storage = tmp_path / "s.db"
    profile = Profile.load(profile_dir)
    if not recorded:
        meta = profile.meta
        del meta["model"]["weights_digest"]
        profile = Profile(meta, profile.tensors())
    # same architecture (fingerprint), other weights
    unet = tiny_pipe.unet
    saved = unet.conv_out.bias.detach().clone()
    with torch.no_grad():
        unet.conv_out.bias.add_(0.5)
    try:
        with pytest.raises(SearchError, match=message):
            prepare_search(
                profile,
                tiny_pipe,
                SearchConfig(budget=BUDGET, metric=METRIC, storage=f"sqlite:///{storage}"),
            )
    finally:
        with torch.no_grad():
            unet.conv_out.bias.copy_(saved)
    _no_work(profile_dir, storage)


def test_cli_bad_input_exits_2_with_the_message(tiny_pipe, tmp_path_factory, tmp_path, capsys):
    profile = tiny_profile_dir(tiny_pipe, tmp_path_factory.getbasetemp())
    out = tmp_path / "p.json"
    assert main(["search", "--profile", str(profile), "--budget", "1.5", "--out", str(out)]) == 2
    assert "`--budget` must be in (0, 1), but got --budget=1.5." in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert main(["search", "--profile", str(missing), "--budget", "0.1", "--out", str(out)]) == 2
    assert "run `hgc-tune profile" in capsys.readouterr().err
    assert (
        main(
            [
                "search",
                "--profile",
                str(profile),
                "--budget",
                "0.1",
                "--metric",
                "depth_rmse",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "depth_rmse" in capsys.readouterr().err
    assert not out.exists()


def test_cli_budget_error_before_loading_anything(tmp_path):
    # a fresh process: the error comes before the profile or a model is read
    done = run_cli(
        "search", "--profile", str(tmp_path / "nope"), "--budget", "2", "--out", str(tmp_path / "p.json")
    )
    assert done.returncode == 2
    assert "`--budget` must be in (0, 1), but got --budget=2." in done.stderr


def test_resuming_a_study_made_with_other_settings(tiny_pipe, profile_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    first = SearchConfig(budget=BUDGET, metric=METRIC, storage=storage, study_name="s", check_reference=False)
    prepare_search(profile_dir, tiny_pipe, first)
    other = SearchConfig(budget=0.02, metric=METRIC, storage=storage, study_name="s", check_reference=False)
    with pytest.raises(
        SearchError, match=r"study 's' .* was made with budget=0.05, but this search has 0.02"
    ):
        prepare_search(profile_dir, tiny_pipe, other)
