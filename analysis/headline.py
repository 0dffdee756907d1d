"""The headline table: a tuned policy and every peer preset, measured the same way on the test split.

For each condition type: the shapes benchmark's test split (never used to choose a policy), ``--samples``
scenes, each generated at full compute and with every policy from the same seed; per policy the paper-MAC
reduction and where it comes from (guidance window first, then ControlNet window, ControlNet blocks, U-Net
blocks and cross-attention reuse, each skipped MAC counted once so the parts add up:
``hgc_tune.policy._macs.mac_savings_by_mechanism``), the mean task-metric loss, its one-sided upper
confidence bound (paired delta-method Student t, ``hgc_tune.fidelity.paired_loss_bound``) and whether that
bound is within the budget. Writes ``<out>.md`` (markdown tables) and ``<out>.json`` (every number,
per-sample values and the full split included).

The tuned policy of a condition type comes from ``--policies`` (a policy file with one policy per condition
type, e.g. ``runs/demo/shapes-policies.json`` written by ``hgc-tune demo``, or ``policies/shapes.json``); a
condition type without one is measured with the peers only. ``--caching-only-policies`` adds the policies of
the same searches run with ``hgc-tune search --no-guidance-window`` (full CFG at every step, so every MAC
they save is saved by caching) as the row ``caching-only``, and a column of its own in the per-condition
table: the figure to compare with the HGC paper's 63 %.

Usage:
    python analysis/headline.py --policies runs/demo/shapes-policies.json --samples 64 --out analysis/headline
    python analysis/headline.py --policies policies/shapes.json \\
        --caching-only-policies policies/shapes-caching-only.json --samples 64 --out analysis/headline
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

# The row of the policy searched without the guidance window.
CACHING_ONLY = "caching-only"


def savings_by_mechanism(policy: Any, table: Any, *, cfg: bool) -> dict[str, dict[str, Any]]:
    """Per MAC convention, what ``policy`` saves split among its mechanisms (the parts add up to the
    reduction; guidance window first)."""
    from hgc_tune.policy._macs import MAC_CONVENTIONS, mac_savings_by_mechanism

    return {
        c: mac_savings_by_mechanism(policy, table, cfg=cfg, convention=c).to_json() for c in MAC_CONVENTIONS
    }


def check_caching_only(policy: Any, condition: str) -> None:
    """Refuse a ``--caching-only-policies`` policy that truncates CFG: its savings would not be caching's."""
    from hgc_tune.errors import HgcTuneError

    window = policy.guidance
    if window is not None and window.cfg_until < policy.num_steps:
        raise HgcTuneError(
            f"--caching-only-policies: the {condition} policy {policy.name!r} runs CFG only for steps < "
            f"{window.cfg_until} of {policy.num_steps}; search it with "
            "`hgc-tune search --no-guidance-window`."
        )


def measure_condition(
    pipe: Any,
    condition: str,
    *,
    model: str,
    tuned: Any | None,
    caching_only: Any | None = None,
    samples: int,
    steps: int,
    budget: float,
    confidence: float,
    metric: str | None = None,
    progress: bool = False,
    guards: dict[str, float] | None = None,
    samples_per_call: int = 8,
) -> dict[str, Any]:
    """The rows of one condition type: the tuned policy (if any), the caching-only one (if any) and every
    default peer, each with its MAC saving split by mechanism (``savings_by_mechanism``), generated at the
    model's recommended guidance, and each bounded under every constraint (the metric at ``budget`` and the
    ``guards``; Bonferroni-shared ``confidence``)."""
    from tqdm.auto import tqdm

    from hgc_tune.data import open_dataset
    from hgc_tune.fidelity._evaluate_policy import compare_policies
    from hgc_tune.macs import count_pipeline_macs
    from hgc_tune.models import pipeline_guidance
    from hgc_tune.models._blocks import cacheable_module_keys
    from hgc_tune.models._tasks import native_size
    from hgc_tune.policy import peer_policy, target_for_pipeline
    from hgc_tune.search._space import default_peer_names

    size = native_size(pipe)
    target = target_for_pipeline(pipe, num_steps=steps, condition_type=condition, model=model)
    keys = cacheable_module_keys(pipe)
    policies = {"tuned": tuned} if tuned is not None else {}
    if caching_only is not None:
        check_caching_only(caching_only, condition)
        policies[CACHING_ONLY] = caching_only
    for name in default_peer_names(steps):
        policies[name] = peer_policy(name, target, keys)
    data = open_dataset("shapes", condition_type=condition, split="test", limit=samples, size=min(size, 256))
    table = count_pipeline_macs(pipe, height=size, width=size, model_name=model)
    guidance = pipeline_guidance(pipe).scale
    bar = tqdm(total=len(data) * (1 + len(policies)), unit="image", desc=condition, disable=not progress)
    try:
        rows = compare_policies(
            pipe,
            policies,
            data,
            num_steps=steps,
            metric=metric,
            condition_type=condition,
            guidance_scale=guidance,
            budget=budget,
            confidence=confidence,
            mac_table=table,
            on_output=lambda name: bar.update(1),
            samples_per_call=samples_per_call,
            guards=guards,
        )
    finally:
        bar.close()
    for row in rows:
        row["savings_by_mechanism"] = savings_by_mechanism(policies[row["name"]], table, cfg=guidance > 1.0)
    return {
        "condition_type": condition,
        "split": "test",
        "samples": len(data),
        "guidance_scale": guidance,
        "rows": rows,
    }


def _split_points(row: dict[str, Any]) -> tuple[float, float] | None:
    """(guidance window, caching) points of a row's paper-MAC reduction; ``None`` without a split."""
    split = (row.get("savings_by_mechanism") or {}).get("paper")
    if split is None:
        return None
    guidance = split["reduction"]["guidance_window"]
    return guidance, split["reduction"]["total"] - guidance


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _loss(value: float | None) -> str:
    return "unbounded" if value is None else f"{100 * value:.2f}%"


def markdown(results: list[dict[str, Any]], *, budget: float, confidence: float) -> str:
    """The headline tables in markdown: every row, then per condition type the tuned policy against the
    caching-only one."""
    guard_names = sorted({g["metric"] for r in results for row in r["rows"] for g in row.get("guards", ())})
    lines = [
        "| condition | metric | policy | paper-MAC reduction | from the guidance window | from caching | "
        "mean loss | upper bound | "
        + "".join(f"{name} loss | {name} bound | " for name in guard_names)
        + "SSIM | PSNR | within every budget |",
        "|---|---|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(guard_names) + "---:|---:|---|",
    ]
    for result in results:
        for row in result["rows"]:
            reduction = row["macs"]["paper"]["reduction"] if row["macs"] else None
            split = _split_points(row)
            guards = {g["metric"]: g for g in row.get("guards", ())}
            cells = []
            for name in guard_names:
                g = guards.get(name)
                cells += ["-", "-"] if g is None else [_loss(g["loss"]), _loss(g["loss_upper"])]
            picture = row.get("picture", {})
            lines.append(
                f"| {result['condition_type']} | {row['metric']} | {row['name']} | {_pct(reduction)} | "
                f"{_pct(split[0] if split else None)} | {_pct(split[1] if split else None)} | "
                f"{_loss(row['loss'])} | {_loss(row['loss_upper'])} | "
                + "".join(f"{c} | " for c in cells)
                + f"{picture.get('ssim', float('nan')):.3f} | {picture.get('psnr', float('nan')):.1f} | "
                f"{'yes' if row['within'] else 'no'} |"
            )
    level = results[0]["rows"][0].get("level", confidence) if results and results[0]["rows"] else confidence
    samples = sorted({r["samples"] for r in results})
    scales = ", ".join(sorted({f"{r.get('guidance_scale', 7.5):g}" for r in results}))
    lines.append("")
    lines.append(
        f"Test split of the shapes benchmark, {', '.join(map(str, samples))} samples per condition type, "
        f"each generated at full compute and with every policy from the same seed, at guidance {scales}; "
        "loss = relative degradation of the task metric against full compute (a guard's: as its metric "
        "defines it; background = drop of the soft background reading, a prompt-adherence proxy, in "
        f"points); bounds: paired one-sided delta-method t, each at {100 * level:g}% so that all hold "
        f"together at {100 * confidence:g}% (Bonferroni); within every budget: every bound within its budget "
        f"({100 * budget:g}% for the task metric). "
        "The reduction is split among the mechanisms with each skipped MAC counted once, guidance window "
        "first (a step past it saves its whole unconditional half there); caching = ControlNet window, "
        "ControlNet blocks, U-Net blocks and cross-attention reuse."
    )
    if results and all(r.get("guidance_scale", 7.5) <= 1.0 for r in results):
        # Without CFG a guidance window has nothing to cut: every saving is caching's.
        lines[-1] += (
            " At guidance 1 there is no classifier-free guidance: `tgate-g10-cfg` runs as `tgate-g10`, and "
            "every policy, the tuned ones included, saves by caching only."
        )
    by_condition = [_tuned_and_caching_only(result) for result in results]
    if any(by_condition):
        lines += [
            "",
            "| condition | tuned | tuned, from caching | "
            "caching-only (searched without the guidance window) |",
            "|---|---:|---:|---:|",
        ]
        for result, rows in zip(results, by_condition):
            if rows:
                lines.append(f"| {result['condition_type']} | " + " | ".join(rows) + " |")
        lines += [
            "",
            "Paper-MAC reductions; a policy's figure is shown with its bound's verdict (within the budget or "
            "not). "
            "The caching-only column is the one to compare with the HGC paper's 63 % on seg, which keeps "
            "full CFG at every step.",
        ]
    return "\n".join(lines) + "\n"


def _tuned_and_caching_only(result: dict[str, Any]) -> list[str]:
    """The per-condition cells: the tuned policy's reduction and its caching part, the caching-only
    policy's reduction (``-`` where absent); no cells when neither policy was measured."""
    rows = {row["name"]: row for row in result["rows"]}
    tuned, caching = rows.get("tuned"), rows.get(CACHING_ONLY)
    if tuned is None and caching is None:
        return []

    def cell(row: dict[str, Any] | None) -> str:
        if row is None or not row["macs"]:
            return "-"
        verdict = "within" if row["within"] else "not within"
        return f"{_pct(row['macs']['paper']['reduction'])} ({verdict})"

    split = None if tuned is None else _split_points(tuned)
    if caching is None and tuned is not None and result.get("guidance_scale", 7.5) <= 1.0:
        # no CFG, so no guidance window to search without: the tuned policy is the caching-only one
        return [cell(tuned), _pct(split[1] if split else None), f"{cell(tuned)}: the tuned one (no CFG)"]
    return [cell(tuned), _pct(split[1] if split else None), cell(caching)]


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
    data["caching_only_policies"] = sorted(
        {run["caching_only_policies"] for run in runs if run.get("caching_only_policies")}
    )
    data["results"] = [result for run in runs for result in run["results"]]
    table = markdown(data["results"], budget=data["budget"], confidence=data["confidence"])
    _write(out.with_suffix(".md"), table)
    _write(out.with_suffix(".json"), json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    print(table)
    return 0


def _guards(given: list[str] | None, model: str) -> dict[str, float]:
    """``--guard`` as metric -> budget; by default the prompt guard where the model has a prompt metric."""
    if given is None:
        return {"background": 0.015} if model == "shapes" else {}
    guards = {}
    for one in given:
        if one.lower() == "none":
            continue
        name, _, budget = one.partition("=")
        guards[name.strip()] = float(budget)
    return guards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="shapes", help="model preset (default: shapes)")
    parser.add_argument("--conditions", default="seg,canny,hed,depth", help="comma-separated condition types")
    parser.add_argument("--policies", help="policy file with the tuned policies, or `none` (peers only)")
    parser.add_argument(
        "--caching-only-policies",
        default=None,
        metavar="FILE",
        help="policy file of the same searches run with --no-guidance-window: the caching-only row and "
        "column",
    )
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
    parser.add_argument(
        "--guard",
        action="append",
        default=None,
        metavar="METRIC=BUDGET",
        help="a further constraint on every row, as search's --guard (default for shapes: background=0.015, "
        "the prompt guard; `none`: the task metric alone)",
    )
    parser.add_argument(
        "--samples-per-call", type=int, default=8, help="samples per pipeline call (default: 8)"
    )
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
    guards = _guards(args.guard, args.model)
    results = []
    try:
        policy_file = None if args.policies.lower() == "none" else load_policy(args.policies)
        caching_file = None
        if args.caching_only_policies is not None:
            caching_file = load_policy(args.caching_only_policies)
        for condition in conditions:
            tuned = caching_only = None
            if policy_file is not None and condition in policy_file.condition_types:
                tuned = policy_file.select(condition)
            if caching_file is not None and condition in caching_file.condition_types:
                caching_only = caching_file.select(condition)
            pipe = load_pipeline(args.model, condition=condition)
            results.append(
                measure_condition(
                    pipe,
                    condition,
                    model=args.model,
                    tuned=tuned,
                    caching_only=caching_only,
                    samples=args.samples,
                    steps=args.steps,
                    budget=args.budget,
                    confidence=args.confidence,
                    metric=args.metric,
                    progress=args.progress,
                    guards=guards,
                    samples_per_call=args.samples_per_call,
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
        "caching_only_policies": args.caching_only_policies,
        "guards": guards,
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
