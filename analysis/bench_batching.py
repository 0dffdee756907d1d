"""Throughput of batched generation: samples/s one per pipeline call against ``B`` per call.

Four measurements on the shapes model (CFG, its native 64 px), each side in the same process and, for the
ratios, interleaved so that drifting load on a shared machine hits both alike:

1. ``sweep``: full-compute generation of the same samples at every batch size in ``--sizes``.
2. ``profile``: :func:`hgc_tune.profile.profile_pipeline` of the samples at 1 and at ``--batch`` per call
   (the MAC table counted once up front and passed in: a one-off cost per model and resolution).
3. ``trial``: one search trial of a fixed peer policy (``--peer``) on those profiles, scored as the
   objective scores it (sequential test at the budget; the bound looked at after each batch), and the same
   policy on every calibration sample (no early stop); ``--rounds`` alternating rounds, medians.
4. ``search``: ``hgc-tune search`` on each profile (``--search-trials`` trials, validation and test), in a
   child process, as a user runs it.

Each figure is wall-clock samples/s and, where one process does the work on the CPU, samples per CPU second
of this process (which other processes on a busy machine disturb much less).

Usage:
    .venv/bin/python analysis/bench_batching.py [--sizes 1,2,4,8,16] [--batch 8] [--samples 16]
        [--steps 20] [--threads 1] [--rounds 1] [--only sweep,profile,trial,search] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rate(samples: int, start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    return {
        "samples": samples,
        "seconds": round(wall, 2),
        "samples_per_s": round(samples / wall, 4),
        "samples_per_cpu_s": round(samples / cpu, 4),
    }


def _sweep(pipe, jobs, base, sizes: list[int]) -> dict[int, dict[str, float]]:
    from hgc_tune.generation import iter_outputs

    out = {}
    for size in sizes:
        start = _clock()
        produced = sum(
            1 for _ in iter_outputs(pipe, None, jobs, dataclasses.replace(base, samples_per_call=size))
        )
        out[size] = _rate(produced, start)
        print(f"sweep batch={size}: {out[size]}", flush=True)
    return out


def _profiles(pipe, samples, args, sizes: tuple[int, int], folder: Path):
    from hgc_tune.macs import count_pipeline_macs
    from hgc_tune.profile import profile_pipeline

    table = count_pipeline_macs(pipe, height=64, width=64, model_name="shapes")
    rates, paths = {}, {}
    for size in sizes:
        start = _clock()
        profile = profile_pipeline(
            pipe,
            samples,
            num_steps=args.steps,
            progress=False,
            model_name="shapes",
            dataset="shapes:calibration",  # as `hgc-tune profile` labels it, so the search finds the splits
            mac_table=table,
            samples_per_call=size,
        )
        rates[size] = _rate(profile.num_samples, start)
        paths[size] = profile.save(folder / f"profile-b{size}")
        print(f"profile batch={size}: {rates[size]}", flush=True)
    return rates, paths


def _trial_session(pipe, path: Path, args):
    from hgc_tune.profile import Profile
    from hgc_tune.search import SearchConfig, prepare_search

    config = SearchConfig(budget=args.budget, n_trials=1, peers=(), check_reference=False)
    session = prepare_search(Profile.load(path), pipe, config, cache_dir=tempfile.mkdtemp())
    return session, session.space.build(session.space.peer_params(args.peer))


def _trial(session, policy) -> dict[str, dict[str, float]]:
    """One trial of ``policy`` as the objective scores it (sequential), and on every calibration sample."""
    config, objective = session.config, session.objective
    start = _clock()
    # The session's scorer holds every constraint (task metric and guards) with its budget.
    estimate = session.scorer.score(
        objective.outputs(policy),
        min_samples=config.early_rejection_min_samples,
        confidence=config.confidence,
        look_every=objective.samples_per_call,
    )
    sequential = _rate(estimate.primary.samples, start)
    sequential["verdict"] = (
        "fail" if estimate.rejected_early else "pass" if estimate.accepted_early else "all"
    )
    start = _clock()
    every = session.scorer.score(objective.outputs(policy), sequential=False, confidence=config.confidence)
    return {"sequential": sequential, "every_sample": _rate(every.primary.samples, start)}


def _trials(pipe, paths: dict[int, Path], args) -> dict:
    """Rounds that alternate the batch sizes (drifting load hits both alike); medians per figure."""
    import statistics

    sessions = {size: _trial_session(pipe, path, args) for size, path in paths.items()}
    rounds: dict[int, list[dict]] = {size: [] for size in paths}
    for _ in range(args.rounds):
        for size, (session, policy) in sessions.items():
            rounds[size].append(_trial(session, policy))
            print(f"trial batch={size}: {rounds[size][-1]}", flush=True)
    out = {}
    for size, runs in rounds.items():
        out[size] = {
            kind: {
                key: statistics.median(r[kind][key] for r in runs)
                for key in ("samples", "seconds", "samples_per_s", "samples_per_cpu_s")
            }
            for kind in ("sequential", "every_sample")
        }
    return out


def _search(path: Path, args, threads: int) -> dict[str, float]:
    out = path.parent / f"{path.name}-policy.json"
    command = [sys.executable, "-m", "hgc_tune", "search", "--profile", str(path), "--out", str(out)]
    command += ["--budget", str(args.budget), "--trials", str(args.search_trials), "--seed", "0"]
    command += ["--validation-samples", str(args.heldout), "--test-samples", str(args.heldout)]
    command += ["--no-progress", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    # exit 1: the search ran to the end and no policy held the budget (a result, as timed as any)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"search failed ({done.returncode}): {done.stderr[-2000:]}")
    outcome = done.stderr.strip().splitlines()[-1] if done.returncode else "a policy holds the budget"
    return {"seconds": round(wall, 1), "exit": done.returncode, "outcome": outcome[:300]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--batch", type=int, default=8, help="the batched side of the profile/trial/search")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--condition", default="seg")
    parser.add_argument("--peer", default="deepcache-n3-b0")
    parser.add_argument("--budget", type=float, default=0.015)
    parser.add_argument("--search-trials", type=int, default=4)
    parser.add_argument("--heldout", type=int, default=8, help="validation and test samples of the search")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the trial figures")
    parser.add_argument("--only", default="sweep,profile,trial,search")
    parser.add_argument("--out", default=None, help="folder for the profiles and the JSON (default: temp)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from hgc_tune.data import open_dataset
    from hgc_tune.generation import GenerationSettings, jobs_from_samples
    from hgc_tune.models import load_pipeline

    only = set(args.only.split(","))
    folder = Path(args.out or tempfile.mkdtemp(prefix="bench-batching-"))
    folder.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("shapes", condition=args.condition)
    samples = open_dataset("shapes", condition_type=args.condition, split="calibration", limit=args.samples)
    jobs = jobs_from_samples(samples)
    report: dict = {
        "machine": f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, {args.threads} thread(s)",
        "load_before": os.getloadavg()[0],
        "args": vars(args),
    }
    base = GenerationSettings(args.steps, 7.5, 64, 64)
    # warm-up: the first call pays for lazy initialisation
    _sweep(pipe, jobs[:2], base, [1])
    if "sweep" in only:
        report["sweep"] = _sweep(pipe, jobs, base, [int(s) for s in args.sizes.split(",")])
    pair = (1, args.batch)
    if only & {"profile", "trial", "search"}:
        report["profile"], paths = _profiles(pipe, samples, args, pair, folder)
        if "trial" in only:
            report["trial"] = _trials(pipe, paths, args)
            print(f"trial: {report['trial']}", flush=True)
        if "search" in only:
            report["search"] = {size: _search(paths[size], args, args.threads) for size in pair}
            print(f"search: {report['search']}", flush=True)
    report["load_after"] = os.getloadavg()[0]
    (folder / "bench_batching.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
