"""Parsing JSON from user files: size and nesting bounded, every failure an error naming the input."""

from __future__ import annotations

import pytest

from hgc_tune._json import load_json_file, load_json_text
from hgc_tune.errors import HgcTuneError, ReportError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),  # RecursionError inside json
        ('{"a": ' * 65 + "1" + "}" * 65, "nested deeper than 64 levels"),
        ("[1, 2", "malformed JSON at line 1, column 6"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        ("[" + "0," * 2**20 + "0]", "2097155 bytes, more than the 2097152 bytes"),
    ],
    ids=["recursion", "deep", "malformed", "encoding", "size"],
)
def test_hostile_text_raises_the_callers_error(text, message):
    with pytest.raises(ReportError, match=message) as info:
        load_json_text(text, what="the input", error=ReportError, max_bytes=2 * 2**20)
    assert str(info.value).startswith("the input: ")


def test_nesting_up_to_the_limit_parses():
    assert load_json_text('{"a": ' * 63 + "1" + "}" * 63, what="x") is not None


def test_a_file_is_measured_before_it_is_read(tmp_path, monkeypatch):
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 100 + "0]")
    with pytest.raises(HgcTuneError, match=r"big.json'.*more than the 100 bytes"):
        load_json_file(big, what="a file", max_bytes=100)
    assert load_json_file(big, what="a file")[-1] == 0
    with pytest.raises(HgcTuneError, match="does not exist"):
        load_json_file(tmp_path / "absent.json", what="a file")
    with pytest.raises(HgcTuneError, match="cannot read"):
        load_json_file(tmp_path, what="a folder")
