"""Parsing JSON that comes from a user's file: bounded in size and nesting, with errors that name the file.

Python's :mod:`json` recurses once per nesting level, so ``[[[[…]]]]`` a hundred thousand deep ends in a
``RecursionError`` traceback, and a multi-gigabyte file is read whole. Every reader of a file hgc-tune did not
just write itself (policies, profiles, Pareto files, dataset rows, model configs) parses through
:func:`load_json_text` or :func:`load_json_file`, which turn both into the caller's error type.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hgc_tune._files import open_input_file
from hgc_tune.errors import HgcTuneError

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "load_json_file", "load_json_text"]

# Far above any file hgc-tune writes (a profile's metadata of an SDXL run is a few MB).
MAX_JSON_BYTES = 64 * 2**20
# hgc-tune's formats nest a handful of levels; diffusers configs fewer than ten.
MAX_JSON_DEPTH = 64


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether ``value`` nests containers deeper than ``limit`` (iterative: no recursion of its own)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def load_json_text(
    text: str | bytes,
    *,
    what: str,
    error: type[HgcTuneError] = HgcTuneError,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    **loads_kwargs: Any,
) -> Any:
    """Parse JSON text, refusing oversized or deeply nested input with ``error``.

    Args:
        text: The JSON text (bytes must be UTF-8).
        what: How to name the input in messages (``"policy file 'p.json'"``).
        error: The exception type to raise (the caller's, e.g. ``PolicyFormatError``).
        max_bytes: Largest accepted size in bytes (UTF-8).
        max_depth: Deepest accepted nesting of objects and arrays.
        **loads_kwargs: Passed to :func:`json.loads` (``object_pairs_hook``, ``parse_constant``, …); an
            ``error`` they raise passes through unchanged.

    Returns:
        The parsed value.

    Raises:
        error: Too large, nested too deeply, not UTF-8, or malformed JSON (with line and column).

    Example:
        >>> load_json_text('{"a": [1, 2]}', what="example")
        {'a': [1, 2]}
        >>> load_json_text("[" * 100 + "]" * 100, what="example")
        Traceback (most recent call last):
        ...
        hgc_tune.errors.HgcTuneError: example: JSON nested deeper than 64 levels.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise error(f"{what}: {size} bytes, more than the {max_bytes} bytes a JSON input may have.")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{what}: not UTF-8 text ({e}).") from None
    try:
        data = json.loads(text, **loads_kwargs)
    except json.JSONDecodeError as e:
        raise error(f"{what}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
    except RecursionError:
        raise error(f"{what}: JSON nested deeper than {max_depth} levels.") from None
    if _depth_exceeds(data, max_depth):
        raise error(f"{what}: JSON nested deeper than {max_depth} levels.")
    return data


def load_json_file(
    path: str | os.PathLike[str],
    *,
    what: str,
    error: type[HgcTuneError] = HgcTuneError,
    max_bytes: int = MAX_JSON_BYTES,
    missing: Callable[[Path], HgcTuneError] | None = None,
    **kwargs: Any,
) -> Any:
    """Read and parse a JSON file with :func:`load_json_text`, checking its size before reading it.

    Args:
        path: The file.
        what: How to name it in messages (e.g. ``"profile metadata"``); the path is added.
        error: The exception type to raise.
        max_bytes: Largest accepted file size.
        missing: Builds the error for a missing file (default: ``error`` saying it does not exist).
        **kwargs: Passed to :func:`load_json_text`.

    Raises:
        error: A missing or unreadable file, or anything :func:`load_json_text` refuses.
    """
    file = Path(path)
    where = f"{what} {str(file)!r}"
    if missing is not None and not file.exists() and not file.is_symlink():
        raise missing(file)
    # A FIFO or a device is refused at once (open() on a FIFO blocks until a writer comes).
    with open_input_file(file, what=what, error=error) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(f"{where}: {size} bytes, more than the {max_bytes} bytes a JSON input may have.")
        try:
            blob = f.read(max_bytes + 1)
        except OSError as e:
            raise error(f"cannot read {where}: {e.strerror or e}.") from None
    return load_json_text(blob, what=where, error=error, max_bytes=max_bytes, **kwargs)
