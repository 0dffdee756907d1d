"""Profile a pipeline: full-compute generation with observation hooks.

Records, per denoising step and averaged over the samples, how much every cacheable block of the U-Net
and the ControlNet changes between consecutive steps (cosine similarity, relative L1), how much every
cross-attention map drifts (relative L1, Jensen-Shannon divergence), and how much the ControlNet's
residuals change; plus the per-module MAC table and the full-compute reference outputs. With --clip, the
CLIP model (path or hub id, weights digest) and each reference's CLIP score are recorded, so that the
search scores prompts with the same model. Writes
OUT/profile.json and OUT/profile.safetensors, the input of `hgc-tune search`.

Example:
    hgc-tune profile --model shapes --condition seg --dataset shapes --samples 16 --steps 20 \\
        --out runs/shapes-seg
    hgc-tune profile --model shapes --condition seg --task img2img --strength 0.7 --steps 20 \
        --out runs/shapes-seg-img2img   # runs and records 14 steps
"""

from __future__ import annotations

import argparse
import sys
import time

from hgc_tune.cli._checks import (
    DEFAULT_SAMPLES_PER_CALL,
    add_overwrite_argument,
    add_resolution_argument,
    add_samples_argument,
    add_samples_per_call_argument,
    add_seed_argument,
    add_steps_argument,
    check_output,
)
from hgc_tune.cli._common import (
    add_clip_argument,
    add_guidance_argument,
    add_model_arguments,
    guidance_scale_from_args,
    load_clip_from_args,
    load_pipeline_from_args,
    print_json,
    prompt_metric_from_args,
)
from hgc_tune.cli._progress_file import EventWriter
from hgc_tune.cli._tasks import add_task_arguments, task_strength

HELP = "profile per-step block similarity and cross-attention drift on a dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_model_arguments(parser)
    parser.add_argument(
        "--dataset", default="shapes", help="dataset folder, or `shapes` (the generated benchmark; default)"
    )
    parser.add_argument(
        "--split",
        default="calibration",
        choices=["calibration", "validation", "test", "heldout", "train"],
        help="shapes split (default: calibration)",
    )
    add_samples_argument(parser, default=8, help="number of samples to profile (default: 8)")
    add_steps_argument(
        parser,
        default=20,
        help="num_inference_steps (default: 20; img2img/inpainting at --strength < 1 run fewer, and the "
        "profile counts the steps run)",
    )
    add_task_arguments(
        parser,
        task_help="text2img (default); img2img or inpaint profile StableDiffusionControlNetImg2ImgPipeline / "
        "StableDiffusionControlNetInpaintPipeline with each sample's ground-truth image as the init image "
        "(the condition image where a sample has none) and, for inpaint, the middle half of the image "
        "repainted",
    )
    add_guidance_argument(parser)
    add_clip_argument(parser)
    add_seed_argument(parser, help="base seed: sample i without a seed uses seed + i (default: 0)")
    add_resolution_argument(parser, help="image side in pixels (default: the model's)")
    add_samples_per_call_argument(
        parser,
        default=DEFAULT_SAMPLES_PER_CALL,
        help="samples generated per pipeline call, in sample order (a sample's reference depends on its "
        "batch; the profile records this and searches batch their trials alike; statistics stay per "
        f"sample; default: {DEFAULT_SAMPLES_PER_CALL})",
    )
    parser.add_argument("--out", required=True, help="run folder to write, e.g. runs/NAME")
    add_overwrite_argument(parser, what="a profile")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary")
    # Internal: `hgc-tune demo` reads the progress events appended here (hgc_tune.cli._progress_file).
    parser.add_argument("--status-file", default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    # The profile's two files (META_FILE, TENSOR_FILE), spelled out: importing hgc_tune.profile imports torch,
    # and this check must answer before that.
    out = check_output(
        args.out,
        kind="folder",
        overwrite=args.overwrite,
        replaces=("profile.json", "profile.safetensors"),
        what="a profile",
    )
    # refuses --strength with --task text2img, and a --strength at which --steps runs no step
    task_strength(args)

    from hgc_tune.data import open_dataset
    from hgc_tune.data._open import SHAPES_REF
    from hgc_tune.errors import ProfileError
    from hgc_tune.models._tasks import native_size
    from hgc_tune.profile import profile_pipeline
    from hgc_tune.profile._artifact import META_FILE
    from hgc_tune.profile._prompt import with_prompt_metric

    clip = load_clip_from_args(args)
    prompt_metric = prompt_metric_from_args(args, args.model, clip)
    pipe = load_pipeline_from_args(args, task=args.task)
    guidance_scale = guidance_scale_from_args(args, pipe)
    resolution = args.resolution or native_size(pipe)
    dataset = open_dataset(
        args.dataset,
        condition_type=args.condition,
        split=args.split,
        limit=args.samples,
        # The benchmark renders at most 256 px; the pipeline resizes the condition to the resolution.
        size=min(resolution, 256),
    )
    if len(dataset) == 0:
        raise ProfileError(
            f"dataset {args.dataset!r} has no usable samples"
            + (f" of condition type {args.condition!r}" if args.condition else "")
            + "; check it with `hgc-tune data check`."
        )
    condition_type = args.condition or ",".join(dataset.condition_types)
    label = f"{args.dataset}:{args.split}" if args.dataset == SHAPES_REF else args.dataset
    start = time.perf_counter()
    profile = profile_pipeline(
        pipe,
        dataset,
        num_steps=args.steps,
        guidance_scale=guidance_scale,
        height=resolution,
        width=resolution,
        seed=args.seed,
        progress=not args.no_progress,
        model_name=args.model,
        condition_type=condition_type,
        dataset=label,
        strength=args.strength,
        samples_per_call=args.samples_per_call,
        on_progress=EventWriter(args.status_file, condition_type) if args.status_file else None,
    )
    profile = with_prompt_metric(profile, prompt_metric)
    seconds = time.perf_counter() - start
    folder = profile.save(out)
    summary = {
        "out": str(folder),
        "model": args.model,
        "fingerprint": profile.fingerprint,
        "condition_type": profile.condition_type,
        "samples": profile.num_samples,
        "steps": profile.num_steps,
        "task": profile.task,
        "num_inference_steps": profile.num_inference_steps,
        "strength": profile.strength,
        "samples_per_call": profile.samples_per_call,
        "guidance_scale": profile.guidance_scale,
        "resolution": resolution,
        "blocks": len(profile.block_keys),
        "attentions": len(profile.attention_keys),
        "prompt_metric": profile.meta["prompt_metric"],
        "seconds": round(seconds, 3),
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"wrote {folder / META_FILE} and the tensors beside it: {profile.num_samples} samples x "
            f"{profile.num_steps} steps at guidance {profile.guidance_scale:g}, {summary['blocks']} blocks, "
            f"{summary['attentions']} cross-attentions ({seconds:.1f} s)",
            file=sys.stderr,
        )
    return 0
