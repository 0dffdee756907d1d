"""The one reader of image inputs: condition, init and mask images on the command line, and dataset files.

Pillow reads a PNG header that claims 30 000 x 30 000 pixels and then allocates 2.7 GB to decode it (a
decompression bomb), says only "image file is truncated" for a cut-off file, and blocks forever on a FIFO.
:func:`read_image` refuses each of these by name, in one line, before it decodes a pixel:

- what is not a regular file (a folder, FIFO or device), at once (:func:`hgc_tune._files.open_input_file`);
- more than :data:`MAX_IMAGE_PIXELS` pixels, from the header alone;
- a file whose structure is cut off or corrupt (Pillow's ``verify``: chunk lengths and checksums), before
  decoding; then whatever decoding still finds short.

:func:`check_image` does the same checks without decoding (what a dataset does when it opens).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import IO, TYPE_CHECKING

from hgc_tune._files import open_input_file
from hgc_tune.errors import HgcTuneError, ImageFileError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["MAX_IMAGE_PIXELS", "check_image", "read_image"]

# 8192 x 8192: twice the largest generation side in each direction, and 64 MP photos still load (decoded as
# RGB: 200 MB). Pillow's own limit is 89 MP, and only a warning below twice that.
MAX_IMAGE_PIXELS = 8192 * 8192


def _header(file: IO[bytes], where: str, error: type[HgcTuneError], max_pixels: int) -> Image:
    """Open the image in ``file`` (header only), refusing a decompression bomb or a file that is no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(file)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        declared = re.search(r"\((\d+) pixels\)", str(e))
        count = f"{declared.group(1)} pixels" if declared else "more pixels than Pillow decodes"
        raise error(
            f"{where} is a decompression bomb: it declares {count}, more than the {max_pixels} an image "
            "input may have."
        ) from None
    except UnidentifiedImageError:
        raise error(f"{where} is not an image Pillow can read (PNG, JPEG, ...).") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise error(f"{where} is not a readable image: {e}.") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise error(
            f"{where} is a decompression bomb: it declares {width}x{height} = {width * height} pixels, more "
            f"than the {max_pixels} an image input may have."
        )
    return image


def _damage(e: Exception, where: str, error: type[HgcTuneError]) -> HgcTuneError:
    kind = "truncated" if "truncated" in str(e).lower() else "corrupt"
    return error(f"{where} is {kind}: {e}.")


def check_image(
    path: str | os.PathLike[str],
    *,
    what: str = "image",
    error: type[HgcTuneError] = ImageFileError,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[int, int]:
    """Check that ``path`` is an image :func:`read_image` would read, without decoding it.

    Returns:
        ``(width, height)``.

    Raises:
        error: As :func:`read_image`, except for damage only decoding finds.
    """
    where = f"{what} {str(path)!r}"
    if not os.path.lexists(path):
        raise error(f"cannot read {where}: it does not exist.")
    with open_input_file(path, what=what, error=error) as file:
        image = _header(file, where, error, max_pixels)
        size = image.size
        try:
            # Structure and checksums, without decoding: finds a cut-off or corrupted file before a pixel is
            # allocated (a no-op for formats that check nothing).
            image.verify()
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise _damage(e, where, error) from None
        finally:
            image.close()
    return size


def read_image(
    path: str | os.PathLike[str],
    *,
    mode: str = "RGB",
    what: str = "image",
    error: type[HgcTuneError] = ImageFileError,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image:
    """Read an image file into memory, converted to ``mode``.

    Args:
        path: The image file.
        mode: The Pillow mode to convert to (``"RGB"``; ``"L"`` for masks).
        what: How to name the input in messages (``"--condition-image"``, ``"dataset condition"``).
        error: The exception type to raise (default :class:`~hgc_tune.errors.ImageFileError`).
        max_pixels: The most pixels accepted (width x height).

    Returns:
        A loaded ``PIL.Image.Image`` (the file is closed).

    Raises:
        error: A missing file or one that is not a regular file, a file that is not an image, a decompression
            bomb (more than ``max_pixels`` pixels), or a truncated or corrupt file; the message names which.

    Example:
        >>> read_image("/dev/zero", what="-m")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hgc_tune.errors.ImageFileError: cannot read -m '/dev/zero': it must be a regular file, but it is...
    """
    check_image(path, what=what, error=error, max_pixels=max_pixels)
    where = f"{what} {str(path)!r}"
    with (
        open_input_file(path, what=what, error=error) as file,
        _header(file, where, error, max_pixels) as image,
    ):
        try:
            image.load()
            return image.convert(mode)
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise _damage(e, where, error) from None
