"""Pareto file reading, the summary's fidelity grouping, labels and formatting, and the trade-off figure."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from hgc_tune.errors import ReportError
from hgc_tune.report._figures import plot_tradeoff, save_figure
from hgc_tune.report._labels import format_macs, format_percent, module_label, natural_order
from hgc_tune.report._pareto import load_pareto, pareto_data_from_json
from hgc_tune.report._summary import fidelity_by_split

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
        (lambda d: d.update(schema_version=2), "schema_version"),
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
    with pytest.raises(ReportError, match=message):
        pareto_data_from_json(bad)


def test_pareto_file_that_is_missing_or_not_json(tmp_path):
    with pytest.raises(ReportError, match="cannot read"):
        load_pareto(tmp_path / "absent.pareto.json")
    broken = tmp_path / "broken.pareto.json"
    broken.write_text("{not json")
    with pytest.raises(ReportError, match="malformed JSON at line 1"):
        load_pareto(broken)


def test_tradeoff_figure_is_a_light_png(tmp_path):
    from PIL import Image

    path = save_figure(plot_tradeoff(load_pareto(FIXTURE)), tmp_path / "tradeoff.png")
    assert path.stat().st_size < 300_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert 600 <= image.width <= 2500 and 300 <= image.height <= 2500
    assert not list(tmp_path.glob(".*")), "the temporary file must be gone"


def test_fidelity_keys_are_grouped_by_split():
    fidelity = {
        "calibration_loss": 0.012,
        "calibration_full": 0.6,
        "heldout_loss": 0.014,
        "heldout.samples": 8,
        "loss/calibration": 0.5,
        "metric": "miou",
    }
    assert fidelity_by_split(fidelity) == {
        "calibration": {"loss": 0.5, "full": 0.6},
        "heldout": {"loss": 0.014, "samples": 8},
        "": {"metric": "miou"},
    }


def test_search_provenance_splits_and_bounds_in_the_report():
    from hgc_tune.report._html import _fidelity_table

    fidelity = {
        "calibration_loss": 0.004,
        "calibration_loss_upper": 0.011,
        "validation_loss": 0.006,
        "validation_loss_upper": 0.013,
        "test_loss": 0.007,
        "test_loss_upper": 0.012,
        "test_samples": 16,
    }
    grouped = fidelity_by_split(fidelity)
    assert grouped == {
        "calibration": {"loss": 0.004, "loss_upper": 0.011},
        "validation": {"loss": 0.006, "loss_upper": 0.013},
        "test": {"loss": 0.007, "loss_upper": 0.012, "samples": 16},
    }
    html = _fidelity_table(grouped, 0.95)
    assert "one-sided 95% upper confidence bound" in html and "loss_upper" in html
    assert "The test split took no part in choosing the policy" in html


def test_labels_and_order():
    assert (
        module_label("unet.up_blocks.2.attentions.1.transformer_blocks.0.attn2")
        == "unet.up.2.attn.1.tb.0.attn2"
    )
    assert module_label("unet.mid_block", drop_component=True) == "mid"
    assert module_label("controlnet", drop_component=True) == "controlnet (whole)"
    keys = [
        "controlnet.mid_block",
        "unet.up_blocks.10",
        "unet.up_blocks.2",
        "unet.mid_block",
        "controlnet",
        "unet.down_blocks.1",
        "controlnet.down_blocks.0",
    ]
    assert natural_order(keys) == [
        "unet.down_blocks.1",
        "unet.mid_block",
        "unet.up_blocks.2",
        "unet.up_blocks.10",
        "controlnet",
        "controlnet.down_blocks.0",
        "controlnet.mid_block",
    ]


def test_number_formatting():
    assert format_macs(18.22e12) == "18.22T"
    assert format_macs(6.7e12) == "6.70T"
    assert format_macs(1_354_557_440) == "1.35G"
    assert format_macs(512) == "512"
    assert format_percent(0.634) == "63.4%"
    assert format_percent(0.015, 2) == "1.50%"
    assert format_percent(None) == "–"
    assert format_percent(float("nan")) == "–"


def test_pareto_file_nested_past_the_recursion_limit(tmp_path):
    hostile = tmp_path / "deep.pareto.json"
    hostile.write_text('{"trials": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(
        ReportError, match=r"the Pareto file .*deep.pareto.json'.*nested deeper than 64 levels"
    ):
        load_pareto(hostile)
