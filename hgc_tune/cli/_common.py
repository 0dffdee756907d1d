"""Arguments and output helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_model_arguments", "print_json", "load_pipeline_from_args"]


def add_model_arguments(parser: argparse.ArgumentParser, *, with_condition: bool = True) -> None:
    """``--model``, ``--controlnet``, ``--scheduler``, ``--dtype``, ``--device`` (and ``--condition``)."""
    parser.add_argument(
        "--model",
        default="tiny",
        help="preset (tiny, sd15, shapes), local diffusers pipeline directory, or hub id (default: tiny)",
    )
    parser.add_argument("--controlnet", default=None, help="ControlNet directory or hub id for a base model")
    if with_condition:
        parser.add_argument(
            "--condition", default=None, help="condition type (shapes preset: seg, canny, hed, depth)"
        )
    parser.add_argument("--scheduler", default="unipc", help="unipc (default), ddim, euler, dpm, pndm")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def load_pipeline_from_args(args: argparse.Namespace):
    """Load the pipeline the model arguments name; warn on stderr when its weights are random."""
    from hgc_tune.models import PRESETS, load_pipeline

    if args.model in PRESETS and PRESETS[args.model].random_weights:
        print(
            f"note: preset {args.model!r} has random weights: its images are noise (fine for MACs and timing).",
            file=sys.stderr,
        )
    return load_pipeline(
        args.model,
        controlnet=args.controlnet,
        condition=getattr(args, "condition", None),
        scheduler=args.scheduler,
        dtype=args.dtype,
        device=args.device,
    )


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
