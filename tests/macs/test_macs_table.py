"""MacTable on hand-built tables: generation arithmetic, block breakdown, validation, JSON."""

from __future__ import annotations

import json

import pytest

from hgc_tune.errors import HgcTuneError
from hgc_tune.macs import MacTable
from hgc_tune.macs._count import CONVENTIONS


def _e(paper: int, complete: int) -> dict[str, int]:
    return {"paper": paper, "complete": complete}


PER_IMAGE = {
    "unet": _e(100, 130),
    "unet.up_blocks": _e(50, 70),
    "unet.up_blocks.0": _e(50, 70),
    "unet.conv_out": _e(3, 3),
    "unet.down_blocks": _e(40, 50),
    "unet.down_blocks.0": _e(15, 20),
    "unet.down_blocks.1": _e(25, 30),
    "unet.down_blocks.1.attentions.0": _e(20, 25),
    "unet.conv_in": _e(5, 5),
    "controlnet": _e(30, 36),
    "controlnet.down_blocks": _e(30, 36),
    "controlnet.down_blocks.0": _e(30, 36),
    "text_encoder": _e(7, 8),
    "vae.decoder": _e(11, 12),
}


@pytest.fixture
def table() -> MacTable:
    return MacTable(model="toy", height=64, width=64, per_image=PER_IMAGE)


def test_generation_paper_with_cfg(table):
    g = table.generation_macs(steps=10, cfg=True, convention="paper")
    # 10 steps x 2 branches = 20 forwards of U-Net and ControlNet; text encoder x2; one decode.
    assert (g["unet"], g["controlnet"], g["text_encoder"], g["vae_decoder"]) == (2000, 600, 14, 11)
    assert g["includes"] == ["controlnet", "unet"]
    assert g["total"] == 2600
    assert g["total_with_all"] == 2625
    assert g["convention"] == "paper"
    assert g["blocks"] == {
        "controlnet.down_blocks.0": 600,
        "controlnet.other": 0,
        "unet.conv_in": 100,
        "unet.down_blocks.0": 300,
        "unet.down_blocks.1": 500,
        "unet.up_blocks.0": 1000,
        "unet.conv_out": 60,
        "unet.other": 20 * (100 - 5 - 15 - 25 - 50 - 3),
    }
    # Forward order, not key order.
    assert list(g["blocks"])[2:] == [
        "unet.conv_in",
        "unet.down_blocks.0",
        "unet.down_blocks.1",
        "unet.up_blocks.0",
        "unet.conv_out",
        "unet.other",
    ]
    assert sum(g["blocks"].values()) == g["total"]


def test_generation_complete_without_cfg_batch_3(table):
    g = table.generation_macs(steps=10, cfg=False, convention="complete", batch=3)
    assert (g["unet"], g["controlnet"], g["text_encoder"], g["vae_decoder"]) == (3900, 1080, 24, 36)
    assert g["blocks"]["unet.other"] == 30 * (130 - 5 - 20 - 30 - 70 - 3)
    assert sum(g["blocks"].values()) == g["total"] == 3900 + 1080


def test_cfg_doubles_denoisers_and_text_encoder(table):
    on = table.generation_macs(steps=7, cfg=True)
    off = table.generation_macs(steps=7, cfg=False)
    for part in ("unet", "controlnet", "text_encoder", "total"):
        assert on[part] == 2 * off[part]
    assert on["vae_decoder"] == off["vae_decoder"]


def test_numbered_blocks_sort_numerically():
    per_image = {"unet": _e(30, 30), "unet.down_blocks": _e(30, 30)}
    per_image.update({f"unet.down_blocks.{i}": _e(1, 1) for i in range(12)})
    table = MacTable("toy", 8, 8, per_image)
    assert table.block_keys("unet") == [f"unet.down_blocks.{i}" for i in range(12)]
    g = table.generation_macs(steps=1, cfg=False)
    assert g["blocks"]["unet.other"] == 18
    assert g["controlnet"] == 0 and "controlnet.other" not in g["blocks"]


def test_macs_lookup_and_errors(table):
    assert table.macs("unet.down_blocks.1") == 25
    assert table.macs("unet.down_blocks.1", "complete") == 30
    with pytest.raises(HgcTuneError, match="unet.nope"):
        table.macs("unet.nope")
    with pytest.raises(HgcTuneError, match="convention='flops'"):
        table.macs("unet", "flops")
    with pytest.raises(HgcTuneError, match="steps=0"):
        table.generation_macs(steps=0)
    with pytest.raises(HgcTuneError, match="batch=0"):
        table.generation_macs(steps=1, batch=0)
    with pytest.raises(HgcTuneError, match="cfg"):
        table.generation_macs(steps=1, cfg="yes")
    with pytest.raises(HgcTuneError, match="unet"):
        MacTable("toy", 8, 8, {"controlnet": _e(1, 1)}).generation_macs(steps=1)


@pytest.mark.parametrize(
    ("per_image", "word"),
    [
        ({"unet": _e(5, 4)}, "complete=4"),
        ({"unet": {"paper": 5}}, "unet"),
        ({"unet": _e(-1, 4)}, "-1"),
        ({"unet": _e(True, 4)}, "True"),
        ({"unet": {"paper": 1, "complete": 1, "flops": 1}}, "unet"),
    ],
)
def test_invalid_entries_are_rejected(per_image, word):
    with pytest.raises(HgcTuneError, match=word):
        MacTable("toy", 8, 8, per_image)


def test_invalid_size_is_rejected():
    with pytest.raises(HgcTuneError, match="height=0"):
        MacTable("toy", 0, 8, {})


def test_table_is_immutable_and_does_not_alias_its_input():
    source = {"unet": _e(1, 2)}
    table = MacTable("toy", 8, 8, source)
    source["unet"]["paper"] = 99
    assert table.macs("unet") == 1
    with pytest.raises(TypeError):
        table.per_image["unet"] = _e(3, 3)
    with pytest.raises(TypeError):
        table.per_image["unet"]["paper"] = 3


def test_json_round_trip(table):
    data = table.to_json()
    text = json.dumps(data, sort_keys=True)
    again = MacTable.from_json(json.loads(text))
    assert again == table
    assert again.generation_macs(steps=3) == table.generation_macs(steps=3)
    assert data["conventions"] == list(CONVENTIONS)


def test_from_json_is_strict(table):
    data = table.to_json()
    with pytest.raises(HgcTuneError, match="extra"):
        MacTable.from_json({**data, "extra": 1})
    with pytest.raises(HgcTuneError, match="version"):
        MacTable.from_json({**data, "version": 2})
    with pytest.raises(HgcTuneError, match="conventions"):
        MacTable.from_json({**data, "conventions": ["complete", "paper"]})


def test_unsupported_ops_round_trip_and_sum_over_outermost_modules():
    skipped = {
        "unet": {"aten::cumprod": 3},
        "unet.down_blocks.0": {"aten::cumprod": 2},
        "controlnet": {"aten::cumprod": 1, "aten::scaled_dot_product_attention": 4},
        "vae.decoder": {"aten::flip": 1},
    }
    table = MacTable("toy", 8, 8, PER_IMAGE, unsupported_ops=skipped)
    assert table.skipped_ops() == {
        "aten::cumprod": {
            "count": 4,
            "modules": ["controlnet", "unet"],
            "conventions": ["paper", "complete"],
        },
        "aten::flip": {"count": 1, "modules": ["vae.decoder"], "conventions": ["paper", "complete"]},
        # an attention product is what `complete` adds to `paper`: only `complete` misses it
        "aten::scaled_dot_product_attention": {
            "count": 4,
            "modules": ["controlnet"],
            "conventions": ["complete"],
        },
    }
    data = table.to_json()
    assert data["unsupported_ops"] == skipped
    assert MacTable.from_json(json.loads(json.dumps(data))) == table


def test_tables_written_before_unsupported_ops_still_load(table):
    data = table.to_json()
    del data["unsupported_ops"]
    assert MacTable.from_json(data) == table and table.unsupported_ops == {}


@pytest.mark.parametrize(
    ("skipped", "word"),
    [
        ({"unet": {}}, "non-empty"),
        ({"": {"aten::x": 1}}, "module keys"),
        ({"unet": {"aten::x": -1}}, "must be a non-negative integer"),
        ({"unet": {"": 1}}, "operator names"),
    ],
)
def test_invalid_unsupported_ops_are_rejected(skipped, word):
    with pytest.raises(HgcTuneError, match=word):
        MacTable("toy", 8, 8, {}, unsupported_ops=skipped)
