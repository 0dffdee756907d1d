"""Argument and output-path checks shared by every subcommand, done before anything heavy is imported.

Numbers go through argparse ``type=`` functions, so every command states the same rule the same way
(``--steps`` must be in [1, 1000], but got --steps=0.) and ``--help`` shows the bounds. Output paths are
checked by :func:`check_output` at the top of ``run``: a parent that can be written to, a file where a file
is expected and a folder where a folder is, and nothing replaced without ``--overwrite``. A check that fails
raises :class:`~hgc_tune.errors.HgcTuneError`, which the CLI prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from hgc_tune.errors import HgcTuneError

__all__ = [
    "MAX_STEPS",
    "MAX_SEED",
    "MAX_RESOLUTION",
    "int_in",
    "fraction",
    "strength",
    "finite",
    "condition_types",
    "device",
    "check_strength_runs_steps",
    "seconds",
    "add_steps_argument",
    "add_seed_argument",
    "add_resolution_argument",
    "add_samples_argument",
    "add_samples_per_call_argument",
    "DEFAULT_SAMPLES_PER_CALL",
    "add_budget_argument",
    "add_trials_argument",
    "add_overwrite_argument",
    "check_output",
]

# Denoising steps a command accepts: far above any sampler's useful range (SD uses 20-50), low enough that a
# typo cannot start an unbounded run.
MAX_STEPS = 1000
# Seeds feed torch generators and Optuna's TPE sampler, whose numpy RandomState takes 32-bit seeds.
MAX_SEED = 2**32 - 1
MAX_RESOLUTION = 4096
# Samples, trials and other counts: a bound that only catches typos.
MAX_COUNT = 1_000_000
# Samples per pipeline call by default: the fastest batch measured on a 2-core CPU with the shapes model
# (about 2.5x the samples/s of one per call; batches of 16 were no faster). See README, "Batched generation".
DEFAULT_SAMPLES_PER_CALL = 8
# The largest batch a command accepts (the profile format's bound); memory refuses far smaller ones first.
MAX_SAMPLES_PER_CALL = 4096


def int_in(flag: str, low: int, high: int, *, multiple_of: int = 1) -> Callable[[str], int]:
    """An argparse ``type=`` for an integer in ``[low, high]`` (and a multiple of ``multiple_of``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high or value % multiple_of:
            extra = f" and a multiple of {multiple_of}" if multiple_of > 1 else ""
            raise argparse.ArgumentTypeError(
                f"`{flag}` must be an integer in [{low}, {high}]{extra}, but got {flag}={text}."
            )
        return value

    parse.__name__ = flag.lstrip("-")
    return parse


def fraction(flag: str) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite number in the open interval (0, 1)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 < value < 1.0:  # NaN fails both comparisons
            raise argparse.ArgumentTypeError(f"`{flag}` must be in (0, 1), but got {flag}={text}.")
        return value

    parse.__name__ = flag.lstrip("-")
    return parse


def strength(flag: str) -> Callable[[str], float]:
    """An argparse ``type=`` for a denoising strength in (0, 1] (img2img, inpainting)."""

    def parse(text: str) -> float:
        from hgc_tune.models._tasks import check_strength

        try:
            value = float(text)
        except ValueError:
            value = math.nan
        return check_strength(value, error=argparse.ArgumentTypeError, flag=flag, given=text)

    parse.__name__ = flag.lstrip("-")
    return parse


def finite(flag: str) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite number (NaN and infinity would run and draw noise)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"`{flag}` must be a finite number, but got {flag}={text}.")
        return value

    parse.__name__ = flag.lstrip("-")
    return parse


def condition_types(flag: str) -> Callable[[str], str]:
    """An argparse ``type=`` for one condition type, or several distinct ones joined by commas (seg,depth)."""

    def parse(text: str) -> str:
        names = text.split(",")
        if any(not n.strip() for n in names) or len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(
                f"`{flag}` must name condition types joined by commas, each once and none empty (e.g. "
                f"seg,depth), but got {flag}={text!r}."
            )
        return ",".join(n.strip() for n in names)

    parse.__name__ = flag.lstrip("-")
    return parse


def device(flag: str) -> Callable[[str], str]:
    """An argparse ``type=`` for a torch device name; that it exists is checked where the model loads."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(
                f"`{flag}` must name a torch device (cpu, cuda, cuda:1, mps), but got {flag}={text!r}."
            )
        return text.strip()

    parse.__name__ = flag.lstrip("-")
    return parse


def check_strength_runs_steps(steps: int, strength: float | None) -> None:
    """Refuse an img2img/inpainting ``--strength`` at which ``--steps`` runs no denoising step at all.

    Raises:
        HgcTuneError: ``int(steps * strength)`` is 0 (diffusers would run an empty loop and fail deep inside).
    """
    from hgc_tune.models._tasks import steps_run

    if strength is not None and steps_run(steps, strength) < 1:
        raise HgcTuneError(
            f"`--strength` must leave at least one denoising step, but --strength {strength:g} at --steps "
            f"{steps} runs {steps_run(steps, strength)}; give --strength >= {1 / steps:.3g} or more --steps."
        )


def confidence(flag: str) -> Callable[[str], float]:
    """An argparse ``type=`` for a confidence level in [0, 1) (0: the point estimate, no bound)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 <= value < 1.0:  # NaN fails both comparisons
            raise argparse.ArgumentTypeError(f"`{flag}` must be in [0, 1), but got {flag}={text}.")
        return value

    parse.__name__ = flag.lstrip("-")
    return parse


def seconds(flag: str, *, zero_ok: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite number of seconds, positive (or also 0 with ``zero_ok``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (0 <= value if zero_ok else 0 < value) or not math.isfinite(value):
            rule = ">= 0" if zero_ok else "> 0"
            raise argparse.ArgumentTypeError(f"`{flag}` must be a number {rule}, but got {flag}={text}.")
        return value

    parse.__name__ = flag.lstrip("-")
    return parse


def add_steps_argument(parser: argparse.ArgumentParser, *, default: int | None, help: str) -> None:
    parser.add_argument(
        "--steps",
        type=int_in("--steps", 1, MAX_STEPS),
        default=default,
        metavar="N",
        help=f"{help}; 1..{MAX_STEPS}",
    )


def add_seed_argument(parser: argparse.ArgumentParser, *, help: str = "seed (default: 0)") -> None:
    parser.add_argument(
        "--seed", type=int_in("--seed", 0, MAX_SEED), default=0, metavar="N", help=f"{help}; 0..2**32-1"
    )


def add_resolution_argument(parser: argparse.ArgumentParser, *, help: str) -> None:
    parser.add_argument(
        "--resolution",
        type=int_in("--resolution", 8, MAX_RESOLUTION, multiple_of=8),
        default=None,
        metavar="PX",
        help=f"{help}; a multiple of 8 up to {MAX_RESOLUTION}",
    )


def add_samples_argument(
    parser: argparse.ArgumentParser, *, default: int, help: str, flag: str = "--samples", low: int = 1
) -> None:
    parser.add_argument(flag, type=int_in(flag, low, MAX_COUNT), default=default, metavar="N", help=help)


def add_samples_per_call_argument(parser: argparse.ArgumentParser, *, default: int | None, help: str) -> None:
    """``--samples-per-call``: how many samples one pipeline call generates (not ``bench``'s and ``macs``'
    ``--batch``, the images per prompt of one call)."""
    parser.add_argument(
        "--samples-per-call",
        type=int_in("--samples-per-call", 1, MAX_SAMPLES_PER_CALL),
        default=default,
        metavar="B",
        help=f"{help}; 1..{MAX_SAMPLES_PER_CALL}",
    )


def add_budget_argument(parser: argparse.ArgumentParser, *, default: float | None, help: str) -> None:
    parser.add_argument(
        "--budget", type=fraction("--budget"), default=default, required=default is None, help=help
    )


def add_trials_argument(parser: argparse.ArgumentParser, *, default: int, help: str) -> None:
    parser.add_argument(
        "--trials", type=int_in("--trials", 1, MAX_COUNT), default=default, metavar="N", help=help
    )


def add_overwrite_argument(parser: argparse.ArgumentParser, *, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} already at --out")


def _writable_folder(folder: Path, flag: str, given: Path) -> None:
    """Refuse a path whose nearest existing ancestor is not a folder this process can create files in."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():  # a dangling link: creating below it would fail
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise HgcTuneError(
            f"`{flag}` must be a path below a folder, but got {flag}={str(given)!r}: {str(ancestor)!r} is "
            "not a folder."
        )
    # os.access says yes to root for almost everything (and /proc, read-only mounts): really try.
    try:
        fd, probe = tempfile.mkstemp(prefix=".hgc-tune-write-check-", dir=ancestor)
    except OSError as e:
        raise HgcTuneError(
            f"`{flag}` must be a path hgc-tune can write, but got {flag}={str(given)!r}: cannot create files "
            f"in {str(ancestor)!r} ({e.strerror or e})."
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_output(
    path: str | os.PathLike[str],
    *,
    flag: str = "--out",
    kind: str = "file",
    overwrite: bool | None = None,
    replaces: Iterable[str] = (),
    what: str = "",
) -> Path:
    """Check an output path before any work: fail fast rather than after minutes of compute.

    Args:
        path: The path the command will write.
        flag: The option that named it (for the message).
        kind: ``"file"`` or ``"folder"``.
        overwrite: Whether ``--overwrite`` was given; ``None``: the command always replaces its output (a
            resumable run folder), so only the kind and writability are checked.
        replaces: For a folder, the files in it whose presence means "a previous output is there" (e.g.
            ``profile.json``); for a file, sibling file names written beside it (e.g. the Pareto file).
        what: What the output is, for the message ("a profile", "a report").

    Returns:
        The path.

    Raises:
        HgcTuneError: A parent that is not a folder or cannot be written, a folder where a file is expected
            or the reverse, or an existing output without ``--overwrite``.
    """
    out = Path(path)
    if str(path) == "":
        raise HgcTuneError(f"`{flag}` must be a path, but got {flag}=''.")
    if kind == "file":
        if out.is_dir():
            raise HgcTuneError(f"`{flag}` must be a file, but got {flag}={str(out)!r}, which is a folder.")
        siblings = [out.with_name(n) for n in replaces]
        for p in siblings:
            if p.is_dir():
                raise HgcTuneError(f"{str(p)!r} (written beside {flag}) is a folder; move it away.")
        existing = [p for p in (out, *siblings) if p.exists() or p.is_symlink()]
        _writable_folder(out.parent, flag, out)
    elif kind == "folder":
        if out.exists() and not out.is_dir():
            raise HgcTuneError(f"`{flag}` must be a folder, but got {flag}={str(out)!r}, which is a file.")
        existing = [out / n for n in replaces if (out / n).exists()]
        _writable_folder(out, flag, out)
    else:
        raise ValueError(f"kind must be 'file' or 'folder', but got kind={kind!r}")
    if overwrite is False and existing:
        held = f" ({what})" if what else ""
        raise HgcTuneError(
            f"{str(existing[0])!r}{held} already exists; pass --overwrite to replace it, or choose another "
            f"{flag}."
        )
    return out
