"""Measure the fidelity of a caching policy on a dataset: the metric at full compute and with the policy,
the relative loss (of the means) with its one-sided upper confidence bound (paired: each sample's seed runs
at full compute and with the policy), and the policy's MAC reduction.

Each sample is generated twice with its seed: at full compute, and with --policy. --policy takes
  - a policy JSON file (the policy for --condition is picked from it),
  - peer:NAME, a built-in peer schedule made for this pipeline and --steps: deepcache-n3-b0, tgate-g10,
    tgate-g10-cfg, cnwin-k10-drop, …; peer:cnwin-k0-drop is "ControlNet dropped at every step" (the U-Net
    alone; nothing of the ControlNet is computed),
  - none, no policy: with --controlnet-scale 0 this is diffusers' ControlNet multiplied by 0 (the ControlNet
    still runs, so the MAC reduction is 0; the metric equals peer:cnwin-k0-drop's).

Prompt adherence is scored beside the metric, paired the same way: for shapes the background the prompt
names, read back (a proxy); for a checkpoint the CLIP score of --clip (ControlNet++'s protocol; without it
the prompt is unguarded, and a warning says so).

Examples:
    hgc-tune evaluate --model shapes --condition seg --policy policies/shapes-seg.json --samples 16
    hgc-tune evaluate --model runs/sd15 --controlnet runs/cn-seg --condition seg --policy p.json \
        --dataset data/ade20k-val --clip openai/clip-vit-large-patch14
    hgc-tune evaluate --model shapes --condition seg --policy peer:cnwin-k0-drop --steps 20 --samples 16
    hgc-tune evaluate --model tiny --policy none --controlnet-scale 0 --metric ssim --steps 5 --json
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from hgc_tune.cli._checks import (
    DEFAULT_SAMPLES_PER_CALL,
    add_resolution_argument,
    add_samples_argument,
    add_samples_per_call_argument,
    add_seed_argument,
    add_steps_argument,
    confidence,
    finite,
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
    read_policy_argument,
    resolve_task_policy,
)
from hgc_tune.cli._tasks import add_task_arguments, task_strength

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.macs import MacTable
    from hgc_tune.policy import Policy

HELP = "fidelity of a policy on a dataset: metric at full compute and with the policy, loss, MAC reduction"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_model_arguments(parser)
    parser.add_argument(
        "--policy",
        required=True,
        help="policy JSON, peer:NAME (e.g. peer:cnwin-k0-drop), or none (see above)",
    )
    parser.add_argument("--dataset", default="shapes", help="`shapes` or a dataset folder (default: shapes)")
    parser.add_argument(
        "--split", default="test", help="shapes split: calibration, validation or test (default: test)"
    )
    add_samples_argument(parser, default=8, help="number of samples (default: 8)")
    add_samples_per_call_argument(
        parser,
        default=DEFAULT_SAMPLES_PER_CALL,
        help="samples generated per pipeline call, full compute and policy alike (default: "
        f"{DEFAULT_SAMPLES_PER_CALL})",
    )
    add_seed_argument(parser, help="shapes offset / seed of samples without one (default: 0)")
    add_steps_argument(
        parser,
        default=None,
        help="num_inference_steps (default: the policy's, or 20; img2img/inpaint: the number that runs the "
        "policy's steps at --strength)",
    )
    add_task_arguments(
        parser,
        task_help="text2img (default), img2img or inpaint: each sample's ground-truth image is the init "
        "image (its condition image where it has none); inpaint repaints the middle half",
    )
    add_guidance_argument(parser)
    add_resolution_argument(parser, help="image side in pixels (default: native)")
    parser.add_argument("--metric", default=None, help="fidelity metric (default: the condition type's)")
    parser.add_argument(
        "--controlnet-scale",
        type=finite("--controlnet-scale"),
        default=1.0,
        help="ControlNet conditioning scale on the policy side (full compute always uses 1)",
    )
    parser.add_argument(
        "--confidence",
        type=confidence("--confidence"),
        default=0.95,
        help="one-sided confidence of the loss's upper bound (paired over samples; 0 = the point estimate; "
        "default: 0.95)",
    )
    add_clip_argument(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _savings_by_mechanism(
    policy: Policy | None,
    pipe: ControlNetPipeline,
    table: MacTable,
    steps: int,
    condition: str | None,
    guidance_scale: float,
) -> dict[str, dict[str, Any]]:
    """The MAC saving split by mechanism in both conventions (all zero without a policy)."""
    from hgc_tune.policy import full_compute_policy, target_for_pipeline
    from hgc_tune.policy._macs import MAC_CONVENTIONS, mac_savings_by_mechanism

    if policy is None:
        policy = full_compute_policy(target_for_pipeline(pipe, num_steps=steps, condition_type=condition))
    cfg = guidance_scale > 1.0
    return {
        c: mac_savings_by_mechanism(policy, table, cfg=cfg, convention=c).to_json() for c in MAC_CONVENTIONS
    }


def _print_prompt(prompt: dict[str, Any]) -> None:
    """The prompt metric's lines of the table: its means, loss and bound, or that the prompt is unguarded."""
    if not prompt["guarded"]:
        print("prompt adherence: unguarded (no prompt metric for this model; see --clip)")
        return
    source = f", {prompt['model']}" if prompt["model"] else ""
    if "unscored" in prompt:
        print(f"prompt adherence {prompt['metric']}: not scored ({prompt['unscored']})")
        return
    print(f"prompt adherence {prompt['metric']} (proxy{source}; higher is better)")
    _print_figures(prompt, "")


def _print_figures(figures: dict, bound_note: str) -> None:
    """The full-compute and policy means, the loss and (with a confidence) its upper bound."""
    print(f"  full compute  {figures['full']:.4f}")
    print(f"  with policy   {figures['policy']:.4f}")
    print(f"  loss          {_pct(figures['loss'])}")
    if figures["confidence"] > 0:
        upper = figures["loss_upper"]
        shown = "unbounded (one sample)" if upper is None else _pct(upper)
        print(f"  {100 * figures['confidence']:g}% upper bound  {shown}{bound_note}")


def run(args: argparse.Namespace) -> int:
    from hgc_tune.errors import FidelityError, HgcTuneError

    # Checked before torch and the model load: a bad value is refused in a moment.
    strength_ = task_strength(args)
    args.policy_file = read_policy_argument(args.policy)

    from hgc_tune.data import open_dataset
    from hgc_tune.fidelity import evaluate_policy
    from hgc_tune.fidelity._registry import check_metric_fits
    from hgc_tune.macs import count_pipeline_macs

    condition = args.condition
    if args.metric is not None:
        try:
            check_metric_fits(args.metric, condition)
        except FidelityError as e:
            raise HgcTuneError(str(e)) from e
    from hgc_tune.models._tasks import native_size

    clip = load_clip_from_args(args)
    prompt_metric = prompt_metric_from_args(args, args.model, clip)
    pipe = load_pipeline_from_args(args, task=args.task)
    guidance_scale = guidance_scale_from_args(args, pipe)
    policy, steps, run_steps = resolve_task_policy(args, pipe, args.task, strength_)
    native = native_size(pipe)
    resolution = args.resolution or native
    samples = open_dataset(
        args.dataset,
        condition_type=condition,
        split=args.split,
        limit=args.samples,
        seed=args.seed,
        size=resolution,
    )
    if len(samples) == 0:
        raise HgcTuneError(f"dataset {args.dataset!r} has no samples of condition type {condition!r}.")
    table = count_pipeline_macs(pipe, height=resolution, width=resolution, model_name=args.model)
    result = evaluate_policy(
        pipe,
        policy,
        samples,
        num_steps=steps,
        metric=args.metric,
        condition_type=condition,
        guidance_scale=guidance_scale,
        height=resolution,
        width=resolution,
        seed=args.seed,
        controlnet_scale=args.controlnet_scale,
        mac_table=table,
        confidence=args.confidence,
        progress=args.progress and not args.json,
        strength=strength_,
        samples_per_call=args.samples_per_call,
        prompt_metric=prompt_metric,
    )
    result.update(model=args.model, dataset=str(args.dataset), split=args.split, policy_spec=args.policy)
    result["savings_by_mechanism"] = _savings_by_mechanism(
        policy, pipe, table, run_steps, condition, result["guidance_scale"]
    )
    if args.json:
        print_json(result)
        return 0
    direction = "higher" if result["higher_is_better"] else "lower"
    print(
        f"evaluate {args.policy} on {result['samples']} samples ({args.dataset} {args.split}, condition "
        f"{condition}), model {args.model}, "
        + (
            f"{steps} steps"
            if args.task == "text2img"
            else f"{args.task}: {run_steps} of {steps} steps at strength {strength_:g}"
        )
        + f", guidance {guidance_scale:g}, ControlNet scale {args.controlnet_scale:g}"
    )
    print(f"metric {result['metric']} ({result['kind']}, {direction} is better)")
    _print_figures(result, f"  (paired over {result['samples']} samples)")
    picture = result.get("picture") or {}
    if picture:
        print(
            f"picture vs full compute: SSIM {picture['ssim']:.4f}, PSNR {picture['psnr']:.2f} dB "
            f"(mean over {result['samples']} samples)"
        )
    _print_prompt(result["prompt"])
    for convention, m in result["macs"].items():
        print(
            f"MACs ({convention}): {m['full'] / 1e9:.4g}G -> {m['policy'] / 1e9:.4g}G "
            f"(reduction {_pct(m['reduction'])})"
        )
    if policy is not None:
        from hgc_tune.cli.macs import savings_line

        split = savings_line(result["savings_by_mechanism"]["paper"])
        print(f"  where from (paper, each skipped MAC once): {split}")
    if policy is None and args.controlnet_scale == 0:
        print(
            "note: --controlnet-scale 0 still computes the ControlNet (MACs unchanged); peer:cnwin-k0-drop "
            "skips it.",
            file=sys.stderr,
        )
    return 0
