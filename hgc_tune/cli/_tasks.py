"""``--task`` and ``--strength``, shared by the commands that run a task's pipeline on fixed inputs."""

from __future__ import annotations

import argparse

from hgc_tune.cli._checks import strength
from hgc_tune.errors import HgcTuneError

__all__ = ["TASK_CHOICES", "add_task_arguments", "task_strength"]

# hgc_tune.models._tasks.TASKS, spelled out: importing hgc_tune.models imports torch, and `--help` must not.
TASK_CHOICES = ("text2img", "img2img", "inpaint")


def add_task_arguments(parser: argparse.ArgumentParser, *, task_help: str) -> None:
    """``--task {text2img,img2img,inpaint}`` (default text2img) and ``--strength S`` in (0, 1]."""
    parser.add_argument("--task", default="text2img", choices=list(TASK_CHOICES), help=task_help)
    parser.add_argument(
        "--strength",
        type=strength("--strength"),
        default=None,
        metavar="S",
        help="img2img/inpaint denoising strength in (0, 1] (default 0.8 img2img, 1.0 inpaint)",
    )


def task_strength(args: argparse.Namespace) -> float | None:
    """The strength of ``args.task``: ``None`` for text2img, else ``--strength`` or the task's default.

    Raises:
        HgcTuneError: ``--strength`` given with ``--task text2img``.
    """
    if args.task == "text2img":
        if args.strength is not None:
            raise HgcTuneError(
                "`--strength` needs `--task img2img` or `--task inpaint`, but got "
                f"--strength={args.strength:g} with --task text2img."
            )
        return None
    from hgc_tune.models._tasks import DEFAULT_STRENGTH

    return args.strength or DEFAULT_STRENGTH[args.task]
