"""Generate one image, with or without a caching policy: text2img, or img2img / inpainting with
``--init-image`` (and ``--mask``).

Example:
    hgc-tune generate --model shapes --condition canny --policy policies/shapes.json \\
        --prompt "a photo of a red circle" --condition-image canny.png --out out.png --json
    hgc-tune generate --model tiny --prompt "a red square" --condition-image seg.png \\
        --init-image photo.png --mask mask.png --strength 0.7 --steps 20 --out out.png
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from hgc_tune.cli._checks import (
    add_overwrite_argument,
    add_resolution_argument,
    add_seed_argument,
    add_steps_argument,
    check_output,
    strength,
)
from hgc_tune.cli._common import (
    add_guidance_argument,
    add_model_arguments,
    add_policy_argument,
    condition_input,
    controlnet_count,
    guidance_scale_from_args,
    load_pipeline_from_args,
    print_json,
    read_policy_argument,
    resolve_task_policy,
)
from hgc_tune.cli._tasks import task_strength
from hgc_tune.errors import HgcTuneError

if TYPE_CHECKING:
    import PIL.Image

HELP = "generate an image with (or without) a caching policy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_policy_argument(parser)
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument(
        "--condition-image",
        required=True,
        action="append",
        help="path of the condition image (PNG/JPEG); several ControlNets (--condition seg,depth): give it "
        "once per ControlNet, in their order",
    )
    parser.add_argument(
        "--init-image",
        default=None,
        help="img2img: path of the image to start from (with --mask: inpainting); runs "
        "StableDiffusionControlNetImg2ImgPipeline / StableDiffusionControlNetInpaintPipeline",
    )
    parser.add_argument(
        "--mask",
        default=None,
        help="inpainting: path of the mask (white: repainted, black: kept); needs --init-image",
    )
    parser.add_argument(
        "--strength",
        type=strength("--strength"),
        default=None,
        metavar="S",
        help="img2img/inpainting denoising strength in (0, 1] (default 0.8 img2img, 1.0 inpainting); "
        "--steps N at strength S runs min(int(N*S), N) steps, and a policy counts only the steps run",
    )
    parser.add_argument("--out", required=True, help="where to write the generated image (PNG)")
    add_overwrite_argument(parser, what="an image")
    add_seed_argument(parser)
    add_steps_argument(
        parser,
        default=None,
        help="num_inference_steps (default: the policy's steps, or 20; img2img/inpainting: the number "
        "that runs the policy's steps at --strength)",
    )
    add_guidance_argument(parser)
    add_resolution_argument(parser, help="image size in pixels (default: the preset's)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print MACs and time as JSON; with --policy also the call's summary (per module computed/reused "
        "counts, guidance steps, MACs counted while it ran; counting adds Python time to `seconds`)",
    )


def _task(args: argparse.Namespace) -> str:
    if args.mask is not None and args.init_image is None:
        raise HgcTuneError(
            f"`--mask` needs `--init-image` (inpainting), but got --mask={args.mask!r} without it."
        )
    if args.strength is not None and args.init_image is None:
        raise HgcTuneError(
            "`--strength` needs `--init-image` (img2img, inpainting), but got "
            f"--strength={args.strength:g} without it."
        )
    return "inpaint" if args.mask is not None else "img2img" if args.init_image is not None else "text2img"


def _read_inputs(
    args: argparse.Namespace,
) -> tuple[list[PIL.Image.Image], PIL.Image.Image | None, PIL.Image.Image | None]:
    """The condition images (one per ControlNet), the init image and the mask, read through the one image
    reader before anything heavy is imported: a FIFO, a truncated file or a decompression bomb is refused at
    once."""
    from hgc_tune.data._images import read_image

    expected = controlnet_count(args)
    if len(args.condition_image) != expected:
        names = f"--condition {args.condition!r} names" if args.condition else "the model has"
        raise HgcTuneError(
            f"`--condition-image` must be given once per ControlNet, but {names} {expected} and got "
            f"{len(args.condition_image)}: {args.condition_image}."
        )
    conditions = [read_image(p, what="--condition-image") for p in args.condition_image]
    init = read_image(args.init_image, what="--init-image") if args.init_image is not None else None
    mask = read_image(args.mask, mode="L", what="--mask") if args.mask is not None else None
    return conditions, init, mask


def run(args: argparse.Namespace) -> int:
    out = check_output(args.out, overwrite=args.overwrite, what="an image")
    task = _task(args)
    strength_ = task_strength(args, task)
    conditions, init, mask = _read_inputs(args)
    args.policy_file = read_policy_argument(args.policy)

    import torch
    from PIL import Image

    from hgc_tune._atomic import atomic_write
    from hgc_tune.executor import apply_policy
    from hgc_tune.models._presets import PRESETS
    from hgc_tune.models._tasks import generation_inputs

    pipe = load_pipeline_from_args(args, task=task)
    guidance_scale = guidance_scale_from_args(args, pipe)
    policy, steps, run_steps = resolve_task_policy(args, pipe, task, strength_)
    size = args.resolution or (
        PRESETS[args.model].resolution if args.model in PRESETS else conditions[0].height
    )
    condition = condition_input(pipe, [c.resize((size, size)) for c in conditions])
    if init is not None:
        init = init.resize((size, size), Image.Resampling.BICUBIC)
    if mask is not None:
        mask = mask.resize((size, size), Image.Resampling.NEAREST)
    inputs = generation_inputs(pipe, condition, init_image=init, mask_image=mask, strength=strength_)
    handle = apply_policy(pipe, policy, count_macs=args.json) if policy is not None else None
    try:
        start = time.perf_counter()
        image = pipe(
            args.prompt,
            **inputs,
            negative_prompt=args.negative_prompt,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(args.seed),
        ).images[0]
        seconds = time.perf_counter() - start
    finally:
        if handle is not None:
            handle.remove()
    atomic_write(out, lambda p: image.save(p, format="PNG"))
    result = {
        "out": str(out),
        "seconds": round(seconds, 4),
        "steps": run_steps,
        "guidance_scale": guidance_scale,
        "policy": args.policy,
    }
    if task != "text2img":
        result.update(task=task, num_inference_steps=steps, strength=strength_)
    if args.json:
        from hgc_tune.macs import count_pipeline_macs

        if handle is not None:
            result["summary"] = handle.summary().to_dict()
        from hgc_tune.policy import full_compute_policy, policy_macs, target_for_pipeline

        table = count_pipeline_macs(pipe, height=size, width=size, model_name=args.model)
        cfg = guidance_scale > 1
        measured = policy or full_compute_policy(target_for_pipeline(pipe, num_steps=run_steps))
        result["macs"] = {
            c: policy_macs(measured, table, cfg=cfg, convention=c) for c in ("paper", "complete")
        }
        print_json(result)
    else:
        ran = (
            f"{run_steps} of {steps} steps at strength {strength_:g}"
            if task != "text2img"
            else f"{steps} steps"
        )
        print(f"wrote {out} ({ran} at guidance {guidance_scale:g}, {seconds:.2f} s)", file=sys.stderr)
    return 0
