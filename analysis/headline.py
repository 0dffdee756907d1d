"""The headline table: a tuned policy and every peer preset, measured the same way on the test split.

For each condition type: the shapes benchmark's test split (never used to choose a policy), ``--samples``
scenes, each generated at full compute and with every policy from the same seed; per policy the paper-MAC
reduction, the mean task-metric loss, its one-sided upper confidence bound (paired delta-method Student t,
``hgc_tune.fidelity.paired_loss_bound``) and whether that bound is within the budget. Writes
``<out>.md`` (a markdown table) and ``<out>.json`` (every number, per-sample values included).

The tuned policy of a condition type comes from ``--policies`` (a policy file with one policy per condition
type, e.g. ``runs/demo/shapes-policies.json`` written by ``hgc-tune demo``, or ``policies/shapes.json``); a
condition type without one is measured with the peers only.

Usage:
    python analysis/headline.py --policies runs/demo/shapes-policies.json --samples 64 --out analysis/headline
    python analysis/headline.py --model tiny --conditions seg --metric ssim --steps 5 --samples 4 \\
        --policies none --out /tmp/headline

Condition types can be measured in separate processes (one core each) and their JSON files merged into one
table: ``python analysis/headline.py --merge A.json B.json --out analysis/headline``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def measure_condition(
    pipe: Any,
    condition: str,
    *,
    model: str,
    tuned: Any | None,
    samples: int,
    steps: int,
    budget: float,
    confidence: float,
    metric: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The rows of one condition type: the tuned policy (if any) and every default peer."""
    from tqdm.auto import tqdm

    from hgc_tune.data import open_dataset
    from hgc_tune.fidelity._evaluate_policy import compare_policies
    from hgc_tune.macs import count_pipeline_macs
    from hgc_tune.models._blocks import cacheable_module_keys
    from hgc_tune.models._tasks import native_size
    from hgc_tune.policy import peer_policy, target_for_pipeline
    from hgc_tune.search._space import default_peer_names

    size = native_size(pipe)
    target = target_for_pipeline(pipe, num_steps=steps, condition_type=condition, model=model)
    keys = cacheable_module_keys(pipe)
    policies = {"tuned": tuned} if tuned is not None else {}
    for name in default_peer_names(steps):
        policies[name] = peer_policy(name, target, keys)
    data = open_dataset("shapes", condition_type=condition, split="test", limit=samples, size=min(size, 256))
    table = count_pipeline_macs(pipe, height=size, width=size, model_name=model)
    bar = tqdm(total=len(data) * (1 + len(policies)), unit="image", desc=condition, disable=not progress)
    try:
        rows = compare_policies(
            pipe,
            policies,
            data,
            num_steps=steps,
            metric=metric,
            condition_type=condition,
            budget=budget,
            confidence=confidence,
            mac_table=table,
            on_output=lambda name: bar.update(1),
        )
    finally:
        bar.close()
    return {"condition_type": condition, "split": "test", "samples": len(data), "rows": rows}


def markdown(results: list[dict[str, Any]], *, budget: float, confidence: float) -> str:
    """The headline table in markdown."""
    level = f"{100 * confidence:g}% upper bound" if confidence > 0 else "upper bound (point)"
    lines = [
        "| condition | metric | policy | paper-MAC reduction | mean loss | "
        f"{level} | within {100 * budget:g}% |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for result in results:
        for row in result["rows"]:
            reduction = row["macs"]["paper"]["reduction"] if row["macs"] else None
            upper = row["loss_upper"]
            lines.append(
                f"| {result['condition_type']} | {row['metric']} | {row['name']} | "
                f"{'-' if reduction is None else f'{100 * reduction:.1f}%'} | {100 * row['loss']:.2f}% | "
                f"{'unbounded' if upper is None else f'{100 * upper:.2f}%'} | "
                f"{'yes' if row['within'] else 'no'} |"
            )
    samples = sorted({r["samples"] for r in results})
    lines.append("")
    lines.append(
        f"Test split of the shapes benchmark, {', '.join(map(str, samples))} samples per condition type, "
        "each generated at full compute and with every policy from the same seed; loss = relative "
        "degradation of the task metric against full compute; bound: paired one-sided delta-method t."
    )
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    from hgc_tune._atomic import atomic_write_text

    atomic_write_text(path, text)  # one atomic writer: mode 0644, no partial file on interruption


def _merge(paths: list[str], out: Path) -> int:
    """One table from the JSON files of runs over different condition types (in the order given)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    shared = ("model", "budget", "confidence", "steps")
    for key in shared:
        values = {json.dumps(run[key]) for run in runs}
        if len(values) != 1:
            print(f"headline: cannot merge runs with different {key}: {sorted(values)}", file=sys.stderr)
            return 2
    data = {key: runs[0][key] for key in shared}
    data["policies"] = sorted({run["policies"] for run in runs})
    data["results"] = [result for run in runs for result in run["results"]]
    table = markdown(data["results"], budget=data["budget"], confidence=data["confidence"])
    _write(out.with_suffix(".md"), table)
    _write(out.with_suffix(".json"), json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="shapes", help="model preset (default: shapes)")
    parser.add_argument("--conditions", default="seg,canny,hed,depth", help="comma-separated condition types")
    parser.add_argument("--policies", help="policy file with the tuned policies, or `none` (peers only)")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="merge the JSON files of earlier runs (same budget, confidence and steps) into one table",
    )
    parser.add_argument("--samples", type=int, default=64, help="test samples per condition (default: 64)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    parser.add_argument("--budget", type=float, default=0.015, help="loss budget (default: 0.015)")
    parser.add_argument("--confidence", type=float, default=0.95, help="bound confidence (default: 0.95)")
    parser.add_argument("--metric", default=None, help="metric (default: each condition type's task metric)")
    parser.add_argument("--out", required=True, help="output stem: writes OUT.md and OUT.json")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from hgc_tune.cli._common import hide_loading_bars
    from hgc_tune.errors import HgcTuneError
    from hgc_tune.models import load_pipeline
    from hgc_tune.policy import load_policy

    hide_loading_bars()

    if args.merge:
        return _merge(args.merge, Path(args.out))
    if args.policies is None:
        print("headline: --policies is required (or --merge).", file=sys.stderr)
        return 2
    if args.samples < 2:
        print("headline: --samples must be at least 2 (a bound needs two samples).", file=sys.stderr)
        return 2
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    policy_file = None if args.policies.lower() == "none" else load_policy(args.policies)
    results = []
    try:
        for condition in conditions:
            tuned = None
            if policy_file is not None and condition in policy_file.condition_types:
                tuned = policy_file.select(condition)
            pipe = load_pipeline(args.model, condition=condition)
            results.append(
                measure_condition(
                    pipe,
                    condition,
                    model=args.model,
                    tuned=tuned,
                    samples=args.samples,
                    steps=args.steps,
                    budget=args.budget,
                    confidence=args.confidence,
                    metric=args.metric,
                    progress=args.progress,
                )
            )
    except HgcTuneError as e:
        print(f"headline: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    table = markdown(results, budget=args.budget, confidence=args.confidence)
    data = {
        "model": args.model,
        "policies": args.policies,
        "budget": args.budget,
        "confidence": args.confidence,
        "steps": args.steps,
        "results": results,
    }
    _write(out.with_suffix(".md"), table)
    _write(out.with_suffix(".json"), json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
