"""Throughput of the ``shapes`` model's training steps, measured in one process (one run, ratios comparable).

Each variant runs the real training step of :mod:`training.shapes.stages` (AdamW step included) on the
shipped weights and the shapes benchmark, at the given thread count, timed in alternation so that a
machine whose load changes affects every variant alike:

- ``unet``: the U-Net alone (the old U-Net stage), ``--batch`` latents;
- ``controlnet``: four ControlNets against the frozen U-Net (the old ControlNet stage), ``--per-condition``
  scenes each;
- ``joint``: the U-Net and four ControlNets trained together, ``--per-condition`` scenes each plus 20 %
  uncontrolled scenes (the recipe's joint stage);
- ``joint+ema``: the same with an EMA update after every step;
- ``joint+compile``: the same with the U-Net and ControlNets compiled by ``torch.compile`` (inductor); the
  compile time is reported apart.

Usage:
    PYTHONPATH=. python analysis/zoo_recipe_bench.py --threads 2 [--compile] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time


def _setup(per_condition: int, pool_size: int):
    import torch

    from hgc_tune.models._tokenizer import build_offline_tokenizer
    from training.shapes import stages as st
    from training.shapes.architecture import build_text_encoder
    from training.shapes.pool import render_pool
    from training.shapes.run import _load_model
    from training.shapes.source import shapes_source

    weights = "hgc_tune/models/weights/shapes"
    source = shapes_source()
    pool = render_pool(source.render, source.train_seeds(pool_size))
    vae = _load_model(f"{weights}/base/vae", "AutoencoderKL").eval()
    means, stds = st.encode_pool_latents(vae, pool, device="cpu", batch_size=64)
    tokenizer = build_offline_tokenizer()
    torch.manual_seed(1)
    text_encoder = build_text_encoder(tokenizer).eval()
    conditioning = st.Conditioning(
        latent_means=means,
        latent_stds=stds,
        scaling_factor=float(vae.config.scaling_factor),
        prompt_embeds=st.encode_prompts(text_encoder, tokenizer, pool.prompts, device="cpu"),
        empty_embed=st.encode_prompts(text_encoder, tokenizer, [""], device="cpu"),
        prompt_dropout=0.1,
    )

    def models():
        unet = _load_model(f"{weights}/base/unet", "UNet2DConditionModel")
        controlnets = {
            c: _load_model(f"{weights}/controlnet-{c}", "ControlNetModel")
            for c in ("seg", "canny", "hed", "depth")
        }
        return unet, controlnets

    return pool, conditioning, st.DiffusionSchedule("cpu"), models


def main(argv: list[str] | None = None) -> int:
    import torch

    from training.shapes import stages as st

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="U-Net-only latents per step")
    parser.add_argument("--per-condition", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations per variant and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of alternation")
    parser.add_argument("--compile", action="store_true", help="also time the compiled joint step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pool, conditioning, schedule, models = _setup(args.per_condition, 512)
    generator = torch.Generator().manual_seed(0)
    log = st.LossLog()
    per_condition, uncontrolled = st.joint_batch_sizes(args.per_condition, 4, 0.2)
    per_step = {
        "unet": args.batch,
        "controlnet": 4 * args.per_condition,
        "joint": 4 * per_condition + uncontrolled,
    }
    per_step["joint+ema"] = per_step["joint+compile"] = per_step["joint"]

    def runner(name: str):
        unet, controlnets = models()
        common = dict(device="cpu", generator=generator, losses=log, log=lambda _: None, log_every=10**9)

        def runtime(budget):
            return st.StageRuntime(
                device="cpu", budget=budget, generator=generator, losses=log, log=lambda _: None
            )

        if name == "unet":
            return lambda budget: st.train_unet(
                unet, pool, conditioning, schedule, budget=budget, batch_size=args.batch, lr=1e-4, **common
            )
        if name == "controlnet":
            settings = st.ControlledSettings(batch_size=args.per_condition, lr=1e-4, log_every=10**9)
            return lambda budget: st.train_controlnets(
                controlnets, unet, pool, conditioning, schedule, settings, runtime(budget)
            )
        if name == "joint+compile":
            unet.compile()
            for controlnet in controlnets.values():
                controlnet.compile()
        ema = 0.998 if name == "joint+ema" else 0.0
        settings = st.ControlledSettings(
            batch_size=args.per_condition, lr=1e-4, log_every=10**9, ema_decay=ema
        )
        return lambda budget: st.train_joint(
            unet, controlnets, pool, conditioning, schedule, settings, runtime(budget)
        )

    names = ["unet", "controlnet", "joint", "joint+ema"] + (["joint+compile"] if args.compile else [])
    runners = {}
    warm = {}
    for name in names:
        runners[name] = runner(name)
        start = time.perf_counter()
        runners[name](st.StageBudget(seconds=None, iterations=2))  # warm-up (and compilation)
        warm[name] = time.perf_counter() - start
    seconds = {name: 0.0 for name in names}
    for _ in range(args.repeats):
        for name in names:
            start = time.perf_counter()
            runners[name](st.StageBudget(seconds=None, iterations=args.iterations))
            seconds[name] += time.perf_counter() - start
    rates = {n: per_step[n] * args.iterations * args.repeats / seconds[n] for n in names}
    print(f"threads={args.threads}, per-condition batch {args.per_condition}, U-Net batch {args.batch}")
    print("| step | samples per step | samples/s | relative to joint | warm-up s |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        relative = rates[name] / rates["joint"]
        print(f"| {name} | {per_step[name]} | {rates[name]:.1f} | {relative:.2f} | {warm[name]:.1f} |")
    print(json.dumps({"threads": args.threads, "samples_per_s": rates, "warmup_s": warm}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
