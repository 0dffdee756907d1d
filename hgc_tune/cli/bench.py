"""Time full and policy generation alternately in one run and compare the speedup with the MAC ratio.

Every task (--task text2img, img2img, inpaint at --strength), both pipeline families (SD1.5-shaped presets
and checkpoints, SDXL: --model tiny-sdxl, sdxl) and several ControlNets at once (--condition seg,depth with
a preset, or --controlnet repeated) are timed on the same fixed random images. img2img and inpainting at
strength S run fewer steps than --steps; the MAC ratio counts the steps run.

Example (GPU):
    hgc-tune bench --model sd15 --policy peer:deepcache-n3-b0 --device cuda --dtype fp16 --compile --json
Example (executor overhead on CPU):
    hgc-tune bench --model tiny --policy full-hooked --steps 20 --repeats 7
Example (SDXL inpainting with two ControlNets):
    hgc-tune bench --model tiny-sdxl --condition seg,depth --task inpaint --strength 0.7 \\
        --policy peer:deepcache-n2-b0 --steps 10
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from hgc_tune.cli._checks import MAX_COUNT, add_resolution_argument, add_steps_argument, int_in
from hgc_tune.cli._common import (
    add_guidance_argument,
    add_model_arguments,
    add_policy_argument,
    guidance_scale_from_args,
    load_pipeline_from_args,
    print_json,
    resolve_task_policy,
)
from hgc_tune.cli._tasks import add_task_arguments, task_strength

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

HELP = "time full vs. policy generation; print ms/image, speedup, MAC ratio"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_model_arguments(parser)
    add_policy_argument(parser, required=True)
    add_steps_argument(
        parser,
        default=None,
        help="num_inference_steps (default: the policy's, or 20; img2img/inpaint: the number that runs the "
        "policy's steps at --strength)",
    )
    add_task_arguments(
        parser,
        task_help="text2img (default), img2img or inpaint: the pipeline of that task starts from a random "
        "init image (inpaint repaints the middle half)",
    )
    add_resolution_argument(parser, help="image size (default: the preset's, or the model's native size)")
    parser.add_argument(
        "--batch",
        type=int_in("--batch", 1, 1024),
        default=1,
        help="images per prompt (CFG doubles the denoiser batch)",
    )
    add_guidance_argument(parser)
    parser.add_argument(
        "--repeats",
        type=int_in("--repeats", 1, MAX_COUNT),
        default=5,
        help="timed runs of each side (median reported)",
    )
    parser.add_argument(
        "--warmup", type=int_in("--warmup", 0, MAX_COUNT), default=1, help="untimed runs of each side first"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the hook-free regions (the plain pipeline is compiled whole)",
    )
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    strength = task_strength(args)

    from hgc_tune.bench import time_alternating
    from hgc_tune.bench._inputs import bench_call
    from hgc_tune.cli.macs import savings_line
    from hgc_tune.executor import apply_policy
    from hgc_tune.macs import count_pipeline_macs
    from hgc_tune.models._presets import PRESETS
    from hgc_tune.policy import policy_macs
    from hgc_tune.policy._macs import mac_savings_by_mechanism
    from hgc_tune.runtime import compile_regions

    baseline_pipe = load_pipeline_from_args(args, task=args.task)
    guidance_scale = guidance_scale_from_args(args, baseline_pipe)
    policy, num_inference_steps, steps = resolve_task_policy(args, baseline_pipe, args.task, strength)
    native = int(baseline_pipe.unet.config.sample_size) * int(baseline_pipe.vae_scale_factor)
    size = args.resolution or (PRESETS[args.model].resolution if args.model in PRESETS else native)
    # Two pipelines with identical weights, so the policy is attached once, outside the timed runs (and the
    # compiled regions of the hooked model can differ from the plain one's).
    policy_pipe = load_pipeline_from_args(args, task=args.task)

    def generate(pipe: ControlNetPipeline) -> Callable[[], object]:
        return bench_call(
            pipe,
            size=size,
            num_inference_steps=num_inference_steps,
            strength=strength,
            guidance_scale=guidance_scale,
            batch=args.batch,
            device=args.device,
        )

    handle = apply_policy(policy_pipe, policy) if policy is not None else None
    compiled = []
    if args.compile:
        kwargs = {"mode": args.compile_mode} if args.compile_mode else {}
        compile_regions(baseline_pipe, **kwargs)
        compiled = compile_regions(policy_pipe, **kwargs)
    try:
        result = time_alternating(
            generate(baseline_pipe),
            generate(policy_pipe),
            repeats=args.repeats,
            warmup=args.warmup,
            images_per_run=args.batch,
            device=args.device,
        )
    finally:
        if handle is not None:
            handle.remove()
    table = count_pipeline_macs(baseline_pipe, height=size, width=size, model_name=args.model)
    cfg = guidance_scale > 1
    macs = {}
    if policy is not None:
        macs = {
            c: policy_macs(policy, table, cfg=cfg, batch=args.batch, convention=c)
            for c in ("paper", "complete")
        }
    mac_ratio = macs["paper"]["ratio"] if macs else 1.0
    # Where the MACs the timed policy skips come from (guidance window first; the parts add up).
    savings = {}
    if policy is not None:
        savings = {
            c: mac_savings_by_mechanism(policy, table, cfg=cfg, batch=args.batch, convention=c).to_json()
            for c in ("paper", "complete")
        }
    nets = getattr(baseline_pipe.controlnet, "nets", None)
    out = {
        "model": args.model,
        "pipeline": type(baseline_pipe).__name__,
        "task": args.task,
        "condition": args.condition,
        "controlnets": len(nets) if nets is not None else 1,
        "policy": args.policy,
        "device": args.device,
        "dtype": args.dtype,
        "compile": args.compile,
        "compiled_regions": len(compiled),
        "steps": steps,
        "guidance_scale": guidance_scale,
        "resolution": size,
        **result.to_json(),
        "mac_ratio": mac_ratio,
        "speedup_over_mac_ratio": result.speedup / mac_ratio,
        "macs": macs,
        "savings_by_mechanism": savings,
    }
    if args.task != "text2img":
        out.update(num_inference_steps=num_inference_steps, strength=strength)
    if args.json:
        print_json(out)
    else:
        print(f"machine: {result.machine}")
        print(
            f"pipeline: {out['pipeline']}, {steps} steps"
            + (f" at strength {strength:g}" if strength else "")
            + f", guidance {guidance_scale:g}"
        )
        print(f"full   : {result.baseline_ms:9.1f} ms/image")
        print(f"policy : {result.policy_ms:9.1f} ms/image  ({args.policy})")
        print(
            f"speedup {result.speedup:.3f}x  MAC ratio {mac_ratio:.3f}x  "
            f"speedup/MAC ratio {out['speedup_over_mac_ratio']:.3f}"
        )
        if savings:
            print(f"MACs saved (paper): {savings_line(savings['paper'])}")
    return 0
