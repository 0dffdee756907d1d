"""Train the embedded ``shapes`` model: ``python -m training.shapes.train --out DIR --device cuda``.

Renders a pool of shapes-benchmark training scenes, trains a VAE, a U-Net and one ControlNet per condition
type (seg, canny, hed, depth) within ``--budget-minutes`` of wall time, saves them in diffusers format
(``DIR/base``, ``DIR/controlnet-<cond>``, safetensors), and runs a self-check on held-out scenes. Copy
``DIR`` to ``hgc_tune/models/weights/shapes`` to ship it, and ``DIR/reports`` to ``reports/``.

A run checkpoints ``DIR/checkpoint/checkpoint.pt`` between stages and at least every
``--checkpoint-minutes`` within one; ``--resume DIR`` continues it exactly where it stopped (a kill, SIGTERM,
or a stage with fixed ``--iterations`` that met this invocation's ``--budget-minutes``), so a long CPU run
can be spread over several invocations.

Examples (from the repository root, which puts both `training` and `hgc_tune` on the path):
    python -m training.shapes.train --out runs/shapes --device cuda --budget-minutes 7
    # the CPU recipe: warm start from the shipped weights, decoder then joint U-Net + ControlNet training
    python -m training.shapes.train --out runs/shapes --device cpu \
        --init-from hgc_tune/models/weights/shapes \
        --stages decoder,joint --iterations decoder=1500,joint=6000 --budget-minutes 120 --threads 2
    python -m training.shapes.train --resume runs/shapes --budget-minutes 120 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import diffusers
import torch
import transformers

from hgc_tune.errors import HgcTuneError
from training.shapes.run import STAGES, TrainConfig, TrainError, load_resume_state, run_training

__all__ = ["build_parser", "config_from_args", "main", "preflight"]

# Device-dependent defaults: big batches and pools on a GPU; what 2 CPU cores finish in ~90 minutes.
_DEFAULTS = {
    "cuda": {
        "budget_minutes": 7.0,
        "pool_size": 50_000,
        "vae_batch_size": 128,
        "unet_batch_size": 512,
        "controlnet_batch_size": 128,
        "decoder_batch_size": 128,
        "joint_batch_size": 64,
        "log_every": 100,
        "eval_reserve": 0.08,
    },
    "cpu": {
        "budget_minutes": 85.0,
        "pool_size": 4000,
        "vae_batch_size": 16,
        "unet_batch_size": 32,
        "controlnet_batch_size": 8,
        "decoder_batch_size": 32,
        "joint_batch_size": 8,
        "log_every": 10,
        "eval_reserve": 0.12,
    },
}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def _recorded_guidance(init_from: str | Path | None) -> tuple[float, ...]:
    """The self-check's default guidance: the recommended scale recorded with the weights trained on (the
    one ``analysis/recommend_guidance.py`` measured), else diffusers' SD1.5 default of 7.5."""
    from hgc_tune.models._guidance import weights_recommended_guidance

    recorded = weights_recommended_guidance(init_from) if init_from is not None else None
    return (recorded if recorded is not None else 7.5,)


def _iterations(text: str) -> dict[str, int]:
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        stage, _, count = item.partition("=")
        if stage not in STAGES or not count.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected STAGE=N with STAGE in {', '.join(STAGES)}, got {item!r}"
            )
        out[stage] = int(count)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (defaults that depend on ``--device`` are ``None`` here)."""
    p = argparse.ArgumentParser(prog="python -m training.shapes.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="output folder (required unless --resume)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run in DIR from its checkpoint, with its saved settings (only --budget-minutes, "
        "--threads, --workers and --checkpoint-minutes may be given anew)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="DIR",
        help="start from the models of a shapes-model folder, e.g. hgc_tune/models/weights/shapes (warm "
        "start); stages left out load them",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=TrainConfig.checkpoint_minutes,
        help="longest time between two checkpoints (default 5)",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=TrainConfig.ema_decay,
        help="EMA of the weights kept by every stage; the averages ship (default 0: off)",
    )
    p.add_argument(
        "--control-dropout",
        type=float,
        default=TrainConfig.control_dropout,
        help="share of each joint batch trained without control (default 0.2)",
    )
    p.add_argument(
        "--mean-loss-weight",
        type=float,
        default=TrainConfig.mean_loss_weight,
        help="weight of the channel-mean loss (joint and controlnet stages): the error of the predicted "
        "picture's overall colour, which the noise-prediction loss all but ignores at the noisy steps where "
        "the prompt's background is decided (default 0: off)",
    )
    p.add_argument(
        "--centre-latents",
        action="store_true",
        help="fold the pool's latent channel means into the VAE's biases before the diffusion stages, so "
        "they train on centred latents (sampling starts from zero-mean noise, so an offset latent space "
        "leaves the overall colour to the noisiest steps); the shipped VAE then encodes and draws the same "
        "pictures through any SD pipeline",
    )
    p.add_argument(
        "--noise-offset",
        type=float,
        default=TrainConfig.noise_offset,
        help="offset noise (joint and controlnet stages): a per-sample, per-channel constant of this "
        "standard deviation added to the training noise (default 0: off)",
    )
    p.add_argument(
        "--lr-text-encoder",
        type=float,
        default=TrainConfig.lr_text_encoder,
        help="train the text encoder in the joint stage at this peak learning rate (default 0: frozen)",
    )
    p.add_argument("--device", default="cuda", help="torch device (cuda, cpu); default cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-minutes", type=float, help="total wall time (default 7 on cuda, 85 on cpu)")
    p.add_argument(
        "--stages",
        default="vae,unet,controlnet",
        help=f"comma-separated subset of {','.join(STAGES)} (default vae,unet,controlnet)",
    )
    p.add_argument("--conditions", default="seg,canny,hed,depth", help="ControlNets to train")
    p.add_argument(
        "--continue-controlnets",
        action="store_true",
        help="start the ControlNets from those saved in --out and go on training them (with --stages "
        "controlnet: a second phase, e.g. on a CPU after a GPU run); the summary keeps the earlier phase",
    )
    p.add_argument("--iterations", type=_iterations, default={}, help="fixed counts, e.g. vae=2000,unet=8000")
    p.add_argument("--pool-size", type=int, help="training scenes rendered (default 50000 cuda, 4000 cpu)")
    p.add_argument("--workers", type=int, help="rendering processes (default: CPU count - 1)")
    p.add_argument("--vae-batch-size", type=int)
    p.add_argument("--unet-batch-size", type=int)
    p.add_argument("--controlnet-batch-size", type=int, help="scenes per condition type per iteration")
    p.add_argument("--decoder-batch-size", type=int)
    p.add_argument("--joint-batch-size", type=int, help="scenes per condition type per joint iteration")
    p.add_argument("--lr-vae", type=float, default=TrainConfig.lr_vae)
    p.add_argument("--lr-unet", type=float, default=TrainConfig.lr_unet)
    p.add_argument("--lr-controlnet", type=float, default=TrainConfig.lr_controlnet)
    p.add_argument("--lr-decoder", type=float, default=TrainConfig.lr_decoder)
    p.add_argument("--lr-joint", type=float, default=TrainConfig.lr_joint)
    p.add_argument("--eval-samples", type=int, default=16, help="self-check scenes per condition (0: skip)")
    p.add_argument(
        "--eval-guidance",
        type=_floats,
        help="guidance scales the self-check generates at, its bars judged at the first (default: the "
        "recommended guidance recorded with --init-from's weights, else 7.5)",
    )
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument(
        "--amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (auto: on CUDA)"
    )
    p.add_argument("--save-dtype", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--log-every", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--debug", action="store_true", help="print the traceback of an invalid-settings error too"
    )
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Fill the device-dependent defaults and build the :class:`TrainConfig`."""
    defaults = _DEFAULTS["cuda" if args.device.startswith("cuda") else "cpu"]

    def pick(name: str):
        value = getattr(args, name)
        return defaults[name] if value is None else value

    guidance = args.eval_guidance if args.eval_guidance is not None else _recorded_guidance(args.init_from)
    workers = args.workers if args.workers is not None else max(0, (os.cpu_count() or 1) - 1)
    return TrainConfig(
        out=args.out,
        device=args.device,
        seed=args.seed,
        budget_minutes=pick("budget_minutes"),
        stages=tuple(s for s in args.stages.split(",") if s),
        conditions=tuple(c for c in args.conditions.split(",") if c),
        iterations=args.iterations,
        continue_controlnets=args.continue_controlnets,
        pool_size=pick("pool_size"),
        workers=workers,
        vae_batch_size=pick("vae_batch_size"),
        unet_batch_size=pick("unet_batch_size"),
        controlnet_batch_size=pick("controlnet_batch_size"),
        decoder_batch_size=pick("decoder_batch_size"),
        joint_batch_size=pick("joint_batch_size"),
        lr_decoder=args.lr_decoder,
        lr_joint=args.lr_joint,
        control_dropout=args.control_dropout,
        mean_loss_weight=args.mean_loss_weight,
        lr_text_encoder=args.lr_text_encoder,
        noise_offset=args.noise_offset,
        centre_latents=args.centre_latents,
        ema_decay=args.ema_decay,
        init_from=args.init_from,
        checkpoint_minutes=args.checkpoint_minutes,
        lr_vae=args.lr_vae,
        lr_unet=args.lr_unet,
        lr_controlnet=args.lr_controlnet,
        eval_samples=args.eval_samples,
        eval_guidance=guidance,
        eval_steps=args.eval_steps,
        amp={"auto": None, "on": True, "off": False}[args.amp],
        save_dtype=args.save_dtype,
        log_every=pick("log_every"),
        eval_reserve_fraction=defaults["eval_reserve"],
    )


# Settings an invocation that resumes may choose anew: they change where and how long, not what is trained.
_RESUMABLE_FLAGS = {"resume", "budget_minutes", "threads", "workers", "checkpoint_minutes", "debug"}


def check_resume_flags(args: argparse.Namespace) -> None:
    """Refuse, before the checkpoint is read, a setting that ``--resume`` would silently ignore.

    Raises:
        TrainError: Another setting was given or --out names another folder.
    """
    parser = build_parser()
    given = sorted(
        name
        for name, value in vars(args).items()
        if name not in _RESUMABLE_FLAGS and value != parser.get_default(name)
    )
    if args.out is not None and Path(args.out).resolve() == Path(args.resume).resolve():
        given.remove("out")
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise TrainError(
            f"--resume continues a run with its saved settings; only --budget-minutes, --threads, --workers "
            f"and --checkpoint-minutes may be given with it, but got {flags}."
        )


def resumed_config(args: argparse.Namespace, state: dict) -> TrainConfig:
    """The saved settings of the run to resume, with this invocation's budget, workers and interval.

    Raises:
        TrainError: Another setting was given (it would silently be ignored) or --out names another folder.
    """
    check_resume_flags(args)
    parser = build_parser()
    config = TrainConfig.from_json(state["config"])
    changes = {"out": Path(args.resume)}
    for name in ("budget_minutes", "workers", "checkpoint_minutes"):
        if getattr(args, name) != parser.get_default(name):
            changes[name] = getattr(args, name)
    return dataclasses.replace(config, **changes)


def preflight(device: str) -> None:
    """Fail in seconds, not after rendering, when a dependency or the device is missing.

    Raises:
        TrainError: A missing module, or a CUDA device asked for where none is available.
    """
    missing = []
    for module in ("numpy", "scipy", "skimage", "PIL", "safetensors", "torch", "diffusers", "transformers"):
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{module} ({e})")
    if missing:
        raise TrainError(f"training needs these modules, which cannot be imported: {', '.join(missing)}.")

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"`--device {device}` asked for, but torch {torch.__version__} sees no CUDA device.")


def _quiet_libraries() -> None:
    """Keep the log to our lines: no per-load progress bars or cast warnings from diffusers/transformers."""
    # diffusers' `torch_dtype` -> `dtype` rename warns on every load; the run's log is for the lead.
    warnings.filterwarnings("ignore", category=FutureWarning)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None, source=None) -> int:
    """Run the training.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` by default).
        source: A :class:`training.shapes.source.SceneSource` replacing the shapes benchmark (tests).

    Returns:
        0 on success (self-check ran; its bars are reported, not enforced), 1 if training or the self-check
        failed (whatever was saved stays, with ``training.json``), 2 for invalid settings or a checkpoint
        that cannot be resumed (one line; ``--debug`` adds the traceback), 3 when the run stopped at a
        checkpoint (its budget ran out before a fixed iteration count, or a signal): continue it with
        ``--resume``.
    """
    start = time.monotonic()
    log = functools.partial(print, flush=True)
    args = build_parser().parse_args(argv)
    try:
        state = None
        if args.resume is not None:
            check_resume_flags(args)
            state = load_resume_state(args.resume)
            config = resumed_config(args, state)
        elif args.out is None:
            raise TrainError("--out is required (or --resume DIR to continue a run).")
        else:
            config = config_from_args(args)
        config.check()
        preflight(config.device)
        _quiet_libraries()
        if args.threads:
            torch.set_num_threads(args.threads)
        log(f"training.shapes.train: {'resuming ' if state else ''}{config}")
        summary = run_training(config, source=source, log=log, start=start, resume_state=state)
    except HgcTuneError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except Exception:
        print(f"training failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return 1
    if "interrupted" in summary:
        return 3
    check = summary.get("self_check", {})
    if "error" in check:
        return 1
    if check:
        log(f"self-check at guidance {check['judged_guidance']:g}; all bars pass: {check['all_pass']}")
    out = config.out
    log(
        f"measure the recommended guidance: python analysis/recommend_guidance.py --weights {out} --write; "
        f"to ship: copy {out}/base, {out}/controlnet-* and {out}/training.json to "
        f"hgc_tune/models/weights/shapes/, and {out}/reports/* to reports/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
