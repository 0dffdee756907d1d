"""A profile whose metadata has a field of the wrong type (`seeds` an int, `resolution` a list,
`conditions_per_sample` a string, ...) or declares 10**9 steps is refused on load with a ProfileError naming
the field, its value and what it must be, before the tensor file is read; `report` says so in one line."""

from __future__ import annotations

import json
import os

import pytest
from _profile_fixtures import N, make_meta, make_tensors

from hgc_tune.cli import main
from hgc_tune.errors import ProfileError
from hgc_tune.profile import Profile
from hgc_tune.profile._artifact import META_FILE, TENSOR_FILE


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "run"
    Profile(make_meta(), make_tensors()).save(folder)
    return folder


def _edit(folder, field: str, value) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    meta[field] = value
    (folder / META_FILE).write_text(json.dumps(meta))


CASES = [
    ("seeds", 5, "`seeds` must be a list of integers, but got seeds=5."),
    ("seeds", [0, True], "`seeds` must be a list of integers, but got seeds=[0, True]."),
    ("resolution", [16, 8], "`resolution` must be an object with integer `height` and `width` in [1, 8192]"),
    ("conditions_per_sample", "2", "`conditions_per_sample` must be an integer in [1, 16], but got "),
    ("steps", 10**9, "`steps` must be an integer in [1, 1000], but got steps=1000000000."),
    ("prompts", "ab", "`prompts` must be a list of strings, but got prompts='ab'."),
    ("guidance_scale", "7.5", "`guidance_scale` must be a finite number, but got guidance_scale='7.5'."),
    ("model", "toy", "`model` must be an object with the string fields `name` and `fingerprint`"),
    ("strength", 2.0, "`strength` must be null or a number in (0, 1], but got strength=2.0."),
]


@pytest.mark.parametrize("field, value, words", CASES)
def test_a_field_of_the_wrong_type_is_refused_before_the_tensors_are_read(saved, field, value, words):
    _edit(saved, field, value)
    (saved / TENSOR_FILE).write_bytes(b"")  # never read: the metadata is refused first
    with pytest.raises(ProfileError) as caught:
        Profile.load(saved)
    assert words in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("field, value, words", CASES[:4])
def test_report_refuses_it_in_one_line(saved, tmp_path, capsys, field, value, words):
    _edit(saved, field, value)
    assert main(["report", "--profile", str(saved), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hgc-tune report: error: ") and words in err[0]
    assert not (tmp_path / "report" / "index.html").exists()


def test_the_unchanged_profile_still_loads(saved):
    assert Profile.load(saved).num_samples == N


@pytest.mark.parametrize("name", [META_FILE, TENSOR_FILE])
def test_a_fifo_in_place_of_a_profile_file_is_refused_at_once(saved, name):
    (saved / name).unlink()
    os.mkfifo(saved / name)
    with pytest.raises(
        ProfileError, match=f"cannot read profile file '{saved / name}': it must be a regular"
    ):
        Profile.load(saved)
