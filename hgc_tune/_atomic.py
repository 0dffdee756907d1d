"""Atomic file writes: every file hgc-tune writes goes through :func:`atomic_write`.

The content is written to a temporary file in the target's folder, flushed to disk (``fsync``), given the
file mode (0644, or the bits of the file it replaces) and moved over the target with :func:`os.replace`, so
a reader sees the old file or the new one, never half of one; a failed write removes its temporary file.
Temporary files carry the writer's process id, so the next write of the same file (or
:func:`remove_stale_temporaries`, for a whole folder) deletes those a killed process left behind (SIGKILL
runs no cleanup) without touching a live writer's. A folder written as a whole (a dataset, a report) goes
through :func:`atomic_folder` in the same way, and files that belong together (a policy and its Pareto file)
through :func:`atomic_write_files`.

A full disk (``ENOSPC``) or an exceeded quota (``EDQUOT``) while writing raises
:class:`~hgc_tune.errors.DiskFullError`, one line naming the target: nothing of the new content is left, and
the file or folder that was there before is unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from hgc_tune.errors import DiskFullError

__all__ = [
    "FILE_MODE",
    "atomic_folder",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_files",
    "atomic_write_text",
    "created_folder",
    "disk_full_error",
    "is_temporary",
    "remove_stale_temporaries",
]

FILE_MODE = 0o644
_TMP_MARK = ".hgc-tmp-"
_OLD_MARK = ".hgc-old-"
_STALE = re.compile(rf"^\..*(?:{re.escape(_TMP_MARK)}|{re.escape(_OLD_MARK)})(\d+)-")
_DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded"}
# Libraries that write files themselves report a full disk in their own words (safetensors: "No space left on
# device (os error 28)"), or not at all (torch.save: "unexpected pos"): then the free space tells.
_DISK_FULL_TEXT = {
    "no space left on device": errno.ENOSPC,
    "os error 28": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "os error 122": errno.EDQUOT,
}
_NEARLY_FULL = 64 * 1024


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
    with _disk_full_as_error(target, target.parent):
        tmp = _write_temporary(target, write)
        try:
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return target


def atomic_write_files(writes: Mapping[str | os.PathLike[str], Callable[[Path], object]]) -> list[Path]:
    """Write several files as one: every target keeps its old content unless all get their new one.

    Each content is written to a temporary file beside its target and flushed first (as in
    :func:`atomic_write`); only then do the temporaries replace their targets, in the order given. When a
    replace fails, the targets already replaced get their old file back (kept aside as a hard link) or, new
    ones, are removed. A writer killed among the replaces (SIGKILL) can leave some targets new.

    Args:
        writes: Target path -> the function that writes its content to the path it is given.

    Returns:
        The target paths, in order.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> [p.name for p in atomic_write_files({root / "a.txt": lambda p: p.write_text("a"),
        ...                                     root / "b.txt": lambda p: p.write_text("b")})]
        ['a.txt', 'b.txt']
    """
    targets = [Path(path) for path in writes]
    temporaries: dict[Path, Path] = {}
    try:
        for target, write in zip(targets, writes.values()):
            with _disk_full_as_error(target, target.parent):
                temporaries[target] = _write_temporary(target, write)
        _replace_all(temporaries)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
    return targets


@contextlib.contextmanager
def created_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create the folder ``path`` (and its missing parents) for the block; when the block raises, remove
    the folders it created, if they are empty. A folder that existed before is never removed, and neither is
    one that holds anything (another writer's file).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a" / "b"
        >>> try:
        ...     with created_folder(target):
        ...         raise ValueError("failed")
        ... except ValueError:
        ...     pass
        >>> target.parent.exists()
        False
    """
    target = Path(path)
    missing = [folder for folder in (target, *target.parents) if not folder.exists()]
    target.mkdir(parents=True, exist_ok=True)
    try:
        yield target
    except BaseException:
        for folder in missing:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty, or gone: leave it
                break
        raise


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of the temporary files or folders these writers put beside their targets."""
    return name.startswith(".") and (_TMP_MARK in name or _OLD_MARK in name)


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike[str],
    *,
    before_replace: Callable[[Path], None] | None = None,
    legacy_marks: tuple[str, ...] = (),
) -> Iterator[Path]:
    """Write the folder ``path`` as a whole: fill the temporary folder this yields; it replaces ``path`` when
    the block ends without an error, and is removed when it raises.

    The temporary folder lies beside ``path`` and carries the writer's process id, so the next write of
    ``path`` removes one a killed writer left. A folder that was at ``path`` is moved aside, the new one
    renamed into place, then the old one deleted; a writer killed between the two renames leaves the old
    folder aside, and the next write of ``path`` puts it back before anything else.

    Args:
        path: The target folder.
        before_replace: Called with ``path`` just before it is replaced (e.g. to refuse to replace what
            appeared there meanwhile); its exception aborts the write.
        legacy_marks: Marks of the temporary folders older versions wrote beside ``path``
            (``.NAME<mark>PID-…``); those of dead processes are removed too.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "data"
        >>> with atomic_folder(target) as tmp:
        ...     _ = (tmp / "a.txt").write_text("hi")
        >>> (target / "a.txt").read_text()
        'hi'
    """
    target = Path(path)
    with _disk_full_as_error(target, target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_of(target, legacy_marks)
        # Not mkdtemp: its 0700 mode would stick to the renamed folder; mkdir follows the umask.
        tmp = target.parent / f".{target.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            try:
                yield tmp
            except DiskFullError as e:
                # A file of the block: name the path it would have had, not the temporary folder's.
                raise DiskFullError(str(e).replace(str(tmp), str(target))) from e
            if before_replace is not None:
                before_replace(target)
            if not target.is_dir() or target.is_symlink():
                try:
                    os.rename(tmp, target)
                    return
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                # Another writer's folder took the place meanwhile.
                if before_replace is not None:
                    before_replace(target)
            old = target.parent / f".{target.name}{_OLD_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def disk_full_error(error: BaseException, path: str | os.PathLike[str]) -> DiskFullError | None:
    """The :class:`~hgc_tune.errors.DiskFullError` for ``error`` when it (or its cause) is a full disk or an
    exceeded quota while writing ``path``; ``None`` for any other error."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, DiskFullError):
            return cause
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            return DiskFullError(_message(path, cause.errno))
        text = str(cause).lower()
        for words, code in _DISK_FULL_TEXT.items():
            if words in text:
                return DiskFullError(_message(path, code))
        cause = cause.__cause__ or cause.__context__
    return None


def _write_temporary(target: Path, write: Callable[[Path], object]) -> Path:
    """A flushed temporary file beside ``target``, filled by ``write`` and given ``target``'s mode."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # A writer of this file killed in its write window left its temporary file: this write replaces it.
    _remove_stale_of(target)
    mode = target.stat().st_mode & 0o777 if target.is_file() else FILE_MODE
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}{_TMP_MARK}{os.getpid()}-", suffix=".tmp", dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            write(tmp)
        except Exception as e:
            # Judged while the partial file still takes its space (a writer that hides the errno).
            if not isinstance(e, OSError) and _nearly_full(target.parent):
                raise DiskFullError(_message(target, errno.ENOSPC)) from e
            raise
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _replace_all(temporaries: dict[Path, Path]) -> None:
    """Move each temporary over its target; when one fails, undo those done (old file back, new removed)."""
    done: list[tuple[Path, Path | None]] = []  # target, its old file kept aside
    try:
        for target, tmp in temporaries.items():
            with _disk_full_as_error(target, target.parent):
                old = _keep_aside(target)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    if old is not None:
                        with contextlib.suppress(OSError):
                            _put_back(old, target)
                    raise
                done.append((target, old))
    except BaseException:
        for target, old in reversed(done):
            with contextlib.suppress(OSError):  # one that cannot be put back keeps its old file aside
                if old is not None:
                    _put_back(old, target)
                else:
                    target.unlink(missing_ok=True)
        raise
    for _, old in done:
        if old is not None:
            old.unlink(missing_ok=True)


def _keep_aside(target: Path) -> Path | None:
    """A hard link to the file at ``target`` (``None`` when there is none), to put it back from."""
    if not (target.is_file() or target.is_symlink()):
        return None
    old = target.parent / f".{target.name}{_OLD_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.link(target, old, follow_symlinks=False)
    except OSError as e:
        if disk_full_error(e, target) is not None:
            raise
        os.rename(target, old)  # a file system without hard links: the target is missing until replaced
    return old


def _put_back(old: Path, target: Path) -> None:
    """Put the file kept aside as ``old`` back at ``target``."""
    try:
        same = os.path.samestat(os.lstat(old), os.lstat(target))
    except FileNotFoundError:
        same = False
    if not same:
        os.replace(old, target)
    old.unlink(missing_ok=True)


def _message(path: str | os.PathLike[str], code: int) -> str:
    return (
        f"cannot write {str(path)!r}: {_DISK_FULL[code]} ({errno.errorcode[code]}); nothing was written and "
        "what was there before is unchanged: free some space or write elsewhere."
    )


@contextlib.contextmanager
def _disk_full_as_error(target: Path, folder: Path) -> Iterator[None]:
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        full = disk_full_error(e, target)
        if full is None:
            raise
        raise full from e


def _nearly_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < _NEARLY_FULL


def _remove_stale_of(target: Path, legacy_marks: tuple[str, ...] = ()) -> None:
    """Remove what killed writers of ``target`` left beside it (put back a folder one moved aside first)."""
    pattern = f".{glob.escape(target.name)}"
    for mark in (_OLD_MARK, _TMP_MARK, *legacy_marks):
        for stale in sorted(target.parent.glob(f"{pattern}{glob.escape(mark)}*")):
            pid = re.match(r"(\d+)-", stale.name[len(pattern) + len(mark) :])
            if pid is not None and not _alive(int(pid[1])):
                _clear(stale)


def _clear(entry: Path) -> bool:
    """Delete a dead writer's temporary ``entry``; whether it was deleted. A folder it moved aside to replace
    it is put back when nothing took its place (the writer died between its two renames)."""
    try:
        if _OLD_MARK in entry.name:
            target = entry.parent / entry.name[1 : entry.name.index(_OLD_MARK)]
            if not target.exists():
                os.rename(entry, target)
                return False
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
    except OSError:  # a read-only folder, or another cleaner got there first: leave it
        return False
    return True


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
        if _clear(entry):
            removed.append(entry)
    return removed
