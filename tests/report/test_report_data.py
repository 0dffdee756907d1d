"""The summary's fidelity grouping, labels and formatting, and the trade-off figure."""

from __future__ import annotations

from pathlib import Path

from hgc_tune.report._figures import plot_tradeoff, save_figure
from hgc_tune.report._labels import format_macs, format_percent, module_label, natural_order
from hgc_tune.report._summary import fidelity_by_split
from hgc_tune.search._pareto import load_pareto

FIXTURE = Path(__file__).parents[1] / "search" / "fixtures" / "tiny-seg.pareto.json"


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
