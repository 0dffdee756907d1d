"""Arguments and output helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = [
    "add_model_arguments",
    "add_policy_argument",
    "hide_loading_bars",
    "load_pipeline_from_args",
    "print_json",
    "resolve_policy",
]


def add_model_arguments(parser: argparse.ArgumentParser, *, with_condition: bool = True) -> None:
    """``--model``, ``--controlnet``, ``--scheduler``, ``--dtype``, ``--device`` (and ``--condition``)."""
    parser.add_argument(
        "--model",
        default="tiny",
        help="preset (tiny, sd15, shapes, tiny-sdxl, sdxl), local diffusers pipeline directory, or hub id "
        "(default: tiny)",
    )
    parser.add_argument("--controlnet", default=None, help="ControlNet directory or hub id for a base model")
    if with_condition:
        parser.add_argument(
            "--condition", default=None, help="condition type (shapes preset: seg, canny, hed, depth)"
        )
    parser.add_argument("--scheduler", default="unipc", help="unipc (default), ddim, euler, dpm, pndm")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def hide_loading_bars() -> None:
    """Hide diffusers' and transformers' per-component loading bars: the CLI shows its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def load_pipeline_from_args(args: argparse.Namespace):
    """Load the pipeline the model arguments name; warn on stderr when its weights are random.

    ``args.shape_only`` (set by commands that only need shapes, such as MAC counting; absent = ``False``): a
    random-weight preset on the CPU is built with zero weights that take no memory
    (``load_pipeline(..., shape_only=True)``).
    """
    shape_only = bool(getattr(args, "shape_only", False))
    from hgc_tune.models import PRESETS, load_pipeline

    hide_loading_bars()

    random_preset = args.model in PRESETS and PRESETS[args.model].random_weights
    if shape_only and random_preset and args.device == "cpu":
        return load_pipeline(args.model, scheduler=args.scheduler, dtype=args.dtype, shape_only=True)
    if random_preset:
        print(
            f"note: preset {args.model!r} has random weights: its images are noise "
            "(fine for MACs and timing).",
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


def add_policy_argument(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--policy",
        required=required,
        default=None,
        help="policy JSON file, 'peer:NAME' for a built-in peer schedule (e.g. peer:deepcache-n3-b0, "
        "peer:tgate-g10, peer:cnwin-k10-drop), 'full' for the all-compute policy, 'full-hooked' for an "
        "all-compute policy that hooks every cacheable module (measures executor overhead), or 'none'",
    )


def resolve_policy(ref: str | None, pipe, *, num_steps: int | None, condition_type: str | None, model: str):
    """Turn a ``--policy`` value into a :class:`~hgc_tune.policy.Policy` (or ``None`` for no policy).

    A file's policy fixes the number of steps; peers and ``full`` are built for ``num_steps`` (default 20).
    """
    from hgc_tune.models import cacheable_module_keys
    from hgc_tune.policy import full_compute_policy, load_policy, peer_policy, target_for_pipeline

    if ref is None or ref == "none":
        return None
    if ref in ("full", "full-hooked") or ref.startswith("peer:"):
        target = target_for_pipeline(
            pipe, num_steps=num_steps or 20, condition_type=condition_type, model=model
        )
        if ref == "full":
            return full_compute_policy(target)
        if ref == "full-hooked":
            return _every_module_hooked(target, cacheable_module_keys(pipe))
        return peer_policy(ref.removeprefix("peer:"), target, cacheable_module_keys(pipe))
    policy = load_policy(ref).select(condition_type)
    if num_steps is not None and num_steps != policy.num_steps:
        from hgc_tune.errors import StepCountMismatchError

        raise StepCountMismatchError(
            f"policy {ref!r} was made for {policy.num_steps} steps, but --steps {num_steps} was given."
        )
    return policy


def _every_module_hooked(target, module_keys):
    """An all-compute policy whose entries hook every cacheable module (each computes at every step)."""
    from hgc_tune.models import is_attention_key
    from hgc_tune.policy import ControlNetWindow, Policy, ReuseWindow

    every = tuple(range(target.num_steps))
    blocks = {k: every for k in module_keys if k != "controlnet" and not is_attention_key(k)}
    # one-step windows [s, s + 1) reuse nothing: the module computes at every step
    attention = {k: tuple(ReuseWindow(s, s + 1) for s in every) for k in module_keys if is_attention_key(k)}
    return Policy(
        target, blocks=blocks, attention=attention, controlnet=ControlNetWindow(every), name="full-hooked"
    )
