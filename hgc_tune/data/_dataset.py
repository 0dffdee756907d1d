"""The dataset folder format and its checking, lazy loader.

A dataset is a folder with ``metadata.jsonl``: one JSON object a line, one sample a line.

======================  ========  =================================================================
field                   required  meaning
======================  ========  =================================================================
``condition``           yes       condition image, a path relative to the folder
``prompt``              yes       non-empty text prompt
``condition_type``      yes       ``seg``, ``canny``, ``hed``, ``lineart``, ``depth`` or any other name
``image``               no        ground-truth picture, a path relative to the folder
``negative_prompt``     no        text
``seed``                no        integer in ``[0, 2**63)``, the generation seed of the sample
======================  ========  =================================================================

Every row is checked. A bad row is skipped and counted under its reason (:data:`SKIP_REASONS`), or, with
``strict=True``, the first one raises :class:`~hgc_tune.errors.DatasetError` naming the line, the field and
the value. Images are not held in memory: a :class:`Sample` holds paths and opens its images on demand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import IO, Any, overload

from PIL import Image

from hgc_tune._json import load_json_text
from hgc_tune.data._images import check_image, read_image
from hgc_tune.errors import DatasetError, ImageFileError

__all__ = [
    "METADATA_FILE",
    "FIELDS",
    "REQUIRED_FIELDS",
    "SKIP_REASONS",
    "Sample",
    "MultiSample",
    "Dataset",
]

METADATA_FILE = "metadata.jsonl"
REQUIRED_FIELDS: tuple[str, ...] = ("condition", "prompt", "condition_type")
FIELDS: tuple[str, ...] = (*REQUIRED_FIELDS, "image", "negative_prompt", "seed")
_MAX_SEED = 2**63
# A row is a few hundred bytes; a longer line is refused without being parsed.
_MAX_ROW_BYTES = 2**20

# Reason -> what it means; the keys of ``Dataset.skipped``.
SKIP_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "bad_encoding": "the line is not UTF-8 text",
        "bad_json": "the line is not a JSON object (or is nested too deeply, or longer than 1 MiB)",
        "unknown_field": "a field that is not part of the format",
        "missing_field": "a required field is absent",
        "bad_value": "a field of the wrong type (a path or text that is not a string) or empty",
        "empty_prompt": "the prompt is empty or only whitespace",
        "bad_seed": "the seed is not an integer in [0, 2**63)",
        "bad_path": "a path that is absolute or leaves the dataset folder",
        "outside_dataset": "a condition or ground-truth path that a link leads outside the dataset folder",
        "missing_file": "a condition or ground-truth file that does not exist",
        "unreadable_file": "a condition or ground-truth file that is not a readable image (not a regular "
        "file, truncated, corrupt, or a decompression bomb)",
    }
)


@dataclass(frozen=True)
class Sample:
    """One dataset row: paths and text, no pixels.

    Attributes:
        index: Position in the :class:`Dataset`.
        condition_path: Absolute path of the condition image.
        prompt: The prompt.
        condition_type: ``seg``, ``canny``, ``hed``, ``lineart``, ``depth`` or another name.
        image_path: Absolute path of the ground-truth picture, if any.
        negative_prompt: The negative prompt, if any.
        seed: The generation seed, if any.
        line: 1-based line of ``metadata.jsonl`` the sample comes from.
    """

    index: int
    condition_path: Path
    prompt: str
    condition_type: str
    image_path: Path | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    line: int = 0

    def condition_image(self):
        """Open the condition image (RGB ``PIL.Image.Image``; grey maps are expanded to RGB)."""
        return _open_rgb(self.condition_path)

    def load_condition(self):
        """Alias of :meth:`condition_image`."""
        return self.condition_image()

    def ground_truth_image(self):
        """Open the ground-truth picture (RGB ``PIL.Image.Image``), or ``None`` when the row has none."""
        return None if self.image_path is None else _open_rgb(self.image_path)


@dataclass(frozen=True)
class MultiSample:
    """One scene with a condition image per ControlNet: the rows of several condition types that share
    their prompt, seed and ground truth (``Dataset.open(..., condition_type="seg,depth")``).

    ``condition_image()`` returns the list of condition images, in the order of the condition types, which
    is what diffusers' pipeline takes for a ``MultiControlNetModel``.
    """

    index: int
    samples: tuple[Sample, ...]

    @property
    def prompt(self) -> str:
        return self.samples[0].prompt

    @property
    def negative_prompt(self) -> str | None:
        return self.samples[0].negative_prompt

    @property
    def seed(self) -> int | None:
        return self.samples[0].seed

    @property
    def image_path(self) -> Path | None:
        return self.samples[0].image_path

    @property
    def condition_type(self) -> str:
        return ",".join(s.condition_type for s in self.samples)

    @property
    def condition_paths(self) -> tuple[Path, ...]:
        return tuple(s.condition_path for s in self.samples)

    def condition_image(self) -> list:
        """The condition images (RGB ``PIL.Image.Image``), one per condition type, in order."""
        return [s.condition_image() for s in self.samples]

    def load_condition(self) -> list:
        """Alias of :meth:`condition_image`."""
        return self.condition_image()

    def ground_truth_image(self):
        return self.samples[0].ground_truth_image()


def _open_rgb(path: Path) -> Image.Image:
    return read_image(path, what="dataset image", error=DatasetError)


class _BadRow(Exception):
    def __init__(self, reason: str, field: str | None, value: object, message: str) -> None:
        super().__init__(message)
        self.reason, self.field, self.value, self.message = reason, field, value, message


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_image_file(path: Path, field: str, relative: str) -> None:
    if not path.exists():
        raise _BadRow("missing_file", field, relative, f"`{field}` file does not exist: {field}={relative!r}")
    try:
        check_image(path, what=f"`{field}`")  # reads and checks the whole file without decoding pixels
    except ImageFileError as e:
        raise _BadRow(
            "unreadable_file",
            field,
            relative,
            f"`{field}` is not a readable image: {field}={relative!r} ({e})",
        ) from e


def _relative_path(row: dict[str, Any], field: str) -> PurePosixPath:
    value = row[field]
    if not isinstance(value, str) or not value:
        raise _BadRow(
            "bad_value",
            field,
            value,
            f"`{field}` must be a non-empty path string, but got {field}={_short(value)}",
        )
    relative = PurePosixPath(value.replace("\\", "/"))
    if (
        relative.is_absolute()
        or ".." in relative.parts
        or value.startswith(("/", "\\"))
        or ":" in relative.parts[0]
    ):
        raise _BadRow(
            "bad_path",
            field,
            value,
            f"`{field}` must be a path inside the dataset folder, but got {field}={value!r}",
        )
    return relative


def _inside(root: Path, path: Path, field: str, relative: str) -> None:
    """Refuse a path that resolves (through links) outside ``root``, before anything opens it."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise _BadRow(
            "outside_dataset",
            field,
            relative,
            f"`{field}` must stay inside the dataset folder, but {field}={relative!r} is a link (or lies "
            f"below one) that leads to {str(path.resolve())!r}",
        )


def _parse_row(line: bytes) -> dict[str, Any]:
    """Structural checks of one line; returns the row with normalised values."""
    if len(line) > _MAX_ROW_BYTES:
        raise _BadRow(
            "bad_json",
            None,
            _short(line),
            f"the line is longer than {_MAX_ROW_BYTES} bytes, too long for a row",
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadRow(
            "bad_encoding", None, line.strip(), f"the line is not UTF-8 text (byte {e.start}: {e.reason})"
        ) from None
    try:
        row = load_json_text(text, what="the row", error=DatasetError, max_bytes=_MAX_ROW_BYTES)
    except DatasetError as e:
        raise _BadRow("bad_json", None, _short(text.strip()), f"the line is not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise _BadRow("bad_json", None, row, f"the line must be a JSON object, but got {_short(row)}")
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        name = unknown[0]
        raise _BadRow(
            "unknown_field",
            name,
            row[name],
            f"unknown field `{name}` (allowed: {', '.join(FIELDS)}), got {name}={_short(row[name])}",
        )
    for name in REQUIRED_FIELDS:
        if name not in row:
            raise _BadRow("missing_field", name, None, f"required field `{name}` is missing")
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        raise _BadRow(
            "bad_value", "prompt", prompt, f"`prompt` must be a string, but got prompt={_short(prompt)}"
        )
    if not prompt.strip():
        raise _BadRow(
            "empty_prompt", "prompt", prompt, f"`prompt` must not be empty, but got prompt={prompt!r}"
        )
    condition_type = row["condition_type"]
    if not isinstance(condition_type, str) or not condition_type.strip():
        raise _BadRow(
            "bad_value",
            "condition_type",
            condition_type,
            f"`condition_type` must be a non-empty string, but got condition_type={_short(condition_type)}",
        )
    negative = row.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise _BadRow(
            "bad_value",
            "negative_prompt",
            negative,
            f"`negative_prompt` must be a string, but got negative_prompt={_short(negative)}",
        )
    seed = row.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _MAX_SEED
    ):
        raise _BadRow(
            "bad_seed", "seed", seed, f"`seed` must be an integer in [0, 2**63), but got seed={_short(seed)}"
        )
    row["condition"] = str(_relative_path(row, "condition"))
    if row.get("image") is not None:
        row["image"] = str(_relative_path(row, "image"))
    return row


def _lines(file: IO[bytes]) -> Iterator[bytes]:
    """The lines of a binary file; a line longer than a row may be comes back cut to one byte more than
    that (and is refused), without the rest of it ever being held in memory."""
    while line := file.readline(_MAX_ROW_BYTES + 1):
        if len(line) > _MAX_ROW_BYTES and not line.endswith(b"\n"):
            while (rest := file.readline(_MAX_ROW_BYTES)) and not rest.endswith(b"\n"):
                pass
        yield line


class Dataset:
    """The checked samples of a dataset folder (iterable of :class:`Sample`, ``len()``, indexing).

    Attributes:
        root: The dataset folder.
        skipped: Bad rows skipped while opening, per reason (:data:`SKIP_REASONS`); empty when all were good.
        condition_type: The condition type the dataset was filtered to, if any.

    Example:
        >>> dataset = Dataset.open("data/shapes-cal", condition_type="seg", limit=8)  # doctest: +SKIP
        >>> for sample in dataset:  # doctest: +SKIP
        ...     condition = sample.condition_image()
    """

    def __init__(
        self,
        root: Path,
        samples: Sequence[Sample | MultiSample],
        skipped: Mapping[str, int] | None = None,
        *,
        condition_type: str | None = None,
    ) -> None:
        self.root = Path(root)
        self._samples = tuple(samples)
        self.skipped: Mapping[str, int] = MappingProxyType(dict(skipped or {}))
        self.condition_type = condition_type

    @classmethod
    def _open_several(cls, root: Path, condition_type: str, *, limit: int | None, strict: bool) -> Dataset:
        """The scenes that have a row of every condition type of ``seg,depth`` (same prompt, seed and ground
        truth), as :class:`MultiSample` s in the first type's order."""
        types = condition_type.split(",")
        if any(not t for t in types) or len(set(types)) != len(types):
            raise DatasetError(
                f"`condition_type` must name distinct condition types joined by commas, but got "
                f"{condition_type!r}."
            )
        parts = [cls.open(root, condition_type=t, strict=strict) for t in types]

        def scene(sample: Sample) -> tuple:
            return (sample.prompt, sample.seed, sample.negative_prompt, sample.image_path)

        others = [{scene(s): s for s in part._rows()} for part in parts[1:]]
        samples: list[MultiSample] = []
        for first in parts[0]._rows():
            rest = [found[scene(first)] for found in others if scene(first) in found]
            if len(rest) == len(others):
                samples.append(MultiSample(len(samples), (first, *rest)))
            if limit is not None and len(samples) == limit:
                break
        skipped: dict[str, int] = {}
        for part in parts:
            for reason, count in part.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + count
        return cls(root, tuple(samples), skipped, condition_type=condition_type)

    @classmethod
    def open(
        cls,
        folder: str | Path,
        *,
        condition_type: str | None = None,
        limit: int | None = None,
        strict: bool = False,
    ) -> Dataset:
        """Read and check ``folder/metadata.jsonl``.

        Rows are read in file order. Structural checks (JSON, fields, prompt, seed, paths) apply to every row
        read; rows of another condition type are then dropped without further checks (not counted as
        skipped); the files of the remaining rows are checked to exist and be readable images. Reading stops
        once ``limit`` samples are kept, so later rows are not checked.

        Args:
            folder: The dataset folder.
            condition_type: Keep only rows of this condition type.
            limit: Keep at most this many samples (the first ones).
            strict: Raise on the first bad row instead of skipping it.

        Returns:
            The :class:`Dataset`.

        Raises:
            DatasetError: When the folder or its ``metadata.jsonl`` is missing, ``limit`` is not a positive
                integer, or (``strict``) a row is bad: the message names the line, the field and the value.
        """
        root = Path(folder)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise DatasetError(f"`limit` must be a positive integer or None, but got limit={limit!r}.")
        if condition_type is not None and (not isinstance(condition_type, str) or not condition_type):
            raise DatasetError(f"`condition_type` must be a non-empty string, but got {condition_type!r}.")
        if condition_type is not None and "," in condition_type:
            return cls._open_several(root, condition_type, limit=limit, strict=strict)
        if not root.is_dir():
            raise DatasetError(f"dataset folder {str(root)!r} does not exist (or is not a folder).")
        metadata = root / METADATA_FILE
        if not metadata.is_file():
            raise DatasetError(
                f"dataset folder {str(root)!r} has no {METADATA_FILE}; make one with "
                f"`hgc-tune data shapes --out {root}` or write one row per sample (see `hgc_tune.data`)."
            )
        if not metadata.resolve().is_relative_to(root.resolve()):
            raise DatasetError(
                f"{str(metadata)!r} must be a file inside the dataset folder, but it is a link to "
                f"{str(metadata.resolve())!r}."
            )
        samples: list[Sample] = []
        skipped: dict[str, int] = {}
        with metadata.open("rb") as lines:
            for number, line in enumerate(_lines(lines), start=1):
                if limit is not None and len(samples) >= limit:
                    break
                if not line.strip():
                    continue  # blank lines (a trailing newline, spacing) are not rows
                try:
                    row = _parse_row(line)
                    if condition_type is not None and row["condition_type"] != condition_type:
                        continue
                    sample = cls._sample_from_row(root, row, len(samples), number)
                except _BadRow as bad:
                    if strict:
                        raise DatasetError(f"{metadata}:{number}: {bad.message}.") from None
                    skipped[bad.reason] = skipped.get(bad.reason, 0) + 1
                    continue
                samples.append(sample)
        return cls(root, tuple(samples), skipped, condition_type=condition_type)

    @staticmethod
    def _sample_from_row(root: Path, row: dict[str, Any], index: int, line: int) -> Sample:
        condition_path = root / row["condition"]
        _inside(root, condition_path, "condition", row["condition"])
        image_path = None
        if row.get("image") is not None:
            image_path = root / row["image"]
            _inside(root, image_path, "image", row["image"])
        _check_image_file(condition_path, "condition", row["condition"])
        if image_path is not None:
            _check_image_file(image_path, "image", row["image"])
        return Sample(
            index=index,
            condition_path=condition_path,
            prompt=row["prompt"],
            condition_type=row["condition_type"],
            image_path=image_path,
            negative_prompt=row.get("negative_prompt"),
            seed=row.get("seed"),
            line=line,
        )

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[Sample | MultiSample]:
        return iter(self._samples)

    @overload
    def __getitem__(self, key: int) -> Sample | MultiSample: ...

    @overload
    def __getitem__(self, key: slice) -> Dataset: ...

    def __getitem__(self, key: int | slice) -> Sample | MultiSample | Dataset:
        if isinstance(key, slice):
            chosen = self._samples[key]
            return Dataset(
                self.root,
                tuple(replace(s, index=i) for i, s in enumerate(chosen)),
                self.skipped,
                condition_type=self.condition_type,
            )
        return self._samples[key]

    def __repr__(self) -> str:
        skipped = sum(self.skipped.values())
        return f"Dataset(root={str(self.root)!r}, samples={len(self)}, skipped={skipped})"

    @property
    def condition_types(self) -> tuple[str, ...]:
        """The condition types present, in order of first appearance."""
        return tuple(dict.fromkeys(s.condition_type for s in self._samples))

    def select(self, *, condition_type: str | None = None, limit: int | None = None) -> Dataset:
        """A new dataset with the samples of one condition type and/or the first ``limit`` ones.

        Raises:
            DatasetError: When ``limit`` is not a positive integer.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise DatasetError(f"`limit` must be a positive integer or None, but got limit={limit!r}.")
        chosen = [s for s in self._samples if condition_type is None or s.condition_type == condition_type]
        chosen = chosen[: limit if limit is not None else len(chosen)]
        return Dataset(
            self.root,
            tuple(replace(s, index=i) for i, s in enumerate(chosen)),
            self.skipped,
            condition_type=condition_type if condition_type is not None else self.condition_type,
        )

    def content_hash(self) -> str:
        """SHA-256 over the kept samples' rows and the bytes of their condition and ground-truth files.

        Paths enter relative to :attr:`root`, so a moved folder keeps its hash; a changed row, a changed file
        or a different selection of samples changes it. Files are streamed, never all held at once.

        Returns:
            The hex digest.
        """
        digest = hashlib.sha256()
        for sample in self._rows():
            row = {
                "condition": self._relative(sample.condition_path),
                "condition_type": sample.condition_type,
                "image": None if sample.image_path is None else self._relative(sample.image_path),
                "negative_prompt": sample.negative_prompt,
                "prompt": sample.prompt,
                "seed": sample.seed,
            }
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=True).encode() + b"\n")
            for path in (sample.condition_path, sample.image_path):
                if path is None:
                    continue
                file_digest = hashlib.sha256()
                with path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        file_digest.update(chunk)
                digest.update(file_digest.digest())
        return digest.hexdigest()

    def _rows(self) -> list[Sample]:
        """The kept rows in order; a :class:`MultiSample` (several condition types) gives its rows, one per
        condition type."""
        return [row for s in self._samples for row in (s.samples if isinstance(s, MultiSample) else (s,))]

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()
