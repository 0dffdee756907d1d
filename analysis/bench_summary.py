"""Cost of ``handle.summary()``: the overhead of ``apply_policy(..., count_macs=True)`` on a call, and what
the first and later ``summary()`` calls take.

Rounds alternate calls with and without MAC counting, under the same policy, prompt, condition and seed
(``output_type="latent"``: the VAE decode is the same on both sides and left out). The ratio uses medians of
wall-clock seconds and of this process's CPU seconds; with one torch thread the CPU-time ratio is the overhead
proper and is much less disturbed by other processes on a shared machine.

Usage:
    .venv/bin/python analysis/bench_summary.py [--model shapes] [--condition canny] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="shapes (with policies/shapes.json) or tiny")
    parser.add_argument("--condition", default="canny")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch

    from hgc_tune import apply_policy, load_pipeline, load_policy

    torch.set_num_threads(1)
    if args.model == "shapes":
        pipe = load_pipeline("shapes", condition=args.condition)
        policy = load_policy("policies/shapes.json").select(args.condition)
        condition_type: str | None = args.condition
    else:
        pipe = load_pipeline(args.model)
        policy = load_policy(f"policies/{args.model}-deepcache-n3-b0.json").select()
        condition_type = None
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    condition = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    def call() -> None:
        pipe(
            "a photo of a red circle",
            image=condition,
            num_inference_steps=policy.num_steps,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )

    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    first = again = 0.0
    for counting in (False, True):  # warm-up
        with apply_policy(pipe, policy, condition_type=condition_type, count_macs=counting):
            call()
    for round_ in range(args.rounds):
        for counting in (False, True):
            with apply_policy(pipe, policy, condition_type=condition_type, count_macs=counting) as handle:
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                call()
                wall[counting].append(time.perf_counter() - start_wall)
                cpu[counting].append(time.process_time() - start_cpu)
            if counting and round_ == 0:
                start = time.process_time()
                summary = handle.summary()
                first = time.process_time() - start
                start = time.process_time()
                handle.summary()
                again = time.process_time() - start
    modules = sum(1 for c in ("unet", "controlnet") for _ in getattr(pipe, c).modules())
    print(f"{args.model}: {size} px, {policy.num_steps} steps, CFG, {modules} denoiser modules, 1 thread")
    for name, times in (("wall", wall), ("cpu", cpu)):
        off, on = statistics.median(times[False]), statistics.median(times[True])
        change = f"{on / off - 1:+.1%}, {args.rounds} rounds"
        print(f"  {name}: {off:.3f} s without, {on:.3f} s with count_macs ({change})")
    print(f"  summary(): first {first:.2f} CPU s (traces the MAC table), then {again * 1e3:.1f} ms")
    assert summary.macs is not None
    print(f"  counted paper reduction {summary.macs['paper'].reduction:.4f}")


if __name__ == "__main__":
    main()
