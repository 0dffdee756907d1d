"""The dataset folder format: row checks with per-reason skip counts, strict mode, lazy loading, hashing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hgc_tune.data import Dataset, Sample
from hgc_tune.data._dataset import SKIP_REASONS
from hgc_tune.errors import DatasetError


def _png(path: Path, value: int = 100, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


def _write(folder: Path, rows: list) -> None:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    # surrogateescape: a row may carry raw bytes that are not UTF-8 ("\udce9" is the byte 0xE9)
    (folder / "metadata.jsonl").write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))


def _good(i: int, condition_type: str = "seg") -> dict:
    return {"condition": f"c/{i}.png", "prompt": f"a red circle {i}", "condition_type": condition_type}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    for i in range(4):
        _png(root / "c" / f"{i}.png", value=10 * i)
    _png(root / "gt" / "0.png", value=200)
    _png(root / "c" / "grey.png", value=50, mode="L")
    (root / "c" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    # a readable image outside the dataset, and a link inside that leads to it
    _png(tmp_path / "private" / "secret.png", value=77)
    (root / "c" / "outside.png").symlink_to(tmp_path / "private" / "secret.png")
    (root / "c" / "inside.png").symlink_to(root / "c" / "0.png")
    return root


# one bad row per reason, with the field and value its strict error must name
BAD_ROWS = {
    "bad_json": ('{"condition": "c/0.png", "prompt": ', "line is not valid JSON"),
    "unknown_field": ({**_good(0), "colour": "red"}, "colour='red'"),
    "missing_field": ({"condition": "c/0.png", "prompt": "x"}, "`condition_type` is missing"),
    "empty_prompt": ({**_good(0), "prompt": "   "}, "prompt='   '"),
    "bad_seed": ({**_good(0), "seed": "12"}, "seed='12'"),
    "bad_path": ({**_good(0), "condition": "../c/0.png"}, "condition='../c/0.png'"),
    "missing_file": ({**_good(0), "condition": "c/nope.png"}, "condition='c/nope.png'"),
    "unreadable_file": ({**_good(0), "condition": "c/broken.png"}, "condition='c/broken.png'"),
    "bad_value": ({**_good(0), "prompt": 3}, "prompt=3"),
    "bad_encoding": ('{"condition": "c/0.png", "prompt": "caf\udce9", "condition_type": "seg"}', "not UTF-8"),
    "outside_dataset": ({**_good(0), "condition": "c/outside.png"}, "condition='c/outside.png'"),
}


def test_every_reason_is_documented():
    assert set(BAD_ROWS) == set(SKIP_REASONS)


def test_good_rows_load_with_all_fields(folder: Path):
    _write(
        folder,
        [
            {**_good(0), "image": "gt/0.png", "negative_prompt": "blurry", "seed": 7},
            "",
            _good(1, "canny"),
            {**_good(2), "condition": "c/grey.png", "seed": 0},
        ],
    )
    dataset = Dataset.open(folder)
    assert len(dataset) == 3 and dict(dataset.skipped) == {}
    first = dataset[0]
    assert first == Sample(
        index=0,
        condition_path=folder / "c/0.png",
        prompt="a red circle 0",
        condition_type="seg",
        image_path=folder / "gt/0.png",
        negative_prompt="blurry",
        seed=7,
        line=1,
    )
    assert [s.index for s in dataset] == [0, 1, 2] and [s.line for s in dataset] == [1, 3, 4]
    assert dataset[1].image_path is None and dataset[1].seed is None
    assert dataset.condition_types == ("seg", "canny")
    image = first.condition_image()
    assert image.mode == "RGB" and np.asarray(image)[0, 0].tolist() == [0, 0, 0]
    assert np.asarray(first.ground_truth_image())[0, 0].tolist() == [200, 200, 200]
    assert dataset[1].ground_truth_image() is None
    grey = dataset[2].load_condition()
    assert grey.mode == "RGB" and np.asarray(grey)[0, 0].tolist() == [50, 50, 50]


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_each_bad_row_is_skipped_and_counted_or_raises_under_strict(folder: Path, reason: str):
    row, named = BAD_ROWS[reason]
    _write(folder, [_good(0), row, _good(1), row, _good(2)])
    dataset = Dataset.open(folder)
    assert [s.prompt for s in dataset] == ["a red circle 0", "a red circle 1", "a red circle 2"]
    assert dict(dataset.skipped) == {reason: 2}
    with pytest.raises(DatasetError) as info:
        Dataset.open(folder, strict=True)
    message = str(info.value)
    assert "metadata.jsonl:2:" in message
    assert named in message


def test_mixed_bad_rows_are_counted_per_reason(folder: Path):
    rows = [_good(0)]
    for reason in ("bad_seed", "bad_seed", "missing_file", "bad_json", "unknown_field"):
        rows.append(BAD_ROWS[reason][0])
    rows += [{**_good(1), "seed": 3.0}, {**_good(1), "seed": True}, {**_good(1), "seed": -1}, "[1, 2]"]
    _write(folder, rows)
    dataset = Dataset.open(folder)
    assert len(dataset) == 1
    assert dict(dataset.skipped) == {
        "bad_seed": 5,
        "missing_file": 1,
        "bad_json": 2,
        "unknown_field": 1,
    }


def test_missing_ground_truth_file_is_a_missing_file(folder: Path):
    _write(folder, [{**_good(0), "image": "gt/none.png"}])
    assert dict(Dataset.open(folder).skipped) == {"missing_file": 1}
    with pytest.raises(DatasetError, match="image='gt/none.png'"):
        Dataset.open(folder, strict=True)


def test_filter_by_condition_type_and_limit(folder: Path):
    _write(folder, [_good(0, "seg"), _good(1, "canny"), _good(2, "seg"), _good(3, "seg"), _good(0, "depth")])
    seg = Dataset.open(folder, condition_type="seg")
    assert [s.condition_path.name for s in seg] == ["0.png", "2.png", "3.png"]
    assert [s.index for s in seg] == [0, 1, 2]
    first_two = Dataset.open(folder, condition_type="seg", limit=2)
    assert [s.line for s in first_two] == [1, 3]
    assert len(Dataset.open(folder, limit=4)) == 4
    assert [s.line for s in Dataset.open(folder).select(condition_type="seg", limit=2)] == [1, 3]
    sliced = Dataset.open(folder)[1:3]
    assert isinstance(sliced, Dataset) and [s.index for s in sliced] == [0, 1] and len(sliced) == 2


def test_limit_stops_reading_so_later_bad_rows_are_not_counted(folder: Path):
    _write(folder, [_good(0), _good(1), BAD_ROWS["bad_seed"][0]])
    assert dict(Dataset.open(folder, limit=2).skipped) == {}
    assert dict(Dataset.open(folder).skipped) == {"bad_seed": 1}


def test_missing_folder_or_metadata_and_bad_arguments(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset.open(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no metadata.jsonl.*hgc-tune data shapes"):
        Dataset.open(tmp_path)
    _write(tmp_path, [])
    with pytest.raises(DatasetError, match="limit=0"):
        Dataset.open(tmp_path, limit=0)


def test_dataset_holds_paths_not_pixels(folder: Path, monkeypatch):
    _write(folder, [_good(i) for i in range(4)])
    dataset = Dataset.open(folder)
    for sample in dataset:
        for value in dataclasses.asdict(sample).values():
            assert value is None or isinstance(value, (int, str, Path))
    for value in vars(dataset).values():
        assert not isinstance(value, (np.ndarray, Image.Image))
    # pixels are decoded only on demand
    decoded = []
    original = Image.Image.convert

    def spy(self, *args, **kwargs):
        decoded.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", spy)
    Dataset.open(folder)
    assert decoded == []
    dataset[0].condition_image()
    assert len(decoded) == 1


def test_content_hash_is_stable_and_sensitive(folder: Path):
    _write(folder, [_good(0), {**_good(1), "image": "gt/0.png", "seed": 3}])
    first = Dataset.open(folder).content_hash()
    assert first == Dataset.open(folder).content_hash()
    assert len(first) == 64 and int(first, 16) >= 0
    # a moved folder keeps its hash
    moved = folder.parent / "moved"
    folder.rename(moved)
    assert Dataset.open(moved).content_hash() == first
    # a changed condition file changes it
    _png(moved / "c" / "0.png", value=11)
    changed_file = Dataset.open(moved).content_hash()
    assert changed_file != first
    # a changed ground truth, a changed row, a different selection each change it
    _png(moved / "gt" / "0.png", value=201)
    changed_gt = Dataset.open(moved).content_hash()
    assert changed_gt != changed_file
    _write(moved, [_good(0), {**_good(1), "image": "gt/0.png", "seed": 4}])
    assert Dataset.open(moved).content_hash() != changed_gt
    assert Dataset.open(moved, limit=1).content_hash() != Dataset.open(moved).content_hash()


def test_links_that_leave_the_folder_are_refused_before_opening(folder: Path, monkeypatch):
    (folder / "gt" / "passwd.png").symlink_to("/etc/passwd")
    (folder / "linked-dir").symlink_to(folder.parent / "private")
    rows = [
        {**_good(0), "condition": "c/inside.png"},  # a link that stays inside is fine
        {**_good(1), "image": "gt/passwd.png"},
        {**_good(2), "condition": "linked-dir/secret.png"},  # a file below a linked folder
        {**_good(3), "condition": "c/outside.png"},
    ]
    _write(folder, rows)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(
        Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k)
    )
    dataset = Dataset.open(folder)
    assert [s.prompt for s in dataset] == ["a red circle 0"]
    assert dict(dataset.skipped) == {"outside_dataset": 3}
    assert not [p for p in opened if "passwd" in p or "secret" in p or "outside" in p]
    with pytest.raises(DatasetError, match=r"metadata.jsonl:2: .*image='gt/passwd.png'.*'/etc/passwd'"):
        Dataset.open(folder, strict=True)


def test_metadata_that_links_outside_is_refused(tmp_path: Path):
    (tmp_path / "rows.jsonl").write_text(json.dumps(_good(0)) + "\n")
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "metadata.jsonl").symlink_to(tmp_path / "rows.jsonl")
    with pytest.raises(DatasetError, match="must be a file inside the dataset folder"):
        Dataset.open(tmp_path / "dataset")


@pytest.mark.parametrize(
    "line",
    [
        "[" * 100_000 + "]" * 100_000,  # past Python's recursion limit
        '{"condition": "c/0.png", "prompt": "x", "condition_type": "seg", "seed": '
        + "[" * 200
        + "]" * 200
        + "}",
        '{"prompt": "' + "x" * (2**20 + 10) + '"}',  # longer than a row may be
    ],
    ids=["recursion", "nested", "long"],
)
def test_hostile_rows_are_bad_json_not_a_crash(folder: Path, line: str):
    _write(folder, [_good(0), line, _good(1)])
    dataset = Dataset.open(folder)
    assert len(dataset) == 2 and dict(dataset.skipped) == {"bad_json": 1}
    with pytest.raises(DatasetError, match="metadata.jsonl:2: the line"):
        Dataset.open(folder, strict=True)
