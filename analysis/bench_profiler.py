"""Overhead of the profiler: profiling time ÷ plain generation time for the same samples.

Both sides run the same pipeline calls (prompt, condition, seed, steps, CFG, ``output_type="np"``); the
profile side adds the observation hooks, the step callback and the aggregation. The MAC table is counted
once up front and passed in (``profile_pipeline(..., mac_table=...)``): counting is a one-off cost per model
and resolution, reported on its own line. Rounds alternate plain and profiled runs and the ratio uses
medians, so drifting load on a shared machine hits both sides alike. Each side is timed in wall-clock
seconds and (for a CPU device) in this process's CPU seconds, which other processes on a busy shared
machine disturb much less; with one torch thread the CPU-time ratio is the overhead proper. Target: ratio
≤ 1.3.

Usage:
    .venv/bin/python analysis/bench_profiler.py [--model tiny] [--steps 5 20] [--samples 3] [--rounds 5]
        [--threads 1] [--device cpu] [--resolution R]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class _Sample:
    prompt: str
    image_seed: int
    size: int
    negative_prompt: str | None = None
    seed: int | None = None

    def condition_image(self):
        from PIL import Image

        rng = np.random.RandomState(self.image_seed)
        return Image.fromarray(rng.randint(0, 256, size=(self.size, self.size, 3), dtype=np.uint8))


def _machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
        f"thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    if device.startswith("cuda"):
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    args = parser.parse_args()

    import torch

    from hgc_tune.macs import count_pipeline_macs
    from hgc_tune.models import load_pipeline
    from hgc_tune.profile import profile_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    size = args.resolution or int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    samples = [_Sample(f"a scene number {i}", image_seed=i, size=size) for i in range(args.samples)]

    start = time.perf_counter()
    table = count_pipeline_macs(pipe, height=size, width=size, model_name=args.model)
    mac_seconds = time.perf_counter() - start

    def plain(steps: int) -> tuple[float, float]:
        _sync(args.device)
        start, cpu = time.perf_counter(), time.process_time()
        for i, sample in enumerate(samples):
            pipe(
                prompt=sample.prompt,
                negative_prompt=sample.negative_prompt,
                image=sample.condition_image(),
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=args.guidance_scale,
                generator=torch.Generator().manual_seed(i),
                output_type="np",
            )
        _sync(args.device)
        return time.perf_counter() - start, time.process_time() - cpu

    def profiled(steps: int) -> tuple[float, float]:
        _sync(args.device)
        start, cpu = time.perf_counter(), time.process_time()
        profile_pipeline(
            pipe,
            samples,
            num_steps=steps,
            guidance_scale=args.guidance_scale,
            height=size,
            width=size,
            progress=False,
            model_name=args.model,
            mac_table=table,
        )
        _sync(args.device)
        return time.perf_counter() - start, time.process_time() - cpu

    print(f"machine: {_machine(args.device)}")
    print(
        f"model {args.model}, {size}x{size} px, {args.samples} samples, CFG {args.guidance_scale}, "
        f"device {args.device}, {args.dtype}; MAC table counted once in {mac_seconds:.2f} s "
        "(not in the ratio)"
    )
    for steps in args.steps:
        plain(steps), profiled(steps)  # warm-up: first-call allocations and lazy imports
        plain_times, profile_times = [], []
        for _ in range(args.rounds):
            plain_times.append(plain(steps))
            profile_times.append(profiled(steps))
        for i, clock in enumerate(("wall", "cpu")):
            p = statistics.median(t[i] for t in plain_times)
            q = statistics.median(t[i] for t in profile_times)
            print(
                f"steps {steps:3d}, {clock:4s} time: plain {p:.3f} s, profiled {q:.3f} s (medians of "
                f"{args.rounds}); ratio {q / p:.3f}"
                + (f" (with MAC counting: {(q + mac_seconds) / p:.2f})" if clock == "wall" else "")
            )


if __name__ == "__main__":
    main()
