"""Opening a file the user named as an input, refusing at once what is not a regular file.

``open()`` on a FIFO blocks until a writer appears (forever, for a stray ``mkfifo``), a character device such
as ``/dev/zero`` reads without end, and a folder fails with a platform-dependent error. Every reader of a
user's input file (policies, profiles, JSON files, images) opens it through :func:`open_input_file`, which
opens without blocking, checks the kind of file on the open descriptor (no window between the check and the
read), and only then reads.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from hgc_tune.errors import HgcTuneError, InputFileError

__all__ = ["open_input_file"]


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_input_file(
    path: str | os.PathLike[str], *, what: str, error: type[HgcTuneError] = InputFileError
) -> BinaryIO:
    """Open ``path`` for reading in binary mode, refusing anything but a regular file without blocking.

    Args:
        path: The file.
        what: How to name it in messages (``"--condition-image"``, ``"policy file"``).
        error: The exception type to raise (the caller's, e.g. ``PolicyFormatError``).

    Returns:
        The open file (the caller closes it, e.g. ``with open_input_file(...) as f:``).

    Raises:
        error: A missing file (a :class:`FileNotFoundError` chained), a folder, FIFO, device or socket, or a
            file the process may not read.

    Example:
        >>> open_input_file("/dev/null", what="x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hgc_tune.errors.InputFileError: cannot read x '/dev/null': it must be a regular file, but it is...
    """
    name = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError as e:
        raise error(f"{what} {name!r} does not exist.") from e
    except IsADirectoryError:
        raise error(f"cannot read {what} {name!r}: it must be a regular file, but it is a folder.") from None
    except OSError as e:
        raise error(f"cannot read {what} {name!r}: {e.strerror or e}.") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"cannot read {what} {name!r}: it must be a regular file, but it is {_kind(mode)}.")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
