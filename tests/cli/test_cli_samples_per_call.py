"""`--samples-per-call`: a bad value is refused before anything loads, `profile` records the batching, and the
search's config carries it to worker processes."""

from __future__ import annotations

import json

import pytest
import torch

from hgc_tune.cli import main
from hgc_tune.cli._search_options import config_argv, config_from_args
from hgc_tune.profile import Profile
from hgc_tune.search import SearchConfig


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("command", ["profile", "evaluate", "search", "demo"])
def test_a_bad_samples_per_call_is_refused_naming_the_flag(command, capsys, tmp_path):
    argv = [command, "--samples-per-call", "0"]
    if command in ("profile", "search"):
        argv += ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--samples-per-call=0" in capsys.readouterr().err


def test_profile_records_the_batching_and_search_config_round_trips_it(tmp_path, capsys, one_thread):
    out = tmp_path / "tiny-seg"
    argv = ["profile", "--model", "tiny", "--dataset", "shapes", "--condition", "seg", "--samples", "3"]
    argv += ["--steps", "2", "--samples-per-call", "2", "--out", str(out), "--no-progress", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["samples_per_call"] == 2
    assert Profile.load(out).samples_per_call == 2

    from hgc_tune.cli import build_parser

    for size in (None, 4):
        config = SearchConfig(budget=0.05, samples_per_call=size)
        argv = ["search", "--profile", "runs/p", "--out", "p.json", *config_argv(config)]
        assert config_from_args(build_parser().parse_args(argv)) == config
