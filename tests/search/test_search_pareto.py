"""The Pareto file: what the search writes reads back, and a malformed file is refused naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from hgc_tune.errors import ReportError, SearchError
from hgc_tune.search._pareto import load_pareto, pareto_data_from_json

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-seg.pareto.json"


@pytest.fixture
def raw() -> dict:
    return json.loads(FIXTURE.read_text())


def test_pareto_file_reads_trials_front_peers_and_chosen():
    data = load_pareto(FIXTURE)
    assert data.budget == 0.015
    assert data.metric == "miou"
    assert data.num_steps == 4
    assert data.validated
    assert data.source == str(FIXTURE)
    assert [p.number for p in data.points] == list(range(10))
    assert [p.number for p in data.front] == [0, 2, 4, 6]
    chosen = data.chosen
    assert chosen.number == 4
    assert chosen.reduction("paper") == 0.45
    assert chosen.reduction("complete") == pytest.approx(0.36)
    assert chosen.loss == 0.012
    assert chosen.heldout_loss == 0.0139
    # the full-compute anchor is not a peer; aliases of one trial are one peer
    assert [p.peer for p in data.peers] == ["deepcache-n3-b0", "tgate-g10/tgate-g10-alias", "cnwin-k10-drop"]
    by_number = {p.number: p for p in data.points}
    assert not by_number[7].scored and by_number[7].loss is None and by_number[7].reduction() is None
    assert by_number[8].rejected_early and not by_number[8].scored
    assert by_number[9].duplicate_of == 4


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="something-else"), "`format` must be 'hgc-tune-pareto'"),
        (lambda d: d.update(schema_version=3), "schema_version"),
        (lambda d: d.pop("budget"), "`budget` must be a finite number"),
        (lambda d: d.update(trials={}), "`trials` must be a list"),
        (lambda d: d.update(front=[0, 99]), r"name trials \[99\]"),
        (lambda d: d.update(chosen="4"), "`chosen` must be a trial number"),
        (lambda d: d["trials"][1].update(loss="0.1"), r"trials\[1\]\.loss"),
        (
            lambda d: d["trials"][1]["macs"]["paper"].update(reduction=None),
            r"trials\[1\]\.macs\.paper\.reduction",
        ),
        (lambda d: d["trials"][2].update(number=None), r"trials\[2\]\.number"),
        (lambda d: d.update(metric=3), "`metric` must be a string"),
    ],
)
def test_pareto_violations_name_the_field(raw, edit, message):
    bad = copy.deepcopy(raw)
    edit(bad)
    with pytest.raises(SearchError, match=message):
        pareto_data_from_json(bad)


def test_pareto_file_that_is_missing_or_not_json(tmp_path):
    with pytest.raises(SearchError, match="cannot read"):
        load_pareto(tmp_path / "absent.pareto.json")
    broken = tmp_path / "broken.pareto.json"
    broken.write_text("{not json")
    with pytest.raises(SearchError, match="malformed JSON at line 1"):
        load_pareto(broken)


def test_pareto_file_nested_past_the_recursion_limit(tmp_path):
    hostile = tmp_path / "deep.pareto.json"
    hostile.write_text('{"trials": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(
        SearchError, match=r"the Pareto file .*deep.pareto.json'.*nested deeper than 64 levels"
    ):
        load_pareto(hostile)


def test_a_reader_chooses_its_error_class(tmp_path):
    with pytest.raises(ReportError, match="cannot read the Pareto file"):
        load_pareto(tmp_path / "absent.pareto.json", error=ReportError)
