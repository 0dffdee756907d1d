"""Atomic file writes: every file hgc-tune writes goes through :func:`atomic_write`.

The content is written to a temporary file in the target's folder, flushed to disk (``fsync``), given the
file mode (0644, or the bits of the file it replaces) and moved over the target with :func:`os.replace`, so
a reader sees the old file or the new one, never half of one; a failed write removes its temporary file.
Temporary files carry the writer's process id, so the next write of the same file (or
:func:`remove_stale_temporaries`, for a whole folder) deletes those a killed process left behind (SIGKILL
runs no cleanup) without touching a live writer's.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["FILE_MODE", "atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temporaries"]

FILE_MODE = 0o644
_TMP_MARK = ".hgc-tmp-"
_STALE = re.compile(rf"^\..*{re.escape(_TMP_MARK)}(\d+)-")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file, which then replaces ``path``.

    The parent folder is created if missing. A new file gets mode 0644 (whatever the umask); a replaced file
    keeps its permission bits.

    Args:
        path: The target file.
        write: Writes the content to the path it is given (e.g. ``lambda p: image.save(p, format="PNG")``).

    Returns:
        The target path.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(target, lambda p: p.write_text("hi")).read_text()
        'hi'
        >>> oct(target.stat().st_mode & 0o777)
        '0o644'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A writer of this file killed in its write window left its temporary file: this write replaces it.
    for stale in target.parent.glob(f".{glob.escape(target.name)}{_TMP_MARK}*"):
        if _is_stale(stale.name):
            stale.unlink(missing_ok=True)
    mode = target.stat().st_mode & 0o777 if target.is_file() else FILE_MODE
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}{_TMP_MARK}{os.getpid()}-", suffix=".tmp", dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of bytes."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text with ``\\n`` line ends."""
    return atomic_write(path, lambda p: p.write_bytes(text.encode("utf-8")))


def _is_stale(name: str) -> bool:
    match = _STALE.match(name)
    return match is not None and not _alive(int(match.group(1)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(
    folder: str | os.PathLike[str], *, legacy_prefixes: tuple[str, ...] = ()
) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder`` (their process no longer runs).

    Args:
        folder: The folder to clean (not recursive).
        legacy_prefixes: Names of temporary folders or files of older versions, which carry no process id
            (e.g. ``.profile-tmp-``); they are deleted whatever their age.

    Returns:
        The paths removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for entry in root.iterdir():
        if not (_is_stale(entry.name) or entry.name.startswith(legacy_prefixes)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
