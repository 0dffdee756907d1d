"""The search's flags, defined once: a config becomes arguments and comes back equal, in ``hgc-tune search``,
in the worker processes it starts and in ``hgc-tune demo``'s searches."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from hgc_tune.cli import build_parser
from hgc_tune.cli._search_options import FLAGS, config_argv, config_from_args
from hgc_tune.errors import SearchError
from hgc_tune.search import SearchConfig

EVERY_FLAG_SET = SearchConfig(
    budget=0.0123,
    metric="ssim",
    confidence=0.9,
    n_trials=7,
    timeout=12.5,
    seed=3,
    storage="journal:/tmp/study.log",
    study_name="s",
    worker_index=2,
    peers=("deepcache-n3-b0", "tgate-g10"),
    early_rejection=False,
    search_guidance=False,
    heartbeat_interval=5,
    num_steps=4,
    max_validation_tries=2,
    guards=(("prompt", 0.015), ("ssim", 0.05)),
    clip="/models/clip",
)


def _parse(*argv: str):
    return build_parser().parse_args(["search", "--profile", "runs/p", "--out", "p.json", *argv])


@pytest.mark.parametrize(
    "config",
    [
        SearchConfig(budget=0.015),
        EVERY_FLAG_SET,
        replace(EVERY_FLAG_SET, peers=(), early_rejection=True),
        replace(EVERY_FLAG_SET, guards=()),
    ],
    ids=["defaults", "every-flag", "no-peers", "no-guards"],
)
def test_a_config_round_trips_through_its_arguments(config):
    assert config_from_args(_parse(*config_argv(config))) == config


def test_every_flag_is_a_config_field_and_every_field_a_flag_or_left_to_python():
    names = {f.name for f in fields(SearchConfig)}
    assert set(FLAGS) <= names
    # set in Python only (search_policy); a worker process cannot be given them
    assert names - set(FLAGS) == {
        "attention_stat",
        "calibration_samples",
        "early_rejection_min_samples",
        "early_rejection_margin",
        "screen",
        "grace_period",
        "max_retry",
        "startup_trials",
        "check_reference",
        "catch",
    }


def test_a_setting_without_a_flag_is_refused_not_dropped():
    with pytest.raises(SearchError, match="attention_stat"):
        config_argv(SearchConfig(budget=0.015, attention_stat="js"))


def test_workers_run_the_parent_config_with_their_own_index():
    from hgc_tune.cli.search import _worker_argv

    args = _parse(*config_argv(replace(EVERY_FLAG_SET, worker_index=0)), "--model", "tiny", "--workers", "3")
    config = config_from_args(args)
    worker = _parse(*_worker_argv(args, config, 2)[5:])
    assert worker.worker_only and worker.validation_samples == 0 and worker.test_samples == 0
    assert worker.model == "tiny" and worker.device == "cpu" and worker.workers == 1
    assert config_from_args(worker) == replace(config, worker_index=2)


def test_no_guidance_window_takes_the_guidance_window_out_of_the_search():
    assert config_from_args(_parse("--budget", "0.015")).search_guidance is True
    assert config_from_args(_parse("--budget", "0.015", "--no-guidance-window")).search_guidance is False
    assert "--no-guidance-window" in config_argv(SearchConfig(budget=0.015, search_guidance=False))
    assert "--no-guidance-window" not in config_argv(SearchConfig(budget=0.015))


def test_guard_flags_become_the_config_guards():
    assert config_from_args(_parse("--budget", "0.015")).guards is None  # the default guards
    args = _parse("--budget", "0.015", "--guard", "prompt=0.015", "--guard", "psnr=0.1")
    assert config_from_args(args).guards == (("prompt", 0.015), ("psnr", 0.1))
    assert config_from_args(_parse("--budget", "0.015", "--guard", "none")).guards == ()
    with pytest.raises(SearchError, match="--guard none cannot be combined"):
        config_from_args(_parse("--budget", "0.015", "--guard", "none", "--guard", "ssim=0.1"))


@pytest.mark.parametrize("value", ["prompt", "prompt=2", "prompt=0", "miou=0.1", "ssim=x", "=0.1"])
def test_a_bad_guard_names_the_flag_and_the_value(value):
    from hgc_tune.cli import _UsageError

    with pytest.raises(_UsageError) as error:
        _parse("--budget", "0.015", "--guard", value)
    message = str(error.value)
    assert message.startswith("`--guard` must be METRIC=BUDGET") and f"but got --guard {value!r}" in message
