"""Write a report of a profile (and a policy, and a search's trade-off): PNG figures and a self-contained
index.html that opens from disk.

Figures: block similarity of the U-Net and the ControlNet, cross-attention drift, ControlNet residual
change; with --policy, the policy grid over the similarity heatmap, MACs per step and the policy's images;
with --pareto, MAC reduction vs fidelity loss of every trial with the peers and the chosen policy.

Example:
    hgc-tune report --profile runs/tiny-seg --policy policies/tiny-seg.json \\
        --pareto policies/tiny-seg.pareto.json --samples 4 --out reports/tiny-seg
"""

from __future__ import annotations

import argparse
import sys

from hgc_tune.cli._checks import add_overwrite_argument, add_samples_argument, check_output, device
from hgc_tune.cli._common import (
    add_clip_argument,
    add_controlnet_argument,
    controlnet_ref,
    hide_loading_bars,
    load_clip_from_args,
    print_json,
    prompt_metric_from_args,
    resolve_policy,
)

HELP = "write figures (similarity, attention drift, policy grid, trade-off, samples) and an index.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", required=True, help="profile folder (from `hgc-tune profile`)")
    parser.add_argument(
        "--policy",
        default=None,
        help="policy JSON file (its policy for the profile's condition type), 'peer:NAME' for a built-in "
        "peer schedule (e.g. peer:deepcache-n3-b0), or nothing for a profile-only report",
    )
    parser.add_argument("--pareto", default=None, help="the search's <policy>.pareto.json (trade-off figure)")
    add_samples_argument(
        parser, low=0, default=4, help="profiled samples to show in the sample grid (default 4; 0: none)"
    )
    parser.add_argument(
        "--out", required=True, help="report folder: a new one, or a report's, which is replaced as a whole"
    )
    add_overwrite_argument(parser, what="a report")
    parser.add_argument(
        "--model",
        default=None,
        help="model to generate the policy's images with (default: the profile's model)",
    )
    add_controlnet_argument(parser, "ControlNet for a base model that holds none")
    parser.add_argument(
        "--device",
        type=device("--device"),
        default="cpu",
        help="torch device for the policy's images (default: cpu)",
    )
    add_clip_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the files and the summary as JSON")


def run(args: argparse.Namespace) -> int:
    # A report's page and summary (hgc_tune.report._build.INDEX_FILE, SUMMARY_FILE): importing hgc_tune.report
    # imports matplotlib, and this check must answer before that.
    check_output(
        args.out,
        kind="folder",
        overwrite=args.overwrite,
        replaces=("index.html", "report.json"),
        what="a report",
    )

    from hgc_tune.profile import Profile
    from hgc_tune.profile._prompt import recorded_prompt_metric
    from hgc_tune.report import build_report
    from hgc_tune.report._samples import pipeline_for_profile

    hide_loading_bars()

    profile = Profile.load(args.profile)
    recorded = recorded_prompt_metric(profile) or {}
    if args.clip is None and recorded.get("metric") == "clip":
        args.clip = recorded.get("model")  # the CLIP model the profile was scored with
    prompt_metric = prompt_metric_from_args(args, args.model or profile.model_name, load_clip_from_args(args))
    policy, pipe = args.policy, None
    if policy is not None and (policy.startswith("peer:") or policy in ("full", "none")):
        # A built-in schedule is made for a pipeline: load the profile's, and reuse it for the images.
        pipe = pipeline_for_profile(
            profile, model=args.model, controlnet=controlnet_ref(args.controlnet), device=args.device
        )
        policy = resolve_policy(
            policy,
            pipe,
            num_steps=profile.num_steps,
            condition_type=profile.condition_type or None,
            model=args.model or profile.model_name,
        )
    result = build_report(
        args.profile,
        args.out,
        policy=policy,
        pareto=args.pareto,
        samples=args.samples,
        pipe=pipe,
        model=args.model,
        controlnet=controlnet_ref(args.controlnet),
        device=args.device,
        prompt_metric=prompt_metric,
    )
    if args.json:
        print_json(result.to_json())
        return 0
    for path in result.files:
        print(path)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"open {result.index} in a browser", file=sys.stderr)
    return 0
