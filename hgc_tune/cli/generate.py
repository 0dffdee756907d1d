"""Generate one image, with or without a caching policy.

Example:
    hgc-tune generate --model shapes --condition canny --policy policies/shapes.json \\
        --prompt "a photo of a red circle" --condition-image canny.png --out out.png --json
"""

from __future__ import annotations

import argparse
import sys
import time

from hgc_tune.cli._checks import (
    add_overwrite_argument,
    add_resolution_argument,
    add_seed_argument,
    add_steps_argument,
    check_output,
)
from hgc_tune.cli._common import add_model_arguments, add_policy_argument, print_json

HELP = "generate an image with (or without) a caching policy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_policy_argument(parser)
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--condition-image", required=True, help="path of the condition image (PNG/JPEG)")
    parser.add_argument("--out", required=True, help="where to write the generated image (PNG)")
    add_overwrite_argument(parser, what="an image")
    add_seed_argument(parser)
    add_steps_argument(parser, default=None, help="denoising steps (default: the policy's, or 20)")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    add_resolution_argument(parser, help="image size in pixels (default: the preset's)")
    parser.add_argument("--json", action="store_true", help="print MACs and time as JSON")


def run(args: argparse.Namespace) -> int:
    out = check_output(args.out, overwrite=args.overwrite, what="an image")

    import torch
    from PIL import Image, UnidentifiedImageError

    from hgc_tune._atomic import atomic_write
    from hgc_tune.cli._common import load_pipeline_from_args, resolve_policy
    from hgc_tune.errors import HgcTuneError
    from hgc_tune.executor import apply_policy
    from hgc_tune.models._presets import PRESETS

    try:
        condition = Image.open(args.condition_image).convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError) as e:
        raise HgcTuneError(f"cannot read --condition-image {args.condition_image!r}: {e}") from e
    pipe = load_pipeline_from_args(args)
    policy = resolve_policy(
        args.policy, pipe, num_steps=args.steps, condition_type=args.condition, model=args.model
    )
    steps = policy.num_steps if policy is not None else (args.steps or 20)
    size = args.resolution or (PRESETS[args.model].resolution if args.model in PRESETS else condition.height)
    condition = condition.resize((size, size))
    handle = apply_policy(pipe, policy) if policy is not None else None
    try:
        start = time.perf_counter()
        image = pipe(
            args.prompt,
            image=condition,
            negative_prompt=args.negative_prompt,
            num_inference_steps=steps,
            guidance_scale=args.guidance_scale,
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(args.seed),
        ).images[0]
        seconds = time.perf_counter() - start
    finally:
        if handle is not None:
            handle.remove()
    atomic_write(out, lambda p: image.save(p, format="PNG"))
    result = {"out": str(out), "seconds": round(seconds, 4), "steps": steps, "policy": args.policy}
    if args.json:
        from hgc_tune.macs import count_pipeline_macs
        from hgc_tune.policy import full_compute_policy, policy_macs, target_for_pipeline

        table = count_pipeline_macs(pipe, height=size, width=size, model_name=args.model)
        cfg = args.guidance_scale > 1
        measured = policy or full_compute_policy(target_for_pipeline(pipe, num_steps=steps))
        result["macs"] = {
            c: policy_macs(measured, table, cfg=cfg, convention=c) for c in ("paper", "complete")
        }
        print_json(result)
    else:
        print(f"wrote {out} ({steps} steps, {seconds:.2f} s)", file=sys.stderr)
    return 0
