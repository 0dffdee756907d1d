"""Run the whole loop on the embedded default model: data, profile, search, report.

For each condition type: profile the ``shapes`` model on the shapes benchmark's calibration split, search the
cheapest policy whose fidelity loss stays within --budget (validated on the held-out split), and write the
report. The per-condition policies are then gathered into one policy file (one policy per condition type).
Everything goes under --runs (and the reports under --reports); running the command again reuses the
profiles and resumes the studies, so an interrupted demo loses nothing.

Example:
    hgc-tune demo                                  # all four condition types (about 14 min on 2 cores)
    hgc-tune demo --conditions seg --trials 12     # a shorter run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hgc_tune.cli._checks import (
    MAX_COUNT,
    add_budget_argument,
    add_samples_argument,
    add_steps_argument,
    add_trials_argument,
    check_output,
    int_in,
    seconds,
)

HELP = "run data -> profile -> search -> report on the embedded shapes model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", default="shapes", help="model (default: the embedded shapes model)")
    parser.add_argument(
        "--conditions",
        default="seg,canny,hed,depth",
        help="comma-separated condition types (default: all four)",
    )
    add_budget_argument(parser, default=0.015, help="fidelity-loss budget, in (0, 1) (default: 0.015)")
    parser.add_argument(
        "--metric",
        default="ssim",
        help="fidelity metric (default: ssim against the full-compute output; a task metric such as miou is "
        "also possible, but on 8 samples of this small model its sampling noise is several percent, "
        "above a 1.5%% budget)",
    )
    add_samples_argument(parser, default=8, help="calibration samples (default: 8)")
    add_samples_argument(
        parser, flag="--heldout-samples", low=0, default=8, help="held-out samples (default: 8)"
    )
    add_trials_argument(parser, default=64, help="search trials per condition (default: 64)")
    parser.add_argument(
        "--validation-tries",
        type=int_in("--validation-tries", 1, MAX_COUNT),
        default=6,
        help="calibration-feasible policies tried on the held-out split before a condition type is left "
        "without a policy (default: 6; a held-out check of 8 samples takes seconds)",
    )
    parser.add_argument(
        "--workers",
        type=int_in("--workers", 1, 256),
        default=2,
        help="search worker processes, one per core (default: 2)",
    )
    parser.add_argument(
        "--search-seconds",
        type=seconds("--search-seconds", zero_ok=True),
        default=100,
        help="stop starting search trials after this many seconds per condition, so that the four condition "
        "types fit in about 15 minutes on 2 cores (default: 100; 0 = no limit)",
    )
    add_steps_argument(parser, default=20, help="denoising steps (default: 20)")
    parser.add_argument("--runs", default="runs/demo", help="folder for profiles, studies and policies")
    parser.add_argument("--reports", default="reports/demo", help="folder for the reports")


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _call(argv: list[str]) -> int:
    from hgc_tune.cli import main

    print("$ hgc-tune " + " ".join(argv), flush=True)
    return main(argv)


def _reusable_profile(folder: Path, model: str, condition: str) -> bool:
    """Whether ``folder`` holds an intact profile of the current weights of ``model`` (an interrupted demo
    resumes from it; after the shipped weights change, it is profiled again)."""
    from hgc_tune.errors import ProfileError
    from hgc_tune.models import load_pipeline, weights_digest
    from hgc_tune.profile import Profile

    if not (folder / "profile.json").exists():
        return False
    try:
        profile = Profile.load(folder)
    except ProfileError:
        return False
    if profile.weights_digest != weights_digest(load_pipeline(model, condition=condition)):
        print(f"the profile in {folder} was made with other weights of {model!r}: profiling again")
        return False
    return True


def run(args: argparse.Namespace) -> int:
    from hgc_tune.errors import HgcTuneError

    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if not conditions:
        raise HgcTuneError(
            f"`--conditions` must name at least one condition type, but got {args.conditions!r}."
        )
    # Both folders are the demo's own: a second run resumes in them (nothing to --overwrite).
    runs = check_output(args.runs, flag="--runs", kind="folder")
    reports = check_output(args.reports, flag="--reports", kind="folder")
    outcomes: dict[str, dict] = {}
    started = time.perf_counter()
    for condition in conditions:
        run_dir = runs / f"{args.model}-{condition}"
        policy = run_dir / "policy.json"
        pareto = run_dir / "policy.pareto.json"
        _step(f"{condition}: profile ({args.samples} calibration samples, {args.steps} steps)")
        if _reusable_profile(run_dir, args.model, condition):
            print(f"reusing the profile in {run_dir}")
        else:
            profile_argv = ["profile", "--model", args.model, "--condition", condition, "--dataset", "shapes"]
            profile_argv += ["--split", "calibration", "--samples", str(args.samples)]
            profile_argv += ["--steps", str(args.steps), "--out", str(run_dir), "--overwrite"]
            if _call(profile_argv) != 0:
                return 2
        _step(f"{condition}: search ({args.metric} loss <= {args.budget}, {args.trials} trials)")
        code = _call(
            ["search", "--profile", str(run_dir), "--budget", str(args.budget), "--trials", str(args.trials)]
            + ["--metric", args.metric, "--heldout-samples", str(args.heldout_samples), "--out", str(policy)]
            + ["--workers", str(args.workers), "--validation-tries", str(args.validation_tries)]
            + ["--overwrite"]
            + (["--timeout", str(args.search_seconds)] if args.search_seconds > 0 else [])
        )
        if code == 2:
            return 2
        found = code == 0 and policy.exists()
        _step(f"{condition}: report")
        report_argv = ["report", "--profile", str(run_dir), "--out", str(reports / condition), "--overwrite"]
        if found:
            report_argv += ["--policy", str(policy)]
        if pareto.exists():
            report_argv += ["--pareto", str(pareto)]
        if _call(report_argv) != 0:
            return 2
        outcomes[condition] = {
            "policy": policy if found else None,
            "report": reports / condition / "index.html",
        }
    combined = _combine(outcomes, runs / f"{args.model}-policies.json")
    _step(f"done in {time.perf_counter() - started:.0f} s")
    for condition, outcome in outcomes.items():
        where = outcome["policy"] or "no policy holds the budget on held-out data"
        print(f"{condition:>6}: policy {where}\n        report {outcome['report']}")
    if combined is not None:
        print(f"all condition types in one file: {combined}")
        print(f"apply it: apply_policy(pipe, load_policy({str(combined)!r}), condition_type=...)")
    return 0 if all(o["policy"] for o in outcomes.values()) else 1


def _combine(outcomes: dict[str, dict], out: Path) -> Path | None:
    """One policy file holding each condition type's policy."""
    from hgc_tune.policy import PolicyFile, load_policy, save_policy

    policies = tuple(load_policy(o["policy"]).select() for o in outcomes.values() if o["policy"])
    if not policies:
        return None
    return save_policy(PolicyFile(policies), out)
