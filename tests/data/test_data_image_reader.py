"""The one image reader (hgc_tune.data._images) and its users refuse hostile image files by name: a 10k x 10k
PNG with a truncated body, a 30k x 30k decompression bomb, a truncated PNG, and a FIFO, as `--init-image`,
`--condition-image` and dataset files; within 5 s and 1 GiB, before anything heavy is loaded."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from hgc_tune.data import Dataset
from hgc_tune.data._images import check_image, read_image
from hgc_tune.errors import DatasetError, ImageFileError, InputFileError


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def _png(side: int, rows: int, *, end: bool) -> bytes:
    """An RGB PNG header of ``side`` x ``side`` pixels with the image data of ``rows`` rows only (a small
    file that claims a huge image); ``end=False`` leaves out the IEND chunk as well."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = zlib.compress(b"".join(b"\0" + bytes(3 * side) for _ in range(rows)), 9)
    body = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)
    return body + (_chunk(b"IEND", b"") if end else b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    (folder / "truncated-10k.png").write_bytes(_png(10_000, 20, end=False))
    (folder / "bomb-30k.png").write_bytes(_png(30_000, 2, end=True))
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "whole.png")
    blob = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(blob[: len(blob) // 2])
    (folder / "short-rows.png").write_bytes(_png(300, 10, end=False))
    os.mkfifo(folder / "fifo.png")
    Image.new("RGB", (64, 64), (200, 40, 40)).save(folder / "good.png")
    return folder


@pytest.mark.parametrize(
    "name, words",
    [
        ("truncated-10k.png", "is a decompression bomb: it declares 100000000 pixels"),
        ("bomb-30k.png", "is a decompression bomb: it declares 900000000 pixels"),
        ("truncated.png", "is truncated"),
        ("short-rows.png", "is truncated"),
        ("fifo.png", "must be a regular file, but it is a FIFO"),
    ],
)
def test_reader_refuses_by_name(files, name, words):
    with pytest.raises(ImageFileError, match=words) as caught:
        read_image(files / name, what="--init-image")
    assert f"--init-image '{files / name}'" in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(ImageFileError, match=words):
        check_image(files / name, what="--init-image")


def test_reader_refuses_folders_and_devices_at_once(files):
    with pytest.raises(InputFileError, match="must be a regular file, but it is a folder"):
        read_image(files)
    with pytest.raises(InputFileError, match="must be a regular file, but it is a device file"):
        read_image("/dev/zero")
    with pytest.raises(InputFileError, match="does not exist"):
        read_image(files / "missing.png")


def test_reader_reads_a_good_image(files):
    image = read_image(files / "good.png", mode="L")
    assert image.size == (64, 64) and image.mode == "L"
    assert check_image(files / "good.png") == (64, 64)


def test_dataset_skips_or_refuses_hostile_files(files, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for name in ("truncated-10k.png", "bomb-30k.png", "truncated.png", "fifo.png", "good.png"):
        target = root / name
        if name == "fifo.png":
            os.mkfifo(target)
        else:
            target.write_bytes((files / name).read_bytes())
        rows.append({"condition": name, "prompt": "a circle", "condition_type": "seg"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = Dataset.open(root)
    assert len(dataset) == 1 and dict(dataset.skipped) == {"unreadable_file": 4}
    with pytest.raises(DatasetError, match="decompression bomb"):
        Dataset.open(root, strict=True)


@pytest.mark.parametrize(
    "flag, name, words",
    [
        ("--init-image", "truncated-10k.png", "decompression bomb"),
        ("--condition-image", "truncated-10k.png", "decompression bomb"),
        ("--init-image", "bomb-30k.png", "decompression bomb"),
        ("--condition-image", "bomb-30k.png", "decompression bomb"),
        ("--condition-image", "truncated.png", "is truncated"),
        ("--init-image", "fifo.png", "FIFO"),
        ("--condition-image", "fifo.png", "FIFO"),
    ],
)
def test_generate_refuses_hostile_images_in_one_line_within_limits(
    files, tmp_path, limited_cli, flag, name, words
):
    images = {"--condition-image": files / "good.png", "--init-image": None}
    images[flag] = files / name
    out = tmp_path / "o.png"
    out.write_bytes(b"the image that was there before")
    args = ["generate", "--model", "tiny", "--prompt", "x", "--out", str(out), "--overwrite", "--steps", "2"]
    for image_flag, path in images.items():
        if path is not None:
            args += [image_flag, str(path)]
    code, lines, seconds = limited_cli(*args, memory=2**30)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("hgc-tune generate: error: ")
    assert f"{flag} '{files / name}'" in lines[0]
    assert words in lines[0]
    assert seconds < 5, f"refused after {seconds:.1f} s"
    assert out.read_bytes() == b"the image that was there before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]
