"""Generate one image, with or without a caching policy.

Example:
    hgc-tune generate --model shapes --condition seg --policy policies/shapes.json \\
        --prompt "a photo of a red circle" --condition-image seg.png --out out.png --json
"""

from __future__ import annotations

import argparse
import sys
import time

from hgc_tune.cli._common import add_model_arguments, add_policy_argument, print_json

HELP = "generate an image with (or without) a caching policy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_policy_argument(parser)
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--condition-image", required=True, help="path of the condition image (PNG/JPEG)")
    parser.add_argument("--out", required=True, help="where to write the generated image (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: the policy's, or 20)"
    )
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument(
        "--resolution", type=int, default=None, help="image size in pixels (default: preset's)"
    )
    parser.add_argument("--json", action="store_true", help="print MACs and time as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from PIL import Image, UnidentifiedImageError

    from hgc_tune.cli._common import load_pipeline_from_args, resolve_policy
    from hgc_tune.errors import HgcTuneError
    from hgc_tune.executor import apply_policy
    from hgc_tune.models import PRESETS

    try:
        condition = Image.open(args.condition_image).convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError) as e:
        raise HgcTuneError(f"cannot read --condition-image {args.condition_image!r}: {e}") from e
    pipe = load_pipeline_from_args(args)
    policy = resolve_policy(
        args.policy, pipe, num_steps=args.steps, condition_type=args.condition, model=args.model
    )
    steps = args.steps or (policy.num_steps if policy else 20)
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
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
