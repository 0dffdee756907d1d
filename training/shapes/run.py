"""The whole training run of the ``shapes`` model: render, train the stages, save, self-check."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextModel

from hgc_tune._atomic import atomic_write_text
from hgc_tune._json import load_json_file
from hgc_tune.errors import HgcTuneError, TrainingCheckpointError
from hgc_tune.models._loading import make_scheduler
from hgc_tune.models._shapes import SHAPES_CONDITIONS, controlnet_dir
from hgc_tune.models._tokenizer import build_offline_tokenizer
from training.shapes import stages as st
from training.shapes.architecture import build_controlnet, build_text_encoder, build_unet, build_vae
from training.shapes.pool import render_pool
from training.shapes.resume import Checkpointer, StopRequested, stop_on_signals
from training.shapes.selfcheck import self_check
from training.shapes.source import SceneSource, shapes_source
from training.shapes.stages import LoopResume, LossLog, StageBudget

__all__ = ["CHECKPOINT_DIR", "STAGES", "TrainConfig", "TrainError", "load_resume_state", "run_training"]

# In run order. `decoder` trains the VAE's decoder on with the encoder frozen; `joint` trains the U-Net and
# the ControlNets together (the alternative to `controlnet`, which trains them against a frozen U-Net).
STAGES: tuple[str, ...] = ("vae", "decoder", "unet", "controlnet", "joint")
# Offsets of the seeds derived from TrainConfig.seed, one per consumer, so that changing one stage's
# randomness (or skipping it) leaves the others' unchanged.
_SEEDS = {"text_encoder": 1, "vae": 2, "unet": 3, "controlnet": 4, "decoder": 5, "joint": 6, "eval": 10_000}
CHECKPOINT_DIR = "checkpoint"

Log = Callable[[str], None]


class TrainError(HgcTuneError):
    """A training configuration or run that cannot proceed."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the CLI's flags).

    Attributes:
        out: Output folder (``base/``, ``controlnet-<cond>/``, ``training.json``, ``reports/``).
        device: Torch device (``cuda``, ``cpu``).
        seed: Seeds model initialisation, data order and noise.
        budget_minutes: Total wall time, rendering and self-check included.
        stages: Stages to run; a stage left out is loaded from ``out`` (it must have been trained there).
        fractions: Share of the training time of each stage (renormalised over the stages still to run).
        iterations: Fixed iteration counts per stage (reproducible runs, tests, runs spread over several
            invocations). A stage with a fixed count that meets its deadline first is not done: it saves a
            checkpoint and the run stops, to go on with ``--resume``.
        pool_size: Training scenes rendered up front.
        workers: Rendering processes (0 or 1: in this process).
        vae_batch_size: Pictures per VAE iteration.
        unet_batch_size: Latents per U-Net iteration.
        controlnet_batch_size: Scenes per condition type per ControlNet iteration.
        lr_vae: Peak learning rate of the VAE (AdamW, warm-up then cosine decay to 10%).
        lr_unet: Same for the U-Net.
        lr_controlnet: Same for the ControlNets.
        prompt_dropout: Fraction of empty prompts in U-Net training (classifier-free guidance).
        controlnet_prompt_dropout: Same for the ControlNets.
        controlnet_embedding_init_std: Initialisation of the conditioning embedding's output convolution
            (0 = diffusers' zero init; the residual convolutions stay zero either way).
        init_from: A shapes-model folder (e.g. the shipped ``hgc_tune/models/weights/shapes``) whose models
            start the run: its ``base/`` and ``controlnet-*`` are copied into ``out`` where ``out`` has none,
            and stages left out load them from there (warm start).
        checkpoint_minutes: Longest time between two checkpoints of a stage's loop (``out/checkpoint``).
        ema_decay: Decay of the exponential moving average of the weights that every stage keeps and
            ships (0: no EMA, the last weights ship).
        decoder_batch_size: Latents per decoder iteration.
        joint_batch_size: Scenes per condition type per joint iteration.
        lr_decoder: Peak learning rate of the decoder stage.
        lr_joint: Peak learning rate of the joint stage (U-Net and ControlNets alike).
        control_dropout: Share of each joint batch trained without control (keeps the base model usable
            on its own, which classifier-free sampling with a dropped ControlNet relies on).
        continue_controlnets: Start each ControlNet from the one saved in ``out`` and go on training it
            (a second phase, e.g. on another machine) instead of from a copy of the U-Net's encoder. The
            summary keeps the earlier phases under ``stages.controlnet.continued_from`` and the loss curve
            goes on from their last iteration; the self-check covers every ControlNet saved in ``out``.
        conditions: ControlNets to train.
        eval_samples: Held-out scenes per condition type in the self-check (0: skip it).
        eval_guidance: Guidance scales the self-check generates at; its bars are judged at the first. It
            chooses no guidance: the weights' recommended scale is measured afterwards by
            ``analysis/recommend_guidance.py --weights OUT --write``.
        eval_steps: Denoising steps of the self-check (UniPC).
        amp: bf16 autocast; ``None`` = on for CUDA, off on CPU.
        save_dtype: ``fp16`` (ships in ~36 MB) or ``fp32``. With fp16, weights are rounded through fp16
            after each stage, so later stages train against exactly the weights that ship.
        log_every: Iterations between loss lines.
        mean_loss_weight: Weight of the channel-mean loss of the joint and ControlNet stages: the squared
            error of each latent channel's spatial mean of the predicted picture, i.e. its overall colour
            (on the benchmark the background's, which only the prompt names), added to the
            noise-prediction loss (0: off).
        noise_offset: Offset noise of the joint and ControlNet stages: a per-sample, per-channel Gaussian
            constant of this standard deviation added to the training noise, which hides the picture's
            overall colour that SD1.5's schedule leaves in the noisiest inputs (0: off).
        lr_text_encoder: Peak learning rate of the text encoder, trained in the joint stage with the U-Net
            (0: frozen, its prompt embeddings computed once).
        centre_latents: Fold the pool's latent channel means into a loaded VAE's biases, so the latents the
            later stages train on are centred (the U-Net then has to relearn its inputs' offset).
        render_fraction: Budget share after which rendering stops (keeping the scenes done).
        eval_reserve_fraction: Budget share kept for saving and the self-check.
    """

    out: Path
    device: str = "cuda"
    seed: int = 0
    budget_minutes: float = 7.0
    stages: tuple[str, ...] = STAGES
    fractions: Mapping[str, float] = field(
        default_factory=lambda: {"vae": 0.15, "decoder": 0.1, "unet": 0.42, "controlnet": 0.43, "joint": 0.6}
    )
    iterations: Mapping[str, int] = field(default_factory=dict)
    pool_size: int = 50_000
    workers: int = 0
    vae_batch_size: int = 128
    unet_batch_size: int = 512
    controlnet_batch_size: int = 128
    lr_vae: float = 4e-4
    lr_unet: float = 3e-4
    lr_controlnet: float = 2e-4
    prompt_dropout: float = 0.1
    controlnet_prompt_dropout: float = 0.1
    controlnet_embedding_init_std: float = 0.01
    init_from: Path | None = None
    checkpoint_minutes: float = 5.0
    ema_decay: float = 0.0
    decoder_batch_size: int = 128
    joint_batch_size: int = 64
    lr_decoder: float = 2e-4
    lr_joint: float = 1e-4
    control_dropout: float = 0.2
    continue_controlnets: bool = False
    conditions: tuple[str, ...] = SHAPES_CONDITIONS
    eval_samples: int = 16
    eval_guidance: tuple[float, ...] = (7.5,)
    eval_steps: int = 20
    amp: bool | None = None
    save_dtype: str = "fp16"
    log_every: int = 100
    render_fraction: float = 0.15
    eval_reserve_fraction: float = 0.08
    mean_loss_weight: float = 0.0
    lr_text_encoder: float = 0.0
    noise_offset: float = 0.0
    centre_latents: bool = False

    def check(self) -> None:
        """Raise :class:`TrainError` for an invalid setting."""
        if not self.stages or any(s not in STAGES for s in self.stages):
            raise TrainError(
                f"`stages` must be a non-empty subset of {', '.join(STAGES)}, but got stages={self.stages}."
            )
        if not self.conditions or any(c not in SHAPES_CONDITIONS for c in self.conditions):
            raise TrainError(
                f"`conditions` must be a non-empty subset of {', '.join(SHAPES_CONDITIONS)}, "
                f"but got conditions={self.conditions}."
            )
        if not self.budget_minutes > 0:
            raise TrainError(f"`budget_minutes` must be > 0, but got budget_minutes={self.budget_minutes}.")
        for name in (
            "pool_size",
            "vae_batch_size",
            "unet_batch_size",
            "controlnet_batch_size",
            "decoder_batch_size",
            "joint_batch_size",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise TrainError(f"`{name}` must be >= 1, but got {name}={getattr(self, name)}.")
        if self.eval_samples < 0 or self.eval_steps < 1 or not self.eval_guidance:
            raise TrainError(
                "`eval_samples` must be >= 0, `eval_steps` >= 1 and `eval_guidance` non-empty, but got "
                f"eval_samples={self.eval_samples}, eval_steps={self.eval_steps}, "
                f"eval_guidance={self.eval_guidance}."
            )
        if self.save_dtype not in ("fp16", "fp32"):
            raise TrainError(
                f"`save_dtype` must be 'fp16' or 'fp32', but got save_dtype={self.save_dtype!r}."
            )
        for stage, n in self.iterations.items():
            if stage not in STAGES or n < 1:
                raise TrainError(f"`iterations` must map stages to counts >= 1, but got {stage}={n}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainError(f"`ema_decay` must be in [0, 1), but got ema_decay={self.ema_decay}.")
        if not 0.0 <= self.control_dropout < 1.0:
            raise TrainError(
                f"`control_dropout` must be in [0, 1), but got control_dropout={self.control_dropout}."
            )
        for name in ("mean_loss_weight", "lr_text_encoder", "noise_offset"):
            if not 0.0 <= getattr(self, name) < float("inf"):
                raise TrainError(f"`{name}` must be finite and >= 0, but got {name}={getattr(self, name)}.")
        if not self.checkpoint_minutes >= 0:
            raise TrainError(
                f"`checkpoint_minutes` must be >= 0, but got checkpoint_minutes={self.checkpoint_minutes}."
            )
        if self.init_from is not None and not (Path(self.init_from) / "base" / "model_index.json").is_file():
            raise TrainError(
                f"`init_from` must be a shapes-model folder (with base/model_index.json), but got "
                f"init_from={str(self.init_from)!r}."
            )

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready data (what ``training.json`` and checkpoints record)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_json`."""
        values = dict(data)
        for name in ("stages", "conditions", "eval_guidance"):
            values[name] = tuple(values[name])
        values["out"] = Path(values["out"])
        values["init_from"] = None if values.get("init_from") is None else Path(values["init_from"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# ------------------------------------------------------------------------------------------------ saving


def _round_weights(model, dtype: str):
    """Round ``model``'s weights through ``dtype`` in place, so that later stages see what ships."""
    if dtype == "fp16":
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.is_floating_point():
                    tensor.copy_(tensor.to(torch.float16).to(tensor.dtype))
    return model


def _cpu_copy(model, dtype: str):
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "_name_or_path" in config:
        # A diffusers model loaded from disk remembers its folder; what ships must not name this machine's
        # paths. Its config cannot be edited through a public API, so the copy is built from the config
        # without the path and given the weights (byte-identical once saved). Its throwaway random init must
        # not move the training's random stream.
        with torch.random.fork_rng(devices=[]):
            clone = type(model).from_config({k: v for k, v in config.items() if k != "_name_or_path"})
        clone.load_state_dict(model.state_dict(), strict=True)
        if clone.dtype != model.dtype:
            clone = clone.to(dtype=model.dtype)
    else:
        clone = copy.deepcopy(model).to("cpu")
    if dtype == "fp16":
        with torch.no_grad():
            for tensor in [*clone.parameters(), *clone.buffers()]:
                if tensor.is_floating_point():
                    tensor.data = tensor.data.to(torch.float16)
    return clone


def _save_model(model, path: Path, dtype: str) -> None:
    _cpu_copy(model, dtype).save_pretrained(str(path), safe_serialization=True)


def _save_base(path: Path, *, vae, text_encoder, tokenizer, unet, dtype: str) -> None:
    """Save a ``StableDiffusionPipeline`` folder without safety checker; ControlNet pipelines load it."""
    pipe = StableDiffusionPipeline(
        vae=_cpu_copy(vae, dtype),
        text_encoder=_cpu_copy(text_encoder, dtype),
        tokenizer=tokenizer,
        unet=_cpu_copy(unet, dtype),
        scheduler=make_scheduler("unipc"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)


# Pool latent channel means within this of zero count as centred (fp16 rounding of the folded biases
# leaves about 1e-3), so --centre-latents on a resumed or continued run changes nothing more.
_CENTRED_WITHIN = 0.05
# What a stage left out of `stages` is loaded from, relative to `out`.
_SAVED = {"vae": ("base/vae", "AutoencoderKL"), "unet": ("base/unet", "UNet2DConditionModel")}


def _check_saved(config: TrainConfig) -> None:
    """Raise :class:`TrainError` before any work if a stage left out (or a ControlNet to continue) has no
    saved output to load."""
    for stage, (folder, class_name) in _SAVED.items():
        path = Path(config.out) / folder
        if stage not in config.stages and not (path / "config.json").is_file():
            raise TrainError(
                f"stage {stage!r} is not in `stages` and {path} holds no saved {class_name}; add {stage} "
                "to --stages, or point --out at the folder of a run that trained it."
            )
    if config.continue_controlnets:
        if "controlnet" not in config.stages:
            raise TrainError("`continue_controlnets` needs the controlnet stage in `stages`.")
        for condition in config.conditions:
            path = controlnet_dir(config.out, condition)
            if not (path / "config.json").is_file():
                raise TrainError(
                    f"`continue_controlnets` is set but {path} holds no saved ControlNetModel to continue; "
                    "drop --continue-controlnets, or point --out at the folder of a run that trained it."
                )


def _seed_from(init_from: Path, out: Path) -> None:
    """Copy the models (and summary) of ``init_from`` into ``out`` where ``out`` has none (warm start)."""
    out.mkdir(parents=True, exist_ok=True)
    for source in [Path(init_from) / "base", *sorted(Path(init_from).glob("controlnet-*"))]:
        target = out / source.name
        if source.is_dir() and not target.exists():
            shutil.copytree(source, target)
    summary = Path(init_from) / "training.json"
    if summary.is_file() and not (out / "training.json").exists():
        shutil.copyfile(summary, out / "training.json")


# The weights' former home (the trainer lived in the package then): settings saved before the move name it.
_MOVED_WEIGHTS = {"hgc_tune/zoo/weights": "hgc_tune/models/weights/shapes"}


def load_resume_state(out: Path) -> dict[str, Any]:
    """The checkpoint a run in ``out`` left, to continue it (see :func:`run_training`).

    The checkpoint is read with ``torch.load(weights_only=True)`` only, then checked before any work: its
    run settings (``config``) must rebuild a :class:`TrainConfig`, and a stage's loop state must hold one
    weights dict per model that stage trains. Whether those weights fit the models is checked when the
    stage restores them (:class:`~hgc_tune.errors.TrainingCheckpointError` there too). A checkpoint saved
    before the trainer left the package names the shipped weights by their old folder; that name is mapped
    to the new one.

    Raises:
        TrainError: There is no checkpoint, or its run already finished.
        TrainingCheckpointError: The checkpoint is unreadable, not the shapes trainer's, or lacks its
            settings or its loop state.
    """
    checkpointer = Checkpointer(Path(out) / CHECKPOINT_DIR, 0)
    state = checkpointer.load()
    if state is None:
        raise TrainError(
            f"nothing to resume: {Path(out) / CHECKPOINT_DIR} holds no checkpoint; start the run without "
            "--resume."
        )
    fix = f"delete {checkpointer.folder} and start the run again without --resume"
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise TrainingCheckpointError(
            f"{checkpointer.path} holds no run settings (`config`), so it is not a checkpoint of this "
            f"trainer; {fix}."
        )
    try:
        config = TrainConfig.from_json(saved)
    except (KeyError, TypeError, ValueError) as e:
        raise TrainingCheckpointError(
            f"{checkpointer.path} holds run settings this trainer cannot read ({type(e).__name__}: {e}); "
            f"{fix}."
        ) from e
    missing = [key for key in ("summary", "curves", "pool_scenes", "completed", "loop") if key not in state]
    if missing:
        raise TrainingCheckpointError(
            f"{checkpointer.path} lacks {', '.join(missing)}, so it is not a checkpoint of this trainer; "
            f"{fix}."
        )
    _check_loop(state["loop"], config, checkpointer.path, fix)
    if all(stage in state["completed"] for stage in config.stages):
        raise TrainError(f"the run in {out} finished every stage; there is nothing to resume.")
    init_from = saved.get("init_from")
    if init_from in _MOVED_WEIGHTS and not Path(init_from).exists():
        state["config"] = {**saved, "init_from": _MOVED_WEIGHTS[init_from]}
    return state


def _check_loop(loop: Any, config: TrainConfig, path: Path, fix: str) -> None:
    """A stage's loop state holds one weights dict per model the stage trains (or there is none)."""
    if loop is None:
        return
    stage = loop.get("stage") if isinstance(loop, dict) else None
    if stage not in config.stages:
        raise TrainingCheckpointError(
            f"{path} holds the loop state of stage {stage!r}, which its run (stages "
            f"{', '.join(config.stages)}) does not train; {fix}."
        )
    count = {"vae": 1, "decoder": 2, "unet": 1, "controlnet": len(config.conditions)}.get(
        stage, 1 + len(config.conditions) + (config.lr_text_encoder > 0)
    )
    modules = loop.get("modules")
    if (
        not isinstance(modules, list)
        or len(modules) != count
        or not all(isinstance(m, dict) for m in modules)
    ):
        got = len(modules) if isinstance(modules, list) else type(modules).__name__
        raise TrainingCheckpointError(
            f"{path} holds {got} weights dicts for stage {stage!r}, but that stage trains {count} models "
            f"(conditions {', '.join(config.conditions)}); {fix}."
        )


def _load_model(path: Path, class_name: str):
    """A saved diffusers model, in fp32 for training whatever it was saved in."""
    return getattr(diffusers, class_name).from_pretrained(str(path), torch_dtype=torch.float32).float()


def _load(out: Path, stage: str):
    folder, class_name = _SAVED[stage]
    return _load_model(out / folder, class_name)


def _megabytes(paths) -> float:
    return sum(f.stat().st_size for p in paths if p.exists() for f in p.rglob("*") if f.is_file()) / 1e6


# --------------------------------------------------------------------------------------------------- run


class _Timeline:
    """The run's clock: a total deadline, minus a reserve for saving and the self-check."""

    def __init__(self, config: TrainConfig, start: float) -> None:
        self.start = start
        self.end = start + 60.0 * config.budget_minutes
        self.reserve = 60.0 * config.budget_minutes * config.eval_reserve_fraction
        self.render_deadline: float | None = start + 60.0 * config.budget_minutes * config.render_fraction
        self.fractions = dict(config.fractions)

    def stage_seconds(self, stage: str, remaining_stages: list[str]) -> float:
        """This stage's share of the time left before the reserve (at least one second)."""
        left = max(0.0, self.end - self.reserve - time.monotonic())
        total = sum(self.fractions.get(s, 0.0) for s in remaining_stages) or 1.0
        return max(1.0, left * self.fractions.get(stage, 0.0) / total)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class _Run:
    """One training run's state; the phases are methods so that :func:`run_training` reads as a list."""

    def __init__(
        self,
        config: TrainConfig,
        source: SceneSource,
        log: Log,
        start: float,
        restored: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.log = log
        self.timeline = _Timeline(config, start)
        self.device = config.device
        self.is_cuda = self.device.startswith("cuda")
        self.amp = self.is_cuda if config.amp is None else bool(config.amp)
        self.encode_batch = 512 if self.is_cuda else 64
        self.out = Path(config.out)
        self.base_dir = self.out / "base"
        self.reports = self.out / "reports"
        self.reports.mkdir(parents=True, exist_ok=True)
        self.controlnet_dirs = {c: controlnet_dir(self.out, c) for c in config.conditions}
        self.losses = LossLog()
        # Set when continuing the ControlNets of an earlier run (see TrainConfig.continue_controlnets).
        self.earlier_controlnet_stage: dict[str, Any] | None = None
        self.earlier_controlnet_curve: list[dict[str, float]] = []
        self.checkpointer = Checkpointer(self.out / CHECKPOINT_DIR, 60.0 * config.checkpoint_minutes)
        self.restored = restored
        self.completed: list[str] = []
        if restored is not None:
            self.summary = restored["summary"]
            self.losses.curves = restored["curves"]
            self.completed = list(restored["completed"])
            self.timeline.render_deadline = None
        else:
            self.summary = {
                "config": config.to_json(),
                "torch": str(torch.__version__),  # a plain str: checkpoints load with weights_only
                "splits": source.split_note,
                "stages": {},
            }
            self._carry_over_skipped_stages()
        if self.is_cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True

    # -- bookkeeping --------------------------------------------------------------------------------------

    def _carry_over_skipped_stages(self) -> None:
        """Keep the summary and loss curves of stages loaded from an earlier run in ``out``."""
        skipped = [s for s in STAGES if s not in self.config.stages]
        # Each file on its own: a warm start (init_from) brings a summary but no loss curves.
        try:
            previous = load_json_file(self.out / "training.json", what="training summary")
        except HgcTuneError:
            return
        try:
            curves = load_json_file(self.reports / "zoo-train-losses.json", what="loss curves")["curves"]
        except (HgcTuneError, KeyError, TypeError):
            curves = {}
        for stage in skipped:
            if stage in previous.get("stages", {}):
                self.summary["stages"][stage] = {**previous["stages"][stage], "from_earlier_run": True}
            if stage in curves:
                self.losses.curves[stage] = curves[stage]
        if self.config.continue_controlnets:
            self.earlier_controlnet_stage = previous.get("stages", {}).get("controlnet")
            self.earlier_controlnet_curve = curves.get("controlnet", [])
        if "vae" in skipped and "latents" in previous:
            self.summary["latents"] = previous["latents"]

    def to_do(self, stage: str) -> bool:
        """Whether ``stage`` runs now (asked for and not completed before a resume)."""
        return stage in self.config.stages and stage not in self.completed

    def run_state(self) -> dict[str, Any]:
        """The run-level part of a checkpoint: enough to rebuild the run around a stage's loop state."""
        return {
            "config": self.config.to_json(),
            "summary": copy.deepcopy(self.summary),
            "curves": copy.deepcopy(self.losses.curves),
            "pool_scenes": self.summary.get("pool", {}).get("scenes"),
            "completed": list(self.completed),
            "loop": None,
        }

    def checkpoint(self) -> None:
        """Save a checkpoint between stages (no loop state: the next stage starts afresh on resume)."""
        self.checkpointer.save(self.run_state())

    def resume_for(self, stage: str, generator):
        """The loop's :class:`~training.shapes.stages.LoopResume`, with its saved state when resuming it."""
        loop = None if self.restored is None else self.restored.get("loop")
        restored = loop if loop is not None and loop["stage"] == stage else None
        return LoopResume(self.checkpointer, generator, self.run_state, restored)

    def seed(self, consumer: str) -> int:
        return self.config.seed * 1000 + _SEEDS[consumer]

    def generator(self, consumer: str):
        return torch.Generator(self.device).manual_seed(self.seed(consumer))

    def write_reports(self) -> None:
        """Rewrite ``training.json`` and the loss curves (after every stage, and at the end)."""
        self.summary["elapsed_seconds"] = round(self.timeline.elapsed(), 1)
        # What ships (the copy instruction says `controlnet-*`), ControlNets not trained now included.
        self.summary["size_mb"] = round(_megabytes([self.base_dir, *self.out.glob("controlnet-*")]), 2)
        atomic_write_text(
            self.out / "training.json", json.dumps(self.summary, indent=2, sort_keys=True) + "\n"
        )
        curves = json.dumps(self.losses.to_json(), indent=1, sort_keys=True) + "\n"
        atomic_write_text(self.reports / "zoo-train-losses.json", curves)
        try:
            self.losses.plot(self.reports / "zoo-train-losses.png")
        except Exception as e:  # a plotting problem must not cost a trained model
            self.log(f"  (loss plot failed: {type(e).__name__}: {e})")

    def budget(self, stage: str):
        remaining = [s for s in STAGES[STAGES.index(stage) :] if self.to_do(s)]
        seconds = self.timeline.stage_seconds(stage, remaining)
        fixed = self.config.iterations.get(stage)
        self.log(f"stage {stage}: up to {seconds:.0f} s" + (f", {fixed} iterations" if fixed else ""))
        sync = torch.cuda.synchronize if self.is_cuda else (lambda: None)
        return StageBudget(seconds=seconds, iterations=fixed, sync=sync)

    def runtime(self, stage: str, generator) -> st.StageRuntime:
        """The :class:`~training.shapes.stages.StageRuntime` of ``stage``: its budget, generator, loss log,
        log and checkpoints."""
        return st.StageRuntime(
            device=self.device,
            budget=self.budget(stage),
            generator=generator,
            losses=self.losses,
            log=self.log,
            amp=self.amp,
            resume=self.resume_for(stage, generator),
        )

    def record(self, stage: str, result, **extra: Any) -> None:
        self.summary["stages"][stage] = {**asdict(result), **extra}
        self.log(f"stage {stage} done: {result.iterations} iterations in {result.seconds:.1f} s")
        self.completed.append(stage)
        self.write_reports()
        self.checkpoint()

    # -- phases -------------------------------------------------------------------------------------------

    def render(self):
        config = self.config
        # A resumed run renders exactly the scenes of the run it continues (their count is saved).
        size = config.pool_size if self.restored is None else int(self.restored["pool_scenes"])
        self.log(f"rendering {size} training scenes ({config.workers} workers) ...")
        batch = max(config.unet_batch_size, config.controlnet_batch_size, config.vae_batch_size)
        pool = render_pool(
            self.source.render,
            self.source.train_seeds(size),
            workers=config.workers,
            deadline=self.timeline.render_deadline,
            min_scenes=min(size, 2 * batch),
            device=self.device,
            log=self.log,
        )
        seconds = round(self.timeline.elapsed(), 1)
        self.summary["pool"] = {
            "scenes": len(pool),
            "distinct_prompts": len(pool.prompts),
            "seconds": seconds,
        }
        # CUDA is touched only now: the rendering workers were forked from this process.
        self.summary["device_name"] = torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"
        self.log(f"pool: {len(pool)} scenes, {len(pool.prompts)} distinct prompts ({seconds} s)")
        return pool

    def text_encoder(self, tokenizer):
        saved = self.base_dir / "text_encoder" / "config.json"
        if saved.is_file() and not self.to_do("vae"):
            encoder = CLIPTextModel.from_pretrained(str(saved.parent)).float()
        else:
            torch.manual_seed(self.seed("text_encoder"))
            encoder = _round_weights(build_text_encoder(tokenizer), self.config.save_dtype)
        return encoder.to(self.device).eval().requires_grad_(False)

    def vae(self, pool):
        """Train (or load) the VAE; returns it with the pool's latent means/stds and the scaling factor."""
        config = self.config
        if not self.to_do("vae"):
            vae = _load(self.out, "vae").to(self.device).eval()
            vae.requires_grad_(False)
            means, stds = st.encode_pool_latents(
                vae, pool, device=self.device, amp=self.amp, batch_size=self.encode_batch
            )
            if config.centre_latents:
                means, stds = self.centre_latents(vae, pool, means, stds)
            return vae, means, stds, float(vae.config.scaling_factor)
        torch.manual_seed(self.seed("vae"))
        vae = build_vae().to(self.device)
        generator = self.generator("vae")
        result = st.train_vae(
            vae,
            pool,
            device=self.device,
            amp=self.amp,
            budget=self.budget("vae"),
            batch_size=config.vae_batch_size,
            lr=config.lr_vae,
            generator=generator,
            losses=self.losses,
            log=self.log,
            log_every=config.log_every,
            ema_decay=config.ema_decay,
            resume=self.resume_for("vae", generator),
        )
        _round_weights(vae, config.save_dtype)
        means, stds = st.encode_pool_latents(
            vae, pool, device=self.device, amp=self.amp, batch_size=self.encode_batch
        )
        if config.centre_latents:
            means, stds = self.centre_latents(vae, pool, means, stds)
        scaling = st.latent_scaling_factor(means, stds, generator)
        vae.register_to_config(scaling_factor=scaling)
        _save_model(vae, self.base_dir / "vae", config.save_dtype)
        self.summary["latents"] = {
            **self.summary.get("latents", {}),
            "scaling_factor": scaling,
            "mean": float(means.mean()),
            "channel_means": [float(x) for x in means.mean(dim=(0, 2, 3))],
            "posterior_std_mean": float(stds.mean()),
        }
        self.log(f"latent scaling factor {scaling:.4f} (latent mean {float(means.mean()):.3f})")
        self.record("vae", result)
        return vae, means, stds, scaling

    def centre_latents(self, vae, pool, means, stds):
        """Centre a loaded VAE's latents on the pool (see :func:`~training.shapes.stages.centre_vae_latents`),
        save it and return the pool's latents re-encoded. The scaling factor stays: the U-Net trained on
        these latents sees the same spread, only the offset goes.

        Idempotent, so a resumed run does the same: latents already centred within
        ``_CENTRED_WITHIN`` are left alone."""
        shift = means.mean(dim=(0, 2, 3))
        if float(shift.abs().max()) <= _CENTRED_WITHIN:
            return means, stds
        st.centre_vae_latents(vae, shift)
        _round_weights(vae, self.config.save_dtype)
        _save_model(vae, self.base_dir / "vae", self.config.save_dtype)
        means, stds = st.encode_pool_latents(
            vae, pool, device=self.device, amp=self.amp, batch_size=self.encode_batch
        )
        centred = means.mean(dim=(0, 2, 3))
        self.summary["latents"] = {
            **self.summary.get("latents", {}),
            "channel_means": [float(x) for x in centred],
            "mean": float(means.mean()),
            "centred_by": [float(x) for x in shift],
        }
        before, after = (", ".join(f"{float(x):.3f}" for x in v) for v in (shift, centred))
        self.log(f"latents centred: channel means {before} -> {after}")
        return means, stds

    def unet(self, pool, conditioning, schedule, *, vae, text_encoder, tokenizer):
        config = self.config
        if not self.to_do("unet"):
            unet = _load(self.out, "unet")
            if "vae" in config.stages:  # a new VAE with an old U-Net: keep the base folder whole
                _save_base(
                    self.base_dir,
                    vae=vae,
                    text_encoder=text_encoder,
                    tokenizer=tokenizer,
                    unet=unet,
                    dtype=config.save_dtype,
                )
            return unet.to(self.device).eval().requires_grad_(False)
        torch.manual_seed(self.seed("unet"))
        unet = build_unet().to(self.device)
        generator = self.generator("unet")
        result = st.train_unet(
            unet,
            pool,
            conditioning,
            schedule,
            device=self.device,
            amp=self.amp,
            budget=self.budget("unet"),
            batch_size=config.unet_batch_size,
            lr=config.lr_unet,
            generator=generator,
            losses=self.losses,
            log=self.log,
            log_every=config.log_every,
            ema_decay=config.ema_decay,
            resume=self.resume_for("unet", generator),
        )
        self.ship_unet(unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        self.record("unet", result)
        return unet

    def starting_controlnets(self, unet, *, load_saved: bool) -> dict[str, Any]:
        """The ControlNets a stage trains: those saved in ``out`` (when ``load_saved`` and they are there),
        else fresh copies of ``unet``'s encoder."""
        controlnets = {}
        for i, condition in enumerate(self.config.conditions):
            if load_saved and (self.controlnet_dirs[condition] / "config.json").is_file():
                controlnet = _load_model(self.controlnet_dirs[condition], "ControlNetModel")
            else:
                torch.manual_seed(self.seed("controlnet") + 10 * i)
                controlnet = build_controlnet(unet, self.config.controlnet_embedding_init_std)
            controlnets[condition] = controlnet.to(self.device)
        return controlnets

    def ship_unet(self, unet, *, vae, text_encoder, tokenizer) -> None:
        """Round a trained U-Net's weights to what ships and save the base folder with it."""
        _round_weights(unet, self.config.save_dtype)
        _save_base(
            self.base_dir,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            dtype=self.config.save_dtype,
        )

    def controlnets(self, pool, conditioning, schedule, unet) -> None:
        config = self.config
        # _check_saved made sure that the ControlNets to continue are saved
        controlnets = self.starting_controlnets(unet, load_saved=config.continue_controlnets)
        generator = self.generator("controlnet")
        settings = st.ControlledSettings(
            batch_size=config.controlnet_batch_size,
            lr=config.lr_controlnet,
            prompt_dropout=config.controlnet_prompt_dropout,
            log_every=config.log_every,
            ema_decay=config.ema_decay,
            mean_loss_weight=config.mean_loss_weight,
            noise_offset=config.noise_offset,
        )
        result = st.train_controlnets(
            controlnets, unet, pool, conditioning, schedule, settings, self.runtime("controlnet", generator)
        )
        for condition, controlnet in controlnets.items():
            _save_model(controlnet, self.controlnet_dirs[condition], config.save_dtype)
        if config.continue_controlnets:
            self._join_earlier_controlnet_phase()
            self.record("controlnet", result, continued_from=self.earlier_controlnet_stage)
        else:
            self.record("controlnet", result)

    def decoder(self, pool, vae, conditioning) -> None:
        """Train the VAE's decoder on (encoder frozen, so the latents stay) and save the VAE."""
        config = self.config
        generator = self.generator("decoder")
        result = st.train_decoder(
            vae,
            pool,
            conditioning,
            device=self.device,
            amp=self.amp,
            budget=self.budget("decoder"),
            batch_size=config.decoder_batch_size,
            lr=config.lr_decoder,
            generator=generator,
            losses=self.losses,
            log=self.log,
            log_every=config.log_every,
            ema_decay=config.ema_decay,
            resume=self.resume_for("decoder", generator),
        )
        _round_weights(vae, config.save_dtype)
        _save_model(vae, self.base_dir / "vae", config.save_dtype)
        self.record("decoder", result)

    def joint(self, pool, conditioning, schedule, unet, *, vae, text_encoder, tokenizer) -> None:
        """Train the U-Net and the ControlNets together; ControlNets not saved in ``out`` start as copies of
        the U-Net's encoder."""
        config = self.config
        controlnets = self.starting_controlnets(unet, load_saved=True)
        generator = self.generator("joint")
        settings = st.ControlledSettings(
            batch_size=config.joint_batch_size,
            lr=config.lr_joint,
            prompt_dropout=config.prompt_dropout,
            control_dropout=config.control_dropout,
            log_every=config.log_every,
            ema_decay=config.ema_decay,
            mean_loss_weight=config.mean_loss_weight,
            noise_offset=config.noise_offset,
            text_encoder_lr=config.lr_text_encoder,
        )
        result = st.train_joint(
            unet, controlnets, pool, conditioning, schedule, settings, self.runtime("joint", generator)
        )
        if config.lr_text_encoder > 0:
            _round_weights(text_encoder.eval().requires_grad_(False), config.save_dtype)
        self.ship_unet(unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        for condition, controlnet in controlnets.items():
            _save_model(controlnet, self.controlnet_dirs[condition], config.save_dtype)
        self.record("joint", result)

    def _join_earlier_controlnet_phase(self) -> None:
        """Put the earlier phase's loss curve first and shift this phase's points to follow it."""
        earlier = self.earlier_controlnet_curve
        if not earlier:
            return
        last = earlier[-1]
        new = self.losses.curves.get("controlnet", [])
        shifted = [
            {**p, "iteration": p["iteration"] + last["iteration"], "seconds": p["seconds"] + last["seconds"]}
            for p in new
        ]
        self.losses.curves["controlnet"] = [*earlier, *shifted]

    def self_check(self) -> None:
        config = self.config
        dirs = dict(self.controlnet_dirs)
        if config.continue_controlnets:  # the ControlNets not continued ship too: check them as well
            for condition in SHAPES_CONDITIONS:
                path = controlnet_dir(self.out, condition)
                if condition not in dirs and (path / "config.json").is_file():
                    dirs[condition] = path
        missing = [c for c, d in dirs.items() if not (d / "config.json").is_file()]
        if missing:
            self.summary["self_check"] = {"error": f"no ControlNet saved for {', '.join(missing)}"}
            return
        self.log(
            f"self-check: {config.eval_samples} held-out scenes per condition type, {config.eval_steps} "
            f"UniPC steps, guidance {', '.join(f'{g:g}' for g in config.eval_guidance)} ..."
        )
        try:
            scenes = [self.source.render(s) for s in self.source.heldout_seeds(config.eval_samples)]
            check = self_check(
                self.base_dir,
                dirs,
                scenes,
                guidance_scales=config.eval_guidance,
                steps=config.eval_steps,
                device=self.device,
                seed=self.seed("eval"),
                report_dir=self.reports,
                task_models=self.source.task_models,
                log=self.log,
            )
        except Exception as e:  # the weights are saved: report the failure rather than lose the summary
            self.summary["self_check"] = {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
            self.log(f"self-check failed: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            return
        self.summary["self_check"] = check
        text = json.dumps(check, indent=2, sort_keys=True) + "\n"
        atomic_write_text(self.reports / "zoo-selfcheck.json", text)


def run_training(
    config: TrainConfig,
    source: SceneSource | None = None,
    log: Log = lambda _: None,
    start: float | None = None,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the ``shapes`` model into ``config.out`` and return the run summary (``training.json``).

    Every stage saves its models as soon as it ends, and the summary and loss curves (``reports/``) are
    rewritten after every stage, so a failure in a later stage keeps the earlier ones (rerun the rest with
    ``stages``). A failing self-check is recorded as ``self_check.error`` without losing the weights; any
    other failure is recorded as ``error`` in ``training.json`` and re-raised.

    The run checkpoints ``out/checkpoint/checkpoint.pt`` between stages and at least every
    ``checkpoint_minutes`` within one. When a stage with a fixed iteration count meets the deadline, or
    SIGTERM/SIGINT arrives, it saves a checkpoint and returns with ``summary["interrupted"]`` set (no
    self-check); :func:`load_resume_state` and ``resume_state`` continue it exactly: the same pool of
    scenes, weights, EMA, optimizer moments, schedule position, generator states and loss curves.

    Args:
        config: The run's settings (on resume: the saved ones, with this invocation's budget).
        source: Scenes to train on; the shapes benchmark (:func:`~training.shapes.source.shapes_source`) by
            default.
        log: Receives progress lines.
        start: ``time.monotonic()`` at which the budget started (defaults to now).
        resume_state: A checkpoint from :func:`load_resume_state`, to continue that run.

    Raises:
        TrainError: An invalid configuration, or a stage left out whose saved output is not in ``out``.
    """
    config.check()
    if config.init_from is not None and resume_state is None:
        _seed_from(config.init_from, Path(config.out))
    _check_saved(config)
    if source is None:
        source = shapes_source()
    run = _Run(config, source, log, time.monotonic() if start is None else start, restored=resume_state)
    run.summary.pop("interrupted", None)
    try:
        with stop_on_signals():
            pool = run.render()
            if resume_state is None:
                run.checkpoint()  # from here on the run can be resumed
            tokenizer = build_offline_tokenizer()
            text_encoder = run.text_encoder(tokenizer)
            vae, means, stds, scaling = run.vae(pool)
            embed_dtype = torch.bfloat16 if run.amp else torch.float32
            conditioning = st.Conditioning(
                latent_means=means,
                latent_stds=stds,
                scaling_factor=scaling,
                prompt_embeds=st.encode_prompts(text_encoder, tokenizer, pool.prompts, device=run.device).to(
                    embed_dtype
                ),
                empty_embed=st.encode_prompts(text_encoder, tokenizer, [""], device=run.device).to(
                    embed_dtype
                ),
                prompt_dropout=config.prompt_dropout,
            )
            if run.to_do("joint") and config.lr_text_encoder > 0:
                # the joint stage trains the encoder: it encodes each batch's prompts anew
                conditioning.text_encoder = text_encoder
                conditioning.prompt_tokens = st.tokenize_prompts(tokenizer, pool.prompts, device=run.device)
                conditioning.empty_tokens = st.tokenize_prompts(tokenizer, [""], device=run.device)
            if run.to_do("decoder"):
                run.decoder(pool, vae, conditioning)
            schedule = st.DiffusionSchedule(run.device)
            unet = run.unet(
                pool, conditioning, schedule, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer
            )
            if run.to_do("controlnet"):
                run.controlnets(pool, conditioning, schedule, unet)
            if run.to_do("joint"):
                run.joint(
                    pool,
                    conditioning,
                    schedule,
                    unet,
                    vae=vae,
                    text_encoder=text_encoder,
                    tokenizer=tokenizer,
                )
            del pool, conditioning, means, stds, vae, unet, text_encoder
            if run.is_cuda:
                torch.cuda.empty_cache()
    except (st.StageInterrupted, StopRequested) as e:
        run.summary["interrupted"] = {
            "reason": str(e),
            "checkpoint": str(run.checkpointer.path),
            "resume": f"python -m training.shapes.train --resume {run.out}",
        }
        run.write_reports()
        log(f"{e}; checkpoint saved: continue with `python -m training.shapes.train --resume {run.out}`")
        return run.summary
    except BaseException as e:
        run.summary["error"] = f"{type(e).__name__}: {e}"
        run.write_reports()
        raise
    if config.eval_samples > 0:
        run.self_check()
    run.write_reports()
    log(f"done in {run.timeline.elapsed():.1f} s; weights {run.summary['size_mb']} MB in {run.out}")
    return run.summary
