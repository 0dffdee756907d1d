"""Run the whole loop on the embedded default model: data, profile, search, report.

For each condition type: profile the ``shapes`` model on the shapes benchmark's calibration split, search the
cheapest policy whose task-metric loss (mIoU for seg, edge F1 for canny, edge SSIM for hed, depth RMSE for
depth) stays within --budget and whose prompt adherence (the background read back from the picture, a proxy)
stays within 1.5 points (--guard; the default), with --confidence (every constraint's one-sided upper
confidence bound of the paired loss must be within its budget, Bonferroni-shared), check the plausible
candidates on the validation split, measure the chosen one on the test split (never used to choose: its figure
is the one stated), and write the report. The search is bounded by --trials with one worker per condition
type, so the same --seed gives the same policies on any machine; --parallel runs that many condition types
side by side (one core each). The per-condition policies are then gathered into one policy file. Everything
goes under --runs (and the reports under --reports); running the command again reuses the profiles and resumes
the studies, so an interrupted demo loses nothing. Full compute runs at the model's recommended guidance
scale unless --guidance-scale is given; the profiles, the policies' provenance and the reports record the
scale used.

The condition types run in child processes whose output (progress bars, the search's tables) goes to a log
file each, runs/demo/<types>.log. The console shows one status line on stderr: the stage each running type is
in (profile, trial k of n, validation, test, report) and an estimate of the time left; --no-progress hides it.

Example:
    hgc-tune demo                                  # all four condition types (about 7 min on 2 idle cores)
    hgc-tune demo --conditions seg --trials 8      # a shorter run
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hgc_tune._progress import PROFILE, REPORT
from hgc_tune.cli._checks import (
    DEFAULT_SAMPLES_PER_CALL,
    MAX_COUNT,
    add_budget_argument,
    add_samples_argument,
    add_samples_per_call_argument,
    add_seed_argument,
    add_steps_argument,
    add_trials_argument,
    check_output,
    confidence,
    int_in,
    seconds,
)
from hgc_tune.cli._common import add_clip_argument, add_guidance_argument
from hgc_tune.cli._progress_file import DONE, EventReader, EventWriter
from hgc_tune.cli._search_options import add_guard_argument, guard_argv, guards_from_args
from hgc_tune.cli._status_line import StatusBoard, StatusPrinter, demo_plan

HELP = "run data -> profile -> search -> report on the embedded shapes model"

_CHILD = "import sys; from hgc_tune.cli import main; sys.exit(main(sys.argv[1:]))"


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
        default=None,
        help="fidelity metric (default: the condition type's task metric, as in the paper's protocol; a "
        "reference metric such as ssim against the full-compute output is also possible)",
    )
    add_guard_argument(parser)
    parser.add_argument(
        "--confidence",
        type=confidence("--confidence"),
        default=0.95,
        help="one-sided confidence with which every constraint's upper bound holds together (Bonferroni; 0 = "
        "point estimates; default: 0.95)",
    )
    add_samples_argument(parser, default=8, help="calibration samples (default: 8)")
    # 40 validation and 64 test samples: on fewer, a bound within 1.5 % is rarely provable (the power the
    # shipped policies were searched with); 12 trials of one batch each keep four types within 15 minutes.
    add_samples_argument(
        parser, flag="--validation-samples", default=40, help="validation samples (default: 40)"
    )
    add_samples_argument(
        parser, flag="--test-samples", default=64, help="test samples, the reported figure (default: 64)"
    )
    add_trials_argument(parser, default=12, help="search trials per condition (default: 12)")
    add_seed_argument(parser, help="search seed (default: 0)")
    parser.add_argument(
        "--validation-tries",
        type=int_in("--validation-tries", 1, MAX_COUNT),
        default=3,
        help="plausible policies tried on the validation split (those within budget by their calibration "
        "point estimates first, cheapest first; the calibration winner always among them) before a "
        "condition type is left without a policy (default: 3, as `search`)",
    )
    parser.add_argument(
        "--parallel",
        type=int_in("--parallel", 1, 64),
        default=2,
        help="condition types run side by side, one process and one core each (default: 2)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds("--timeout", zero_ok=True),
        default=0,
        help="also stop starting search trials after this many seconds per condition (default: 0 = no "
        "limit; a limit makes the policies depend on the machine's speed)",
    )
    add_steps_argument(parser, default=20, help="denoising steps (default: 20)")
    add_guidance_argument(parser)
    add_samples_per_call_argument(
        parser,
        default=DEFAULT_SAMPLES_PER_CALL,
        help="samples generated per pipeline call by the profiles, and so by the searches' trials, "
        f"validation and test (default: {DEFAULT_SAMPLES_PER_CALL})",
    )
    parser.add_argument("--runs", default="runs/demo", help="folder for profiles, studies and policies")
    parser.add_argument("--reports", default="reports/demo", help="folder for the reports")
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no status line on stderr (the details are in the logs either way)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with code 1 when a condition type has no policy within the budget (default: a demo that "
        "ran to the end exits 0 and names the condition types without one)",
    )
    add_clip_argument(parser)  # passed on to profile, search and report
    parser.add_argument(
        "--no-guidance-window",
        dest="search_guidance",
        action="store_false",
        help="keep classifier-free guidance at every step (passed on to each search): the savings then come "
        "from caching only; use another --runs and --reports to keep both results",
    )
    # Internal: a process started by --parallel runs its condition types and does not combine; it appends
    # its progress events to --status-file for the parent's status line.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--status-file", default=None, help=argparse.SUPPRESS)


def _clip_argv(args: argparse.Namespace) -> list[str]:
    """``--clip`` for the commands the demo runs, as given to it."""
    return ["--clip", args.clip] if args.clip is not None else []


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _call(argv: list[str]) -> int:
    from hgc_tune.cli import main

    print("$ hgc-tune " + " ".join(argv), flush=True)
    return main(argv)


def _reusable_profile(
    folder: Path, model: str, condition: str, guidance_scale: float | None, samples_per_call: int = 1
) -> bool:
    """Whether ``folder`` holds an intact profile of the current weights of ``model`` at the guidance scale
    asked for (``None``: the model's recommended one), batched ``samples_per_call`` per call; an interrupted
    demo resumes from it, and after the shipped weights, their recommended guidance or the batching change,
    it is profiled again."""
    from hgc_tune.errors import ProfileError
    from hgc_tune.models import pipeline_guidance
    from hgc_tune.profile import Profile, load_profiled_pipeline

    if not (folder / "profile.json").exists():
        return False
    try:
        profile = Profile.load(folder)
    except ProfileError:
        return False
    if profile.samples_per_call != samples_per_call:
        return False
    # the digest is checked against the ControlNet of `condition`, as the profile will be used with it
    if profile.condition_type == condition and profile.weights_digest is not None:
        try:
            pipe = load_profiled_pipeline(profile, model=model)
        except ProfileError:
            pass
        else:
            wanted = pipeline_guidance(pipe).scale if guidance_scale is None else guidance_scale
            if profile.guidance_scale == wanted:
                return True
            print(
                f"the profile in {folder} was made at guidance {profile.guidance_scale:g}, not "
                f"{wanted:g}: profiling again"
            )
            return False
    print(f"the profile in {folder} was made with other weights of {model!r}: profiling again")
    return False


def _search_argv(args: argparse.Namespace, run_dir: Path, policy: Path) -> list[str]:
    from hgc_tune.cli._search_options import config_argv
    from hgc_tune.search import SearchConfig

    config = SearchConfig(
        budget=args.budget,
        metric=args.metric or None,
        guards=guards_from_args(args),
        confidence=args.confidence,
        n_trials=args.trials,
        timeout=args.timeout if args.timeout > 0 else None,
        seed=args.seed,
        max_validation_tries=args.validation_tries,
        search_guidance=args.search_guidance,
    )
    argv = ["search", "--profile", str(run_dir), "--out", str(policy), *config_argv(config)]
    argv += ["--validation-samples", str(args.validation_samples), "--test-samples", str(args.test_samples)]
    return [*argv, *_clip_argv(args), "--workers", "1", "--overwrite"]


def _run_condition(args: argparse.Namespace, condition: str) -> int | None:
    """Profile, search and report one condition type; returns the search's exit code (None: stop, 2)."""
    runs, reports = Path(args.runs), Path(args.reports)
    run_dir = runs / f"{args.model}-{condition}"
    policy = run_dir / "policy.json"
    pareto = run_dir / "policy.pareto.json"
    # The profile and the search report their own progress to the status file; this reports the rest.
    status = ["--status-file", args.status_file] if args.status_file else []
    report_progress = EventWriter(args.status_file, condition) if args.status_file else None
    clock, cpu = time.perf_counter(), time.process_time()
    _step(f"{condition}: profile ({args.samples} calibration samples, {args.steps} steps)")
    if report_progress is not None:
        report_progress(PROFILE, 0, args.samples)
    if _reusable_profile(run_dir, args.model, condition, args.guidance_scale, args.samples_per_call):
        print(f"reusing the profile in {run_dir}")
    else:
        profile_argv = ["profile", "--model", args.model, "--condition", condition, "--dataset", "shapes"]
        profile_argv += ["--split", "calibration", "--samples", str(args.samples)]
        profile_argv += ["--steps", str(args.steps), "--samples-per-call", str(args.samples_per_call)]
        profile_argv += ["--out", str(run_dir), "--overwrite", *_clip_argv(args)]
        if args.guidance_scale is not None:
            profile_argv += ["--guidance-scale", str(args.guidance_scale)]
        if _call([*profile_argv, *status]) != 0:
            return None
    profiled = time.perf_counter()
    metric = args.metric or "task metric"
    bound = f"{100 * args.confidence:g}% upper bound" if args.confidence > 0 else "point estimate"
    _step(f"{condition}: search ({metric} loss, {bound} <= {args.budget}, {args.trials} trials)")
    # A policy left by an earlier run must not stand for this one's (the search rewrites it if it finds one).
    policy.unlink(missing_ok=True)
    code = _call([*_search_argv(args, run_dir, policy), *status])
    if code not in (0, 1):  # 1: no policy holds the budget (the report says so); else a bad input or Ctrl-C
        return None
    searched = time.perf_counter()
    found = code == 0 and policy.exists()
    _step(f"{condition}: report")
    if report_progress is not None:
        report_progress(REPORT, 0, 1)
    report_argv = ["report", "--profile", str(run_dir), "--out", str(reports / condition), "--overwrite"]
    report_argv += _clip_argv(args)
    if found:
        report_argv += ["--policy", str(policy)]
    if pareto.exists():
        report_argv += ["--pareto", str(pareto)]
    if _call(report_argv) != 0:
        return None
    if report_progress is not None:
        report_progress(REPORT, 1, 1)
        report_progress(DONE, 1, 1)
    done = time.perf_counter()
    # CPU seconds of this process: the wall time the same work takes on an idle core (one thread).
    print(
        f"{condition}: profile {profiled - clock:.0f} s, search (trials, validation, test) "
        f"{searched - profiled:.0f} s, report {done - searched:.0f} s; "
        f"CPU {time.process_time() - cpu:.0f} s",
        flush=True,
    )
    return code


@dataclass
class _Lane:
    """A child process running some condition types one after the other."""

    conditions: list[str]
    log: Path
    events: Path
    process: subprocess.Popen[bytes]


def _children(args: argparse.Namespace, conditions: list[str]) -> dict[str, int]:
    """Run the condition types in ``args.parallel`` processes (round robin), one core each; logs go to
    ``runs/<condition>.log`` and the status line to stderr. Returns each condition type's exit code."""
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    shares = [s for s in (conditions[i :: args.parallel] for i in range(args.parallel)) if s]
    plan = demo_plan(
        args.samples, args.trials, args.validation_samples, args.validation_tries, args.test_samples
    )
    board = StatusBoard("demo", shares, {c: plan for c in conditions}, started=time.time())
    printer = StatusPrinter(sys.stderr) if args.progress else None
    lanes: list[_Lane] = []
    try:
        for share in shares:
            argv = _child_argv(args, share)
            log = runs / f"{'-'.join(share)}.log"
            events = log.with_suffix(".progress.jsonl")
            events.unlink(missing_ok=True)  # an earlier run's events would show as this one's
            print(f"$ hgc-tune {' '.join(argv)}  > {log}", flush=True)
            if args.progress:
                argv += ["--status-file", str(events)]
            with open(log, "w", encoding="utf-8") as f:
                command = [sys.executable, "-c", _CHILD, *argv]
                process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)
            lanes.append(_Lane(share, log, events, process))
        _watch(lanes, board, printer)
    except BaseException:  # Ctrl-C (or a failure here): no child is left running
        if printer is not None:
            printer.close(board, time.time())  # the interruption's message goes on a line of its own
        _stop([lane.process for lane in lanes])
        raise
    codes = {}
    for lane in lanes:
        code = lane.process.returncode
        for condition in lane.conditions:
            codes[condition] = code
        tail = lane.log.read_text(encoding="utf-8", errors="replace")[-4000:]
        print(f"--- {lane.log} (exit {code})\n" + tail)
    return codes


def _watch(lanes: list[_Lane], board: StatusBoard, printer: StatusPrinter | None, poll: float = 0.5) -> None:
    """Wait for every lane's process, feeding their progress events to ``board`` and showing its line."""
    readers = [EventReader(lane.events) for lane in lanes]
    running = set(range(len(lanes)))
    while True:
        # Exits first, then events: the events a process wrote before it exited are read before its exit.
        exited = [i for i in sorted(running) if lanes[i].process.poll() is not None]
        for reader in readers:
            for event in reader.read():
                board.update(event)
                if printer is not None:
                    # Each event in turn: in a log, a stage that began and ended between two polls still
                    # gets its line (the printer prints on a stage change, and rate-limits a terminal).
                    printer.show(board, time.time())
        for i in exited:
            board.lane_exited(i, lanes[i].process.returncode)
            running.discard(i)
        if printer is not None:
            if running:
                printer.show(board, time.time())
            else:
                printer.close(board, time.time())
        if not running:
            return
        time.sleep(poll)


def _stop(processes: list[subprocess.Popen[bytes]], grace: float = 2.0) -> None:
    """Stop the children after Ctrl-C. The terminal interrupted them too, and they stop on their own (their
    studies keep every finished trial); one still running after ``grace`` seconds (only this process was
    interrupted) gets SIGINT, then SIGTERM, then SIGKILL."""
    for sig, wait in ((None, grace), (signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        running = [p for p in processes if p.poll() is None]
        if not running:
            return
        for process in running:
            if sig is not None:
                process.send_signal(sig)
        deadline = time.monotonic() + wait
        for process in running:
            try:
                process.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                pass


def _child_argv(args: argparse.Namespace, conditions: list[str]) -> list[str]:
    argv = ["demo", "--child", "--conditions", ",".join(conditions), "--model", args.model]
    argv += ["--budget", str(args.budget), "--confidence", str(args.confidence), "--seed", str(args.seed)]
    argv += ["--samples", str(args.samples), "--validation-samples", str(args.validation_samples)]
    argv += ["--test-samples", str(args.test_samples), "--trials", str(args.trials)]
    argv += ["--validation-tries", str(args.validation_tries), "--timeout", str(args.timeout)]
    argv += ["--steps", str(args.steps), "--runs", args.runs, "--reports", args.reports, "--parallel", "1"]
    argv += ["--samples-per-call", str(args.samples_per_call)]
    if args.metric:
        argv += ["--metric", args.metric]
    if args.guidance_scale is not None:
        argv += ["--guidance-scale", str(args.guidance_scale)]
    if not args.search_guidance:
        argv += ["--no-guidance-window"]
    return [*argv, *guard_argv(guards_from_args(args)), *_clip_argv(args)]


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
    started = time.perf_counter()
    if args.child:
        codes = {}
        for condition in conditions:
            code = _run_condition(args, condition)
            if code is None:
                return 2
            codes[condition] = code
        return 0 if all(c == 0 for c in codes.values()) else 1
    # Even one lane runs in a child: the console keeps the status line, the log the details.
    codes = _children(args, conditions)
    if any(code not in (0, 1) for code in codes.values()):
        return 2
    outcomes = {}
    for condition in conditions:
        policy = runs / f"{args.model}-{condition}" / "policy.json"
        outcomes[condition] = {
            "policy": policy if policy.exists() else None,
            "report": reports / condition / "index.html",
        }
    combined = _combine(outcomes, runs / f"{args.model}-policies.json")
    _step(f"done in {time.perf_counter() - started:.0f} s")
    for condition, outcome in outcomes.items():
        where = outcome["policy"] or "no policy holds the budget on the validation split"
        print(f"{condition:>6}: policy {where}\n        report {outcome['report']}")
        if outcome["policy"]:
            print(f"        {_test_line(outcome['policy'])}")
    if combined is not None:
        print(f"all condition types in one file: {combined}")
        print(f"apply it: apply_policy(pipe, load_policy({str(combined)!r}), condition_type=...)")
    missing = [condition for condition, outcome in outcomes.items() if not outcome["policy"]]
    if missing:
        # Not a failure of the demo: at this confidence and sample count the search proved no policy for them.
        print(
            f"no policy within the budget for {', '.join(missing)}: the validation split could not prove one "
            f"at {args.confidence:g} confidence on {args.validation_samples} samples (their reports show the "
            "trials and the Pareto front); --validation-samples raises the power"
        )
    return 1 if args.strict and missing else 0


def _test_line(path: Path) -> str:
    """The policy's test-split figure, as its provenance states it."""
    from hgc_tune.policy import load_policy

    policy = load_policy(path).select()
    p = policy.provenance
    reduction = p.macs.get("paper", {}).get("reduction")
    f = p.fidelity
    if "test_loss" not in f:
        return "no test-split figure recorded"
    upper = f.get("test_loss_upper")
    level = f"{100 * p.confidence:g}% upper bound" if p.confidence else "upper bound"
    macs = "no MAC figure" if reduction is None else f"{100 * reduction:.1f}% fewer MACs (paper)"
    return (
        f"test split: {macs}, {p.metric} loss "
        f"{100 * f['test_loss']:.2f}%, {level} {'-' if upper is None else f'{100 * upper:.2f}%'} on "
        f"{int(f['test_samples'])} samples"
    )


def _combine(outcomes: dict[str, dict], out: Path) -> Path | None:
    """One policy file holding each condition type's policy."""
    from hgc_tune.policy import PolicyFile, load_policy, save_policy

    policies = tuple(load_policy(o["policy"]).select() for o in outcomes.values() if o["policy"])
    if not policies:
        return None
    return save_policy(PolicyFile(policies), out)
