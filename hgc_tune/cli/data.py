"""Make and check datasets.

hgc-tune data shapes --out DIR [--n 64] [--seed 0] [--size 64] [--split calibration]
                     [--conditions seg,canny,hed,depth] [--overwrite] [--json]
    write N scenes of the synthetic shapes benchmark as a dataset folder (one row per scene per
    condition type). Splits are disjoint seed ranges: calibration [0, 100000), heldout
    [100000, 200000), train [1000000, 2**31); --seed is the offset within the split.
hgc-tune data check DIR [--strict] [--condition C] [--json]
    check every row of DIR/metadata.jsonl and count the bad rows per reason (exit 2 with --strict
    at the first bad row).
hgc-tune data preview --out FILE.png [--n 6] [--seed 0] [--size 64] [--split calibration] [--overwrite]
    save a grid of scenes: picture | seg | canny | hed | depth.
"""

from __future__ import annotations

import argparse
import sys

from hgc_tune.cli._checks import MAX_COUNT, add_overwrite_argument, add_seed_argument, check_output, int_in

HELP = "make the synthetic shapes benchmark, check a dataset folder, preview scenes"

_CONDITIONS = "seg,canny,hed,depth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    shapes = sub.add_parser("shapes", help="write the shapes benchmark as a dataset folder")
    shapes.add_argument("--out", required=True, help="target folder (must not exist, or be empty)")
    shapes.add_argument(
        "--n", type=int_in("--n", 1, MAX_COUNT), default=64, help="number of scenes (default: 64)"
    )
    add_seed_argument(shapes, help="offset within the split's seed range (default: 0)")
    shapes.add_argument(
        "--size",
        type=int_in("--size", 32, 256),
        default=64,
        help="image side in pixels, 32..256 (default: 64)",
    )
    shapes.add_argument(
        "--split",
        default="calibration",
        choices=["calibration", "validation", "test", "heldout", "train"],
        help="(default: calibration)",
    )
    shapes.add_argument(
        "--conditions", default=_CONDITIONS, help=f"comma-separated condition types (default: {_CONDITIONS})"
    )
    shapes.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset folder at --out"
    )
    shapes.add_argument("--json", action="store_true", help="print a machine-readable summary")

    check = sub.add_parser("check", help="check a dataset folder and count bad rows per reason")
    check.add_argument("folder", metavar="DIR", help="dataset folder with metadata.jsonl")
    check.add_argument("--strict", action="store_true", help="fail (exit 2) at the first bad row")
    check.add_argument("--condition", default=None, help="check only rows of this condition type")
    check.add_argument("--json", action="store_true", help="print a machine-readable summary")

    preview = sub.add_parser("preview", help="save a PNG grid of shapes scenes and their conditions")
    preview.add_argument("--out", required=True, help="PNG file to write")
    add_overwrite_argument(preview, what="a file")
    preview.add_argument(
        "--n", type=int_in("--n", 1, 1000), default=6, help="number of scenes (rows) (default: 6)"
    )
    add_seed_argument(preview, help="offset within the split (default: 0)")
    preview.add_argument(
        "--size",
        type=int_in("--size", 32, 256),
        default=64,
        help="image side in pixels, 32..256 (default: 64)",
    )
    preview.add_argument(
        "--scale", type=int_in("--scale", 1, 16), default=3, help="nearest-neighbour upscaling (default: 3)"
    )
    preview.add_argument(
        "--split",
        default="calibration",
        choices=["calibration", "validation", "test", "heldout", "train"],
        help="(default: calibration)",
    )


def run(args: argparse.Namespace) -> int:
    if args.data_command == "shapes":
        return _run_shapes(args)
    if args.data_command == "check":
        return _run_check(args)
    return _run_preview(args)


def _run_shapes(args: argparse.Namespace) -> int:
    # Whether an existing folder may be replaced is the writer's rule (only a dataset, only with --overwrite).
    check_output(args.out, kind="folder")

    from hgc_tune.cli._common import print_json
    from hgc_tune.data import write_shapes_dataset

    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    info = write_shapes_dataset(
        args.out,
        n=args.n,
        seed=args.seed,
        size=args.size,
        split=args.split,
        conditions=conditions,
        overwrite=args.overwrite,
        progress=not args.json,
    )
    if args.json:
        print_json(info.to_dict())
        return 0
    last = info.first_scene_seed + info.n - 1
    print(f"wrote {info.path}")
    print(
        f"  {info.n} scenes ({info.split} split, scene seeds {info.first_scene_seed}..{last}), "
        f"{info.size}x{info.size} px"
    )
    print(f"  {info.rows} rows: {', '.join(info.conditions)} ({info.n} each)")
    print("  objects: " + ", ".join(f"{name} {count}" for name, count in info.class_counts.items()))
    print("  backgrounds: " + ", ".join(f"{name} {count}" for name, count in info.background_counts.items()))
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from collections import Counter

    from hgc_tune.cli._common import print_json
    from hgc_tune.data import Dataset
    from hgc_tune.data._dataset import SKIP_REASONS

    dataset = Dataset.open(args.folder, condition_type=args.condition, strict=args.strict)
    per_condition = dict(Counter(s.condition_type for s in dataset))
    with_image = sum(s.image_path is not None for s in dataset)
    skipped = dict(sorted(dataset.skipped.items()))
    if args.json:
        print_json(
            {
                "folder": str(dataset.root),
                "samples": len(dataset),
                "per_condition": per_condition,
                "with_ground_truth": with_image,
                "skipped": skipped,
                "skipped_total": sum(skipped.values()),
                "content_hash": dataset.content_hash(),
            }
        )
        return 0
    print(f"{dataset.root}: {len(dataset)} samples")
    for name, count in per_condition.items():
        print(f"  {name}: {count}")
    print(f"  with ground truth: {with_image}")
    if skipped:
        print(f"skipped {sum(skipped.values())} bad rows:", file=sys.stderr)
        for reason, count in skipped.items():
            print(f"  {reason}: {count} ({SKIP_REASONS.get(reason, '')})", file=sys.stderr)
        print("run with --strict to stop at the first bad row and see its line.", file=sys.stderr)
    else:
        print("no bad rows")
    return 0


def _run_preview(args: argparse.Namespace) -> int:
    out = check_output(args.out, overwrite=args.overwrite, what="a file")

    from hgc_tune._atomic import atomic_write
    from hgc_tune.data._benchmark import split_seeds
    from hgc_tune.data._preview import shapes_preview

    seeds = split_seeds(args.split, args.n, args.seed)
    picture = shapes_preview(seeds, size=args.size, scale=args.scale)
    atomic_write(out, lambda p: picture.save(p, format="PNG"))
    print(f"wrote {out} ({len(seeds)} scenes: image | seg | canny | hed | depth)")
    return 0
