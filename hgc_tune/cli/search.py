"""Search the cheapest caching policy whose fidelity loss stays within a budget (Optuna, resumable).

The model, condition type, scheduler and step count come from the profile; the loaded pipeline must match its
fingerprint. The metric is the condition type's task metric unless --metric says otherwise. Losses are
paired (each sample's seed runs at full compute and with the policy) and a policy is within the budget when
the one-sided upper confidence bound of its loss is (--confidence, default 0.95; 0 = the point estimate).
Three disjoint splits of the shapes benchmark take part: trials are tested on the profile's calibration
samples, sequentially (a trial gets more samples only while its bound straddles the budget); the plausible
trials (those within budget by their point estimates first, cheapest first) are tested on the validation
split until one holds; the chosen policy is then
measured on the test split, which took no part in choosing it: that is the figure its provenance states.
The peer schedules (DeepCache, T-GATE, ControlNet window, full compute) are the first trials. Full-compute
outputs of validation and test samples are cached in runs/NAME/heldout/. Writes the policy to --out and the
Pareto front beside it (policies/NAME.pareto.json). Exit code 1 when no policy holds the budget on the
validation split.

The model's prompt metric (shapes: the background reader; a checkpoint: the CLIP score of --clip, by
default the CLIP model the profile was made with) is recorded in the policy's provenance; a checkpoint
without one is unguarded, and a warning and the provenance say so.

The search is bounded by --trials: with one worker, the same --seed and --trials give the same policy on any
machine. --timeout adds a wall-clock limit (the result then depends on the machine's speed).

Storage (--storage): default sqlite:///runs/NAME/study.db; any SQLAlchemy URL whose driver is installed:
PostgreSQL as postgresql+psycopg2://USER:PASSWORD@HOST/DB (pip install 'hgc-tune[postgres]'; a plain
postgresql:// URL uses psycopg2 if installed, else psycopg 3, postgresql+psycopg://), mysql+pymysql://…;
or journal:PATH for Optuna's JournalFile storage (an append-only log file; use it where SQLite locking does
not work, e.g. NFS). Running the same command again resumes the study (up to --trials in total); several
processes or machines may run it against one storage at once, and --workers K starts K processes here.
A killed worker's running trial is failed after the heartbeat grace period and retried.

Examples:
    hgc-tune search --profile runs/shapes-seg --budget 0.015 --out policies/shapes-seg.json
    hgc-tune search --profile runs/tiny --budget 0.05 --metric ssim --trials 20 --workers 2 --out /tmp/t.json
    hgc-tune search --profile runs/shapes-seg --budget 0.015 --storage journal:runs/shapes-seg/study.log \\
        --out policies/shapes-seg.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hgc_tune.cli._checks import (
    MAX_COUNT,
    add_overwrite_argument,
    check_output,
    device,
    int_in,
)
from hgc_tune.cli._common import (
    add_clip_argument,
    add_controlnet_argument,
    add_lora_argument,
    controlnet_ref,
    hide_loading_bars,
    load_clip_from_args,
    loras_from_args,
    print_json,
    prompt_metric_from_args,
)
from hgc_tune.cli._progress_file import DONE, EventWriter
from hgc_tune.cli._search_options import add_search_options, config_argv, config_from_args
from hgc_tune.cli._status_line import LiveStatus, StatusBoard, StatusPrinter, search_plan
from hgc_tune.errors import FidelityError, SearchError

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.fidelity import PromptMetric
    from hgc_tune.profile import Profile
    from hgc_tune.search import SearchConfig, SearchResult, SearchSession
    from hgc_tune.search._trials import TrialRecord

HELP = "search the cheapest caching policy within a fidelity budget (Optuna)"

# The flags that say which pipeline to load; a worker gets them as given.
# (--clip travels in the config's flags.)
_PIPELINE_FLAGS = ("--model", "--controlnet", "--dtype", "--device", "--lora")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--profile", required=True, help="profile folder written by `hgc-tune profile`")
    parser.add_argument("--out", required=True, help="policy JSON to write (Pareto JSON goes beside it)")
    add_overwrite_argument(
        parser, what="the policy and Pareto files (the study resumes from --storage either way)"
    )
    add_search_options(parser)  # the SearchConfig's flags: --budget, --metric, --trials, …
    parser.add_argument(
        "--workers",
        type=int_in("--workers", 1, 256),
        default=1,
        help="worker processes on this machine (default: 1)",
    )
    parser.add_argument(
        "--validation-samples",
        "--heldout-samples",
        dest="validation_samples",
        type=int_in("--validation-samples", 0, MAX_COUNT),
        default=16,
        help="validation samples to check candidates on; 0 skips (default: 16)",
    )
    parser.add_argument(
        "--test-samples",
        type=int_in("--test-samples", 0, MAX_COUNT),
        default=16,
        help="test samples the chosen policy is measured on (the reported figure); 0 skips (default: 16)",
    )
    parser.add_argument(
        "--heldout-dataset",
        default=None,
        help="validation and test samples: `shapes` (its validation and test splits) or a dataset folder "
        "with validation/ and test/ subfolders (default: the profile's, if shapes)",
    )
    parser.add_argument("--model", default=None, help="override the profile's model (preset, folder, hub id)")
    add_controlnet_argument(parser, "ControlNet for a base model without one")
    parser.add_argument(
        "--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="default: the profile's"
    )
    parser.add_argument(
        "--device", type=device("--device"), default="cpu", help="torch device (default: cpu)"
    )
    add_lora_argument(parser)
    add_clip_argument(parser)
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no status line (stage, trial k of n, estimated time left) on stderr",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    # Internal: a worker started by --workers runs trials only.
    parser.add_argument("--worker-only", action="store_true", help=argparse.SUPPRESS)
    # Internal: `hgc-tune demo` reads the progress events appended here instead of a status line; the
    # progress bar goes to its log.
    parser.add_argument("--status-file", default=None, help=argparse.SUPPRESS)


def _pareto_name(out: str) -> str:
    from hgc_tune.policy._io import pareto_path

    return pareto_path(out).name


def _load_pipeline(args: argparse.Namespace, profile: Profile) -> ControlNetPipeline:
    from hgc_tune.profile import load_profiled_pipeline

    hide_loading_bars()
    return load_profiled_pipeline(
        profile,
        model=args.model,
        controlnet=controlnet_ref(args.controlnet),
        dtype=args.dtype,
        device=args.device,
        error=SearchError,
        lora=loras_from_args(args),
    )


def _split_samples(args: argparse.Namespace, profile: Profile, split: str, n: int):
    """``n`` samples of ``split`` (``validation`` or ``test``): shapes benchmark or a dataset folder."""
    from hgc_tune.data import open_dataset

    flag = f"--{split}-samples"
    if n < 0:
        raise SearchError(f"`{flag}` must be >= 0, but got {split}_samples={n}.")
    if n == 0:
        return None
    ref = args.heldout_dataset
    if ref is None:
        # `hgc-tune profile` records the shapes benchmark as "shapes:<split>".
        label = str(profile.meta["dataset"].get("name") or "")
        name, _, profiled = label.partition(":")
        if name != "shapes" or profiled not in ("", "calibration"):
            raise SearchError(
                f"cannot tell where the {split} samples come from: the profile's dataset is {label!r}, "
                "not the shapes benchmark's calibration split; pass --heldout-dataset shapes|DIR (samples "
                f"not in the calibration set) or {flag} 0 to skip the {split} split."
            )
        ref = "shapes"
    elif ref != "shapes":
        ref = str(Path(ref) / split)
    height, _ = profile.resolution
    samples = open_dataset(
        ref,
        condition_type=profile.condition_type or None,
        split=split,
        limit=n,
        # As `hgc-tune profile` does: the benchmark renders at most 256 px, the pipeline resizes.
        size=min(height, 256),
    )
    if len(samples) == 0:
        raise SearchError(
            f"the {split} split of {ref!r} has no samples of condition type {profile.condition_type!r}."
        )
    return samples


def _prompt_metric(args: argparse.Namespace, profile: Profile) -> PromptMetric:
    """The model's prompt metric: ``--clip``, by default the CLIP model the profile was made with (a
    checkpoint without either is unguarded: one warning line, and the policy's provenance says so)."""
    from hgc_tune.fidelity import prompt_metric_for
    from hgc_tune.profile._prompt import recorded_prompt_metric

    recorded = recorded_prompt_metric(profile) or {}
    if args.clip is None and recorded.get("metric") == "clip":
        args.clip = recorded.get("model")
    clip = load_clip_from_args(args)
    model = args.model or profile.model_name
    if args.worker_only:  # the process that started the workers has warned
        return prompt_metric_for(model, clip, warn=False)
    return prompt_metric_from_args(args, model, clip)


def _worker_argv(args: argparse.Namespace, config: SearchConfig, index: int) -> list[str]:
    """The command line of worker ``index``: the same study and pipeline, trials only."""
    argv = ["search", "--profile", args.profile, "--out", args.out]
    argv += config_argv(replace(config, worker_index=index))
    for flag in _PIPELINE_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        # a repeated flag (``--controlnet`` for several ControlNets) is repeated in the worker's argv too
        for one in [value] if isinstance(value, str) else value or ():
            argv += [flag, one]
    return [*argv, "--validation-samples", "0", "--test-samples", "0", "--no-progress", "--worker-only"]


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _spawn_workers(args: argparse.Namespace, config: SearchConfig) -> list[subprocess.Popen[bytes]]:
    code = "import sys; from hgc_tune.cli import main; sys.exit(main(sys.argv[1:]))"
    # The workers share this machine's cores: oversubscribed OpenMP threads slow every process down.
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads_per_worker(args.workers))}
    return [
        subprocess.Popen(
            [sys.executable, "-c", code, *_worker_argv(args, config, i)], stdout=subprocess.DEVNULL, env=env
        )
        for i in range(1, args.workers)
    ]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _verdict(r: TrialRecord) -> str:
    if r.state != "COMPLETE":
        return r.state.lower()
    if r.feasible:
        return "yes (early)" if r.accepted_early else "yes"
    if r.rejected_early:
        return "no (early)"
    return "screen" if r.screen else "no"


def _constraint_cells(r: TrialRecord | dict, metrics: list[str]) -> list[str]:
    rows = {c["metric"]: c for c in (r.constraints if not isinstance(r, dict) else r.get("constraints", ()))}
    cells = []
    for name in metrics:
        row = rows.get(name, {})
        cells += [_pct(row.get("loss")), _pct(row.get("loss_upper"))]
    return cells


def _picture_cells(picture: dict | None) -> list[str]:
    picture = picture or {}
    ssim, psnr = picture.get("ssim"), picture.get("psnr")
    return ["-" if ssim is None else f"{ssim:.3f}", "-" if psnr is None else f"{psnr:.1f}"]


def _print_summary(result: SearchResult, paths: dict[str, Path | None]) -> None:
    peers_of: dict[int, list[str]] = {}
    for name, number in result.peers.items():
        peers_of.setdefault(number, []).append(name)
    rows = []
    for number, names in sorted(peers_of.items()):
        r = result.record(number)
        rows.append((", ".join(names), r))
    if result.chosen is not None:
        same = f" = {result.chosen.peer}" if result.chosen.peer else ""
        rows.append((f"tuned (trial {result.chosen.number}{same})", result.chosen))
    elif result.best is not None:
        rows.append((f"calibration best (trial {result.best.number})", result.best))
    plan = result.constraints or {"items": [{"metric": result.metric, "budget": result.budget}], "k": 1}
    metrics = [item["metric"] for item in plan["items"]]
    level = plan.get("level", result.confidence)
    budgets = ", ".join(f"{item['metric']} {item['budget']:g}" for item in plan["items"])
    if result.confidence > 0:
        how = (
            f"each upper bound at {100 * level:.4g}% ({100 * result.confidence:g}% together, Bonferroni over "
            f"k={plan['k']})"
        )
    else:
        how = "point estimates"
    print(f"study {result.study_name}: {len(result.trials)} trials; budgets {budgets}; {how}")
    if plan.get("prompt", "") is None:
        print("prompt adherence: unguarded (no prompt metric for this model; --clip PATH guards it)")
    head = [f"{m} {w}" for m in metrics for w in ("loss", "bound")] + ["SSIM", "PSNR"]
    table = [["schedule", "MAC reduction", *head, "samples", "feasible"]]
    for name, r in rows:
        table.append(
            [
                name,
                _pct(r.reduction),
                *_constraint_cells(r, metrics),
                *_picture_cells(dict(r.picture)),
                str(r.samples if r.samples is not None else "-"),
                _verdict(r),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1])), row[-1]]
        print("  ".join(cells))
    for v in result.validation:
        verdict = "holds" if v["holds"] else "breaks a budget"
        bounds = ", ".join(f"{c['metric']} {_pct(c['loss_upper'])}" for c in v.get("constraints", ()))
        print(
            f"validation check of trial {v['trial']}: bounds {bounds} on {v['samples']} samples, {verdict}; "
            f"SSIM/PSNR {'/'.join(_picture_cells(v.get('picture')))}"
        )
    if result.test is not None:
        t = result.test
        verdict = "within every budget" if t["holds"] else "above a budget"
        bounds = ", ".join(
            f"{c['metric']} loss {_pct(c['loss'])} (bound {_pct(c['loss_upper'])})"
            for c in t.get("constraints", ())
        )
        print(
            f"test split (not used to choose): {bounds} on {t['samples']} samples, {verdict}; "
            f"SSIM/PSNR {'/'.join(_picture_cells(t.get('picture')))}"
        )
    if paths.get("policy") is not None:
        print(f"policy: {paths['policy']}")
    print(f"pareto: {paths['pareto']}")


def _run_with_status(
    args: argparse.Namespace,
    session: SearchSession,
    heldout: Sequence[Any] | None,
    test: Sequence[Any] | None,
) -> SearchResult:
    """Run the search, its progress shown as the status line on stderr (or appended to --status-file)."""
    from hgc_tune.search import run_search

    task = session.condition_type or "search"
    if args.status_file:
        writer = EventWriter(args.status_file, task)
        bar = args.progress and not args.json
        return run_search(session, heldout=heldout, test=test, progress=bar, on_progress=writer)
    if not args.progress:
        return run_search(session, heldout=heldout, test=test)
    plan = search_plan(
        len(session.calibration),
        session.config.n_trials,
        len(heldout or ()),
        session.config.max_validation_tries,
        len(test or ()),
    )
    board = StatusBoard("search", [[task]], {task: plan}, started=time.time())
    with LiveStatus(board, StatusPrinter(sys.stderr)) as status:
        report = status.reporter(task)
        result = run_search(session, heldout=heldout, test=test, on_progress=report)
        report(DONE, 1, 1)
    return result


def run(args: argparse.Namespace) -> int:
    if not args.worker_only:
        # The policy, and the Pareto file beside it (hgc_tune.policy._io.pareto_path).
        check_output(
            args.out, overwrite=args.overwrite, replaces=(_pareto_name(args.out),), what="a search's output"
        )
    if args.storage is not None:
        from hgc_tune.search._storage import check_storage_url

        check_storage_url(args.storage)
    config = config_from_args(args)  # budget, trials, … are checked before anything is loaded

    import optuna

    from hgc_tune.search import (
        load_search_profile,
        prepare_search,
        run_search_worker,
        write_search_outputs,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    profile, folder = load_search_profile(args.profile)
    if config.metric is not None:
        from hgc_tune.fidelity._registry import check_metric_fits

        try:
            check_metric_fits(config.metric, profile.condition_type or None)
        except FidelityError as e:
            raise SearchError(str(e)) from e
    from hgc_tune.search._storage import default_storage_url, open_storage

    # Before the pipeline loads: a server that is down, or a read-only folder, fails at once.
    open_storage(config.storage or default_storage_url(folder), timeout=config.storage_timeout)
    heldout = test = None
    if not args.worker_only:
        heldout = _split_samples(args, profile, "validation", args.validation_samples)
        test = _split_samples(args, profile, "test", args.test_samples)
    prompt_metric = _prompt_metric(args, profile)
    pipe = _load_pipeline(args, profile)
    if args.worker_only:
        run_search_worker(folder, pipe, config, prompt_metric=prompt_metric)
        return 0
    # The study is created and the peers enqueued once, before any other worker starts.
    session = prepare_search(folder, pipe, config, prompt_metric=prompt_metric)
    children = []
    if args.workers > 1:
        import torch

        torch.set_num_threads(_threads_per_worker(args.workers))
        children = _spawn_workers(args, config)
    try:
        result = _run_with_status(args, session, heldout, test)
    except BaseException:
        for child in children:
            child.terminate()
        raise
    finally:
        for child in children:
            if child.wait() != 0:
                print(f"hgc-tune search: a worker exited with status {child.returncode}", file=sys.stderr)
    paths = write_search_outputs(result, args.out)
    if args.json:
        print_json(
            {**result.to_json(), "files": {k: None if v is None else str(v) for k, v in paths.items()}}
        )
    else:
        _print_summary(result, paths)
    if not result.ok:
        print(f"hgc-tune search: {result.message}", file=sys.stderr)
        return 1
    return 0
