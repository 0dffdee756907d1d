"""``--task`` and ``--strength``, shared by the commands that run a task's pipeline on fixed inputs."""

from __future__ import annotations

import argparse

from hgc_tune.cli._checks import check_strength_runs_steps, strength
from hgc_tune.cli._common import is_builtin_policy
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


def task_strength(args: argparse.Namespace, task: str | None = None) -> float | None:
    """The strength of ``task`` (default ``args.task``): ``None`` for text2img, else ``--strength`` or the
    task's default.

    Where ``--steps`` (default 20) fixes the steps, a strength at which they run no denoising step at all is
    refused here, before anything loads; a policy file fixes the steps run itself, so with one and no
    ``--steps`` there is nothing to check.

    Raises:
        HgcTuneError: ``--strength`` given with ``--task text2img``, or a strength that runs no step.
    """
    task = args.task if task is None else task
    if task == "text2img":
        if args.strength is not None:
            raise HgcTuneError(
                "`--strength` needs `--task img2img` or `--task inpaint`, but got "
                f"--strength={args.strength:g} with --task text2img."
            )
        return None
    from hgc_tune.models._tasks import DEFAULT_STRENGTH

    value = args.strength or DEFAULT_STRENGTH[task]
    if getattr(args, "steps", None) is not None or is_builtin_policy(getattr(args, "policy", None)):
        check_strength_runs_steps(getattr(args, "steps", None) or 20, value)
    return value
