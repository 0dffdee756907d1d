"""`hgc-tune data shapes|check|preview`, writing the benchmark as a folder, and `open_dataset`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hgc_tune.cli import main
from hgc_tune.data import Dataset, open_dataset, write_shapes_dataset
from hgc_tune.data._shapes import class_map_from_seg, render_scene
from hgc_tune.errors import DatasetError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HGC_TUNE_CACHE", str(tmp_path / "cache"))


def test_cli_shapes_writes_a_folder_that_reads_back(tmp_path: Path, capsys):
    out = tmp_path / "cal"
    assert main(["data", "shapes", "--out", str(out), "--n", "5", "--seed", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 20 and summary["first_scene_seed"] == 3 and summary["n"] == 5
    assert summary["conditions"] == ["seg", "canny", "hed", "depth"]
    backgrounds = summary["background_counts"]
    assert sum(backgrounds.values()) == 5 and set(backgrounds) == {
        "wood",
        "stone",
        "sand",
        "grass",
        "sky",
        "water",
        "street",
    }
    assert all(backgrounds[render_scene(seed).background] >= 1 for seed in range(3, 8))
    dataset = Dataset.open(out, strict=True)
    assert len(dataset) == 5 * 4 and dict(dataset.skipped) == {}
    assert [s.condition_type for s in dataset][:4] == ["seg", "canny", "hed", "depth"]
    assert [s.seed for s in dataset.select(condition_type="depth")] == [3, 4, 5, 6, 7]
    # the files hold the scene of that seed
    scene = render_scene(5)
    seg = dataset.select(condition_type="seg")[2]
    assert seg.prompt == scene.prompt
    assert np.array_equal(np.asarray(seg.ground_truth_image()), scene.image)
    assert np.array_equal(class_map_from_seg(np.asarray(seg.condition_image())), scene.class_map)
    canny = dataset.select(condition_type="canny")[2].condition_image()
    assert np.array_equal(np.asarray(canny)[:, :, 0], scene.canny)
    assert (out / "dataset_info.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cal.")]  # no temp folder left


def test_cli_shapes_human_output_and_subset_of_conditions(tmp_path: Path, capsys):
    out = tmp_path / "held"
    code = main(
        ["data", "shapes", "--out", str(out), "--n", "2", "--split", "heldout", "--conditions", "seg,depth"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "scene seeds 100000..100001" in printed and "4 rows" in printed
    assert "  backgrounds: wood " in printed and "street" in printed
    dataset = Dataset.open(out)
    assert dataset.condition_types == ("seg", "depth") and len(dataset) == 4
    assert not (out / "canny").exists()


def test_written_bytes_are_deterministic(tmp_path: Path):
    a = write_shapes_dataset(tmp_path / "a", n=3, conditions=["seg", "hed"])
    b = write_shapes_dataset(tmp_path / "b", n=3, conditions=["seg", "hed"])
    assert a.rows == b.rows == 6
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 3 * 3 + 2
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert Dataset.open(tmp_path / "a").content_hash() == Dataset.open(tmp_path / "b").content_hash()
    c = write_shapes_dataset(tmp_path / "c", n=3, seed=1, conditions=["seg", "hed"])
    assert c.first_scene_seed == 1
    assert Dataset.open(tmp_path / "c").content_hash() != Dataset.open(tmp_path / "a").content_hash()


def test_existing_output_is_refused_or_replaced_only_when_it_is_a_dataset(tmp_path: Path, capsys):
    out = tmp_path / "ds"
    write_shapes_dataset(out, n=1, conditions=["seg"])
    assert main(["data", "shapes", "--out", str(out), "--n", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "shapes", "--out", str(out), "--n", "2", "--overwrite", "--json"]) == 0
    assert len(Dataset.open(out)) == 8
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a dataset folder"):
        write_shapes_dataset(other, n=1, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_shapes_dataset(empty, n=1).rows == 4


def test_bad_shapes_arguments_exit_2(tmp_path: Path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path / "x"), "--conditions", "seg,lineart"]) == 2
    assert "conditions='seg,lineart'" in capsys.readouterr().err
    assert main(["data", "shapes", "--out", str(tmp_path / "x"), "--size", "1000"]) == 2
    assert "size=1000" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_check_counts_bad_rows_and_strict_exits_2(tmp_path: Path, capsys):
    out = tmp_path / "ds"
    write_shapes_dataset(out, n=2, conditions=["seg", "canny"])
    with (out / "metadata.jsonl").open("a") as f:
        f.write('{"condition": "seg/00000.png", "prompt": "", "condition_type": "seg"}\n')
        f.write('{"condition": "seg/09999.png", "prompt": "x", "condition_type": "seg"}\n')
        f.write("not json\n")
    assert main(["data", "check", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 4
    assert report["per_condition"] == {"seg": 2, "canny": 2}
    assert report["skipped"] == {"bad_json": 1, "empty_prompt": 1, "missing_file": 1}
    assert main(["data", "check", str(out), "--condition", "canny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_condition"] == {"canny": 2}
    assert main(["data", "check", str(out)]) == 0
    captured = capsys.readouterr()
    assert "4 samples" in captured.out and "empty_prompt: 1" in captured.err
    assert main(["data", "check", str(out), "--strict"]) == 2
    assert "metadata.jsonl:5:" in capsys.readouterr().err


def test_cli_check_does_not_count_links_out_of_the_folder_or_non_utf8_rows(tmp_path: Path, capsys):
    out = tmp_path / "ds"
    write_shapes_dataset(out, n=1, conditions=["seg"])
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere.png")
    (out / "seg" / "link.png").symlink_to(tmp_path / "elsewhere.png")
    (out / "seg" / "passwd.png").symlink_to("/etc/passwd")
    with (out / "metadata.jsonl").open("ab") as f:
        f.write(b'{"condition": "seg/link.png", "prompt": "x", "condition_type": "seg"}\n')
        f.write(b'{"condition": "seg/passwd.png", "prompt": "x", "condition_type": "seg"}\n')
        f.write(b'{"condition": "seg/00000.png", "prompt": "caf\xe9", "condition_type": "seg"}\n')
    assert main(["data", "check", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 1
    assert report["skipped"] == {"outside_dataset": 2, "bad_encoding": 1}
    assert main(["data", "check", str(out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "metadata.jsonl:2:" in err and "must stay inside the dataset folder" in err


def test_cli_preview_writes_a_grid(tmp_path: Path):
    out = tmp_path / "p" / "preview.png"
    assert main(["data", "preview", "--out", str(out), "--n", "2", "--scale", "2"]) == 0
    with Image.open(out) as image:
        assert image.size == (5 * 128 + 6 * 4, 14 + 2 * 128 + 3 * 4)


def test_open_dataset_shapes_generates_once_and_reuses_the_cache(tmp_path: Path):
    dataset = open_dataset("shapes", condition_type="depth", limit=3, split="heldout", seed=2)
    assert len(dataset) == 3 and dataset.condition_types == ("depth",)
    assert [s.seed for s in dataset] == [100_002, 100_003, 100_004]
    assert str(dataset.root).startswith(str(tmp_path / "cache"))
    marker = dataset.root / "metadata.jsonl"
    before = marker.stat().st_mtime_ns
    again = open_dataset("shapes", condition_type="depth", limit=3, split="heldout", seed=2)
    assert again.root == dataset.root and marker.stat().st_mtime_ns == before
    assert again.content_hash() == dataset.content_hash()
    assert len(open_dataset("shapes", limit=3)) == 3  # rows of all conditions
    with pytest.raises(DatasetError, match="split='val'"):
        open_dataset("shapes", split="val")
    with pytest.raises(DatasetError, match="limit=0"):
        open_dataset("shapes", limit=0)


def test_open_dataset_opens_folders(tmp_path: Path):
    write_shapes_dataset(tmp_path / "ds", n=2, conditions=["seg"])
    assert len(open_dataset(tmp_path / "ds")) == 2
    assert len(open_dataset(str(tmp_path / "ds"), condition_type="seg", limit=1)) == 1
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "shapes")
