"""The three training stages of the ``shapes`` model: VAE, U-Net, ControlNets.

Each stage runs for a fixed number of iterations or, more usually, for as many as fit in its share of the
wall-clock budget: after a short probe it measures its speed, fixes the iteration count (so the learning
rate schedule can decay to its end) and still stops at its deadline whatever happens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import torch
from diffusers import DDPMScheduler

from hgc_tune._atomic import atomic_write
from hgc_tune.errors import TrainingCheckpointError
from hgc_tune.models._presets import SD15_SCHEDULER_CONFIG
from training.shapes.pool import ScenePool
from training.shapes.resume import Checkpointer, Ema, StopRequested, first_line, stop_requested

__all__ = [
    "Conditioning",
    "DiffusionSchedule",
    "LoopResume",
    "LossLog",
    "StageBudget",
    "StageInterrupted",
    "StageResult",
    "encode_pool_latents",
    "encode_prompts",
    "tokenize_prompts",
    "training_noise",
    "latent_scaling_factor",
    "centre_vae_latents",
    "lr_factor",
    "ControlledSettings",
    "StageRuntime",
    "train_controlnets",
    "joint_batch_sizes",
    "train_decoder",
    "train_joint",
    "train_unet",
    "train_vae",
]

Log = Callable[[str], None]

# Iterations between the two clock readings that measure a stage's speed: the first few iterations pay for
# allocator growth and cuDNN autotuning and would underestimate the rate.
_PROBE = (5, 25)
# Fraction of the measured rate actually planned, so that the stage ends before its deadline.
_PLAN_MARGIN = 0.97
# Non-finite losses tolerated (each rolls back to the last good weights and halves the learning rate).
_MAX_ROLLBACKS = 3
# Min-SNR-gamma loss weighting (Hang et al., arXiv 2303.09556): faster diffusion training convergence.
_MIN_SNR_GAMMA = 5.0
# VAE loss weights: L1 on pixels, L1 on pixel differences (keeps edges sharp, which the canny/hed metrics
# read), KL per latent element: negligible for reconstruction, but the only force that centres the latents
# (L1 is blind to a shift the decoder can absorb), and SD pipelines scale latents without shifting them.
_VAE_GRAD_WEIGHT = 0.5
_VAE_KL_WEIGHT = 1e-4


@dataclass
class StageBudget:
    """How long a stage runs: ``iterations`` if given, else what fits before ``seconds`` run out.

    Attributes:
        seconds: Wall-clock share of the stage (``None``: no deadline, ``iterations`` must be set).
        iterations: A fixed iteration count (reproducible runs, tests); the deadline still applies.
        sync: Waits for queued device work (``torch.cuda.synchronize``) before the clock is read for the
            speed probe.
    """

    seconds: float | None
    iterations: int | None = None
    sync: Callable[[], None] = lambda: None
    start: float = field(default_factory=time.monotonic)
    planned: int | None = None
    _probe_start: float = 0.0

    def __post_init__(self) -> None:
        if self.seconds is None and self.iterations is None:
            raise ValueError("a stage needs `seconds` or `iterations`.")
        self.planned = self.iterations

    @property
    def deadline(self) -> float | None:
        """``time.monotonic()`` at which the stage stops."""
        return None if self.seconds is None else self.start + self.seconds

    def keep_going(self, done: int) -> bool:
        """Whether to run another iteration after ``done`` of them."""
        if self.planned is not None and done >= self.planned:
            return False
        if self.deadline is None:
            return True
        if self.iterations is None and done in _PROBE:
            self.sync()
            now = time.monotonic()
            if done == _PROBE[0]:
                self._probe_start = now
            else:
                per_iteration = (now - self._probe_start) / (_PROBE[1] - _PROBE[0])
                self.planned = done + max(
                    1, int(_PLAN_MARGIN * (self.deadline - now) / max(per_iteration, 1e-9))
                )
        return time.monotonic() < self.deadline


def lr_factor(iteration: int, planned: int | None, warmup: int, final: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``final`` at ``planned`` iterations (constant while unknown).

    Example:
        >>> lr_factor(0, 100, 10), lr_factor(9, 100, 10), lr_factor(100, 100, 10)
        (0.1, 1.0, 0.1)
    """
    if planned is not None:
        warmup = min(warmup, max(1, planned // 10))
    warm = min(1.0, (iteration + 1) / warmup)
    if planned is None or iteration < warmup:
        return warm
    progress = min(1.0, (iteration - warmup) / max(1, planned - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class LossLog:
    """Loss curves of every stage: ``{stage: [{iteration, seconds, lr, <loss name>: value, ...}, ...]}``."""

    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def add(self, stage: str, iteration: int, seconds: float, lr: float, losses: dict[str, float]) -> None:
        """Record one point."""
        point = {"iteration": iteration, "seconds": round(seconds, 3), "lr": lr}
        point.update({k: float(v) for k, v in losses.items()})
        self.curves.setdefault(stage, []).append(point)

    def to_json(self) -> dict[str, Any]:
        """The curves as a JSON-ready dict."""
        return {"curves": self.curves}

    def plot(self, path) -> None:
        """Save one log-scale panel per stage as a PNG (matplotlib, Agg backend)."""
        matplotlib.use("Agg")

        stages = [s for s, points in self.curves.items() if points]
        if not stages:
            return
        fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.4), squeeze=False)
        for ax, stage in zip(axes[0], stages, strict=True):
            points = self.curves[stage]
            names = [k for k in points[0] if k not in ("iteration", "seconds", "lr")]
            for name in names:
                # a point may lack a loss: a continued phase trains only some of the ControlNets
                values = [p.get(name, math.nan) for p in points]
                ax.plot([p["iteration"] for p in points], values, label=name, lw=1.2)
            ax.set_yscale("log")
            ax.set_title(stage)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)


@dataclass
class StageResult:
    """What a stage did."""

    iterations: int
    seconds: float
    planned: int | None
    rollbacks: int
    final_losses: dict[str, float]


class StageInterrupted(Exception):
    """A stage with a fixed iteration count reached its deadline first: its checkpoint is saved and the run
    goes on with ``--resume``."""

    def __init__(self, stage: str, done: int, planned: int | None) -> None:
        super().__init__(f"stage {stage} stopped at iteration {done} of {planned}")
        self.stage, self.done, self.planned = stage, done, planned


@dataclass
class LoopResume:
    """What makes a stage's loop resumable.

    Attributes:
        checkpointer: Writes the checkpoint.
        generator: The stage's data and noise generator (its state is saved and restored).
        run_state: Returns the run-level part of every checkpoint (config, summary, loss curves, pool size,
            completed stages); the loop adds its own state to it.
        restored: This stage's saved loop state when the run resumes in the middle of it, else ``None``.
    """

    checkpointer: Checkpointer
    generator: Any
    run_state: Callable[[], dict[str, Any]]
    restored: dict[str, Any] | None = None


class DiffusionSchedule:
    """SD1.5's DDPM noise schedule (scaled linear betas 0.00085–0.012, 1000 steps) on one device."""

    def __init__(self, device: str) -> None:
        scheduler = DDPMScheduler.from_config(dict(SD15_SCHEDULER_CONFIG))
        alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.sqrt_alpha = alphas_cumprod.sqrt().float().to(device)
        self.sqrt_sigma = (1 - alphas_cumprod).sqrt().float().to(device)
        snr = alphas_cumprod / (1 - alphas_cumprod)
        self.loss_weight = (snr.clamp(max=_MIN_SNR_GAMMA) / snr).float().to(device)
        # (1 - ᾱ_t) / ᾱ_t: turns a squared error of the predicted noise into one of the predicted picture
        self.inverse_snr = (1.0 / snr).float().to(device)

    def add_noise(self, latents, noise, timesteps):
        """``sqrt(ᾱ_t) x + sqrt(1 - ᾱ_t) ε``, as ``DDPMScheduler.add_noise``."""
        a = self.sqrt_alpha[timesteps].view(-1, 1, 1, 1)
        s = self.sqrt_sigma[timesteps].view(-1, 1, 1, 1)
        return a * latents + s * noise

    def sample_timesteps(self, n: int, generator, device: str, high_noise_bias: float = 0.0):
        """Uniform timesteps; a fraction ``high_noise_bias`` drawn with T2I-Adapter's cubic schedule instead,
        which favours the noisy early steps where the layout (what a ControlNet controls) is decided."""
        t = torch.randint(0, self.num_train_timesteps, (n,), device=device, generator=generator)
        if high_noise_bias > 0:
            u = torch.rand(n, device=device, generator=generator)
            cubic = ((1 - u**3) * self.num_train_timesteps).long().clamp(max=self.num_train_timesteps - 1)
            pick = torch.rand(n, device=device, generator=generator) < high_noise_bias
            t = torch.where(pick, cubic, t)
        return t


class _Rollback:
    """Keeps the last weights that gave a finite loss, to roll back to if training diverges."""

    def __init__(self, modules: Sequence[Any], optimizer) -> None:
        self.modules = list(modules)
        self.optimizer = optimizer
        self.count = 0
        self.lr_scale = 1.0
        self.snapshot()

    def snapshot(self) -> None:
        self._state = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules]

    def restore(self) -> bool:
        """Roll back; ``False`` once the allowed number of rollbacks is used up."""
        for module, state in zip(self.modules, self._state, strict=True):
            module.load_state_dict(state)
        self.optimizer.state.clear()
        self.count += 1
        self.lr_scale *= 0.5
        return self.count <= _MAX_ROLLBACKS


def _optimizer(params, lr: float, weight_decay: float = 1e-2):
    # Fused AdamW (CUDA and, since torch 2.4, CPU): one kernel per step instead of one per parameter.
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def _autocast(device: str, enabled: bool):
    """bf16 autocast (the caller enables it on CUDA; CPUs without bf16 units run it slower than fp32)."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled)


def _run_loop(
    name: str,
    step: Callable[[int], Any],
    loss_names: Sequence[str],
    modules: Sequence[Any],
    optimizer,
    base_lrs: Sequence[float],
    budget: StageBudget,
    warmup: int,
    log_every: int,
    losses: LossLog,
    log: Log,
    ema: Ema | None = None,
    resume: LoopResume | None = None,
) -> StageResult:
    """The shared loop: ``step(i)`` computes and back-propagates the losses (a tensor of
    ``len(loss_names)``), this clips, schedules the learning rate, steps, updates the EMA, logs, guards
    against divergence and checkpoints.

    With ``resume``, the loop saves its state every ``checkpointer.interval_seconds`` and when SIGTERM/SIGINT
    arrives (then raises :class:`StopRequested`), starts from ``resume.restored`` when given, and raises
    :class:`StageInterrupted` (after a save) when a fixed iteration count meets the deadline first. At the
    end of a completed stage with ``ema``, the modules hold the averages.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    rollback = _Rollback(modules, optimizer)
    accumulated = None
    since_log = 0
    done = 0
    elapsed_before = 0.0
    last: dict[str, float] = {}
    diverged = False
    if resume is not None and resume.restored is not None:
        done, elapsed_before = _restore_loop(resume.restored, name, modules, optimizer, ema, rollback, budget)
        resume.generator.set_state(resume.restored["generator"])
        torch.set_rng_state(resume.restored["torch_rng"])
        rollback.snapshot()
        log(f"  [{name}] resumed at iteration {done}/{budget.planned}")

    def save() -> None:
        state = resume.run_state()
        state["loop"] = {
            "stage": name,
            "done": done,
            "planned": budget.planned,
            "elapsed": elapsed_before + time.monotonic() - budget.start,
            "rollback": {"count": rollback.count, "lr_scale": rollback.lr_scale},
            "modules": [m.state_dict() for m in modules],
            "optimizer": optimizer.state_dict(),
            "ema": None if ema is None else ema.state_dict(),
            "generator": resume.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        state["done"] = done
        resume.checkpointer.save(state)

    while budget.keep_going(done):
        factor = lr_factor(done, budget.planned, warmup) * rollback.lr_scale
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * factor
        optimizer.zero_grad(set_to_none=True)
        values = step(done).detach()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if ema is not None:
            ema.update()
        accumulated = values if accumulated is None else accumulated + values
        since_log += 1
        done += 1
        if done % log_every == 0 or not budget.keep_going(done):
            means = (accumulated / since_log).float().tolist()
            accumulated, since_log = None, 0
            last = dict(zip(loss_names, means, strict=True))
            elapsed = elapsed_before + time.monotonic() - budget.start
            if not all(math.isfinite(v) for v in means):
                if not rollback.restore():
                    log(f"  [{name}] loss not finite again: stopping the stage at the last good weights")
                    last = {}
                    diverged = True
                    break
                log(f"  [{name}] loss not finite at iteration {done}: rolled back, learning rate halved")
                continue
            rollback.snapshot()
            losses.add(name, done, elapsed, base_lrs[0] * factor, last)
            planned = "?" if budget.planned is None else str(budget.planned)
            shown = " ".join(f"{k}={v:.4f}" for k, v in last.items())
            log(f"  [{name}] it {done}/{planned} {elapsed:6.1f}s lr={base_lrs[0] * factor:.2e} {shown}")
        if resume is None:
            continue
        # Saved only at a logged iteration: then the loss curve and the weights agree exactly.
        if since_log == 0 and resume.checkpointer.due():
            save()
        if stop_requested():
            save()
            raise StopRequested(f"stage {name} stopped at iteration {done} by {stop_requested()}")
    if resume is not None and not diverged and budget.iterations is not None and done < budget.iterations:
        save()
        raise StageInterrupted(name, done, budget.iterations)
    if ema is not None and not diverged:
        ema.copy_to_modules()
    seconds = elapsed_before + time.monotonic() - budget.start
    return StageResult(done, seconds, budget.planned, rollback.count, last)


def _restore_loop(state, name, modules, optimizer, ema, rollback, budget) -> tuple[int, float]:
    """Load a saved loop state into the stage's objects; returns (iterations done, seconds spent)."""
    if state["stage"] != name:
        raise ValueError(f"the checkpoint is of stage {state['stage']!r}, not {name!r}.")
    for index, (module, saved) in enumerate(zip(modules, state["modules"], strict=True)):
        try:
            module.load_state_dict(saved)
        except RuntimeError as e:  # missing, unexpected or differently shaped tensors
            raise TrainingCheckpointError(
                f"the checkpoint holds another model's weights for model {index} of stage {name!r} "
                f"({type(module).__name__} does not load them: {first_line(e)}); delete the run's checkpoint "
                "folder and start the run again without --resume."
            ) from e
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    rollback.count = int(state["rollback"]["count"])
    rollback.lr_scale = float(state["rollback"]["lr_scale"])
    # The schedule was fixed when the stage started: the resumed stage finishes exactly that plan.
    budget.planned = budget.iterations = state["planned"]
    return int(state["done"]), float(state["elapsed"])


def train_vae(
    vae,
    pool: ScenePool,
    *,
    device: str,
    amp: bool = False,
    budget: StageBudget,
    batch_size: int,
    lr: float,
    generator,
    losses: LossLog,
    log: Log,
    log_every: int = 50,
    warmup: int = 100,
    ema_decay: float = 0.0,
    resume: LoopResume | None = None,
) -> StageResult:
    """Train ``vae`` to reconstruct the pool's pictures (L1 + L1 of pixel differences + a small KL)."""
    vae.train().requires_grad_(True)
    optimizer = _optimizer(vae.parameters(), lr)
    n = len(pool)

    def step(_: int):
        index = torch.randint(0, n, (batch_size,), device=device, generator=generator)
        x = pool.image_batch(index)
        with _autocast(device, amp):
            moments = vae.encode(x).latent_dist
        mean, logvar = moments.mean.float(), moments.logvar.float()
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, device=device, generator=generator)
        with _autocast(device, amp):
            reconstruction = vae.decode(z).sample
        reconstruction = reconstruction.float()
        l1 = (reconstruction - x).abs().mean()
        dx = (reconstruction.diff(dim=-1) - x.diff(dim=-1)).abs().mean()
        dy = (reconstruction.diff(dim=-2) - x.diff(dim=-2)).abs().mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = l1 + _VAE_GRAD_WEIGHT * (dx + dy) + _VAE_KL_WEIGHT * kl
        loss.backward()
        return torch.stack([loss, l1, kl])

    ema = Ema([vae], ema_decay) if ema_decay > 0 else None
    result = _run_loop(
        "vae", step, ("loss", "l1", "kl"), [vae], optimizer, [lr], budget, warmup, log_every, losses, log,
        ema, resume,
    )  # fmt: skip
    vae.eval().requires_grad_(False)
    return result


def encode_pool_latents(vae, pool: ScenePool, *, device: str, amp: bool = False, batch_size: int = 512):
    """Posterior means and standard deviations of every pool picture (``[N, 4, h, w]`` fp32 each)."""
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(pool), batch_size):
            index = torch.arange(start, min(start + batch_size, len(pool)), device=device)
            with _autocast(device, amp):
                posterior = vae.encode(pool.image_batch(index)).latent_dist
            means.append(posterior.mean.float())
            stds.append(torch.exp(0.5 * posterior.logvar.float()))
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(means, stds, generator, max_samples: int = 8192) -> float:
    """``1 / RMS`` of sampled latents: the factor that gives the scaled latents unit second moment.

    The RMS equals the standard deviation for zero-mean latents; SD pipelines apply no shift, so the mean
    is part of the signal the noise schedule sees, and the second moment is what has to be 1.
    """
    n = min(len(means), max_samples)
    noise = torch.randn(means[:n].shape, device=means.device, generator=generator)
    z = means[:n] + stds[:n] * noise
    return float(1.0 / z.double().pow(2).mean().sqrt())


def centre_vae_latents(vae, channel_means) -> None:
    """Shift ``vae``'s latent space by ``-channel_means`` without changing any picture it encodes or draws.

    The shift is folded into the biases of ``quant_conv`` (the posterior's mean channels) and of
    ``post_quant_conv`` (``b += W m``), so any SD pipeline uses the centred latents with no code of its own
    (SD scales latents but never shifts them). Why: denoising starts from zero-mean noise, and a latent
    space whose channel means lie far from zero can leave the picture's overall colour to the noisiest
    steps, where noise prediction all but ignores it.
    """
    m = torch.as_tensor(channel_means, dtype=vae.quant_conv.bias.dtype, device=vae.quant_conv.bias.device)
    latent_channels = vae.post_quant_conv.weight.shape[1]
    if m.shape != (latent_channels,):
        raise ValueError(f"channel_means must hold {latent_channels} values, got shape {tuple(m.shape)}")
    with torch.no_grad():
        vae.quant_conv.bias[:latent_channels] -= m
        vae.post_quant_conv.bias += vae.post_quant_conv.weight[:, :, 0, 0] @ m


def encode_prompts(text_encoder, tokenizer, prompts: Sequence[str], *, device: str, batch_size: int = 256):
    """Text-encoder hidden states of ``prompts`` exactly as the SD pipelines compute them.

    Padding to ``model_max_length``, no attention mask, last hidden state: ``encode_prompt`` of
    ``StableDiffusionControlNetPipeline`` without ``clip_skip``.
    """
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(
                list(prompts[start : start + batch_size]),
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            out.append(text_encoder(tokens.input_ids.to(device))[0].float())
    return torch.cat(out)


def tokenize_prompts(tokenizer, prompts: Sequence[str], *, device: str):
    """``[P, 77]`` token ids of ``prompts``, padded as in :func:`encode_prompts`."""
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return tokens.input_ids.to(device)


@dataclass
class Conditioning:
    """Everything a denoiser step draws from the pool besides its pictures.

    The text embeddings come from ``prompt_embeds`` (computed once, frozen text encoder) or, with
    ``text_encoder`` set (a text encoder being trained), from running it on ``prompt_tokens`` every batch.
    """

    latent_means: Any
    latent_stds: Any
    scaling_factor: float
    prompt_embeds: Any  # [P, 77, D] per distinct prompt
    empty_embed: Any  # [1, 77, D], the unconditional ("") prompt
    prompt_dropout: float
    text_encoder: Any = None
    prompt_tokens: Any = None  # [P, 77] token ids per distinct prompt (with text_encoder)
    empty_tokens: Any = None  # [1, 77] token ids of "" (with text_encoder)

    def batch(self, pool: ScenePool, index, generator, dropout: float | None = None):
        """Scaled sampled latents and text embeddings (with prompt dropout) of ``index``."""
        means, stds = self.latent_means[index], self.latent_stds[index]
        noise = torch.randn(means.shape, device=means.device, generator=generator)
        latents = (means + stds * noise) * self.scaling_factor
        p = self.prompt_dropout if dropout is None else dropout
        drop = torch.rand(len(index), device=means.device, generator=generator) < p if p > 0 else None
        if self.text_encoder is not None:
            tokens = self.prompt_tokens[pool.prompt_ids[index]]
            if drop is not None:
                tokens = torch.where(drop.view(-1, 1), self.empty_tokens, tokens)
            return latents, self.text_encoder(tokens)[0].to(self.prompt_embeds.dtype)
        embeds = self.prompt_embeds[pool.prompt_ids[index]]
        if drop is not None:
            embeds = torch.where(drop.view(-1, 1, 1), self.empty_embed.to(embeds.dtype), embeds)
        return latents, embeds


def train_unet(
    unet,
    pool: ScenePool,
    conditioning: Conditioning,
    schedule: DiffusionSchedule,
    *,
    device: str,
    amp: bool = False,
    budget: StageBudget,
    batch_size: int,
    lr: float,
    generator,
    losses: LossLog,
    log: Log,
    log_every: int = 50,
    warmup: int = 200,
    ema_decay: float = 0.0,
    resume: LoopResume | None = None,
) -> StageResult:
    """Train ``unet`` for text-conditioned epsilon prediction (min-SNR-5 weighted MSE, prompt dropout)."""
    unet.train().requires_grad_(True)
    optimizer = _optimizer(unet.parameters(), lr)
    n = len(pool)

    def step(_: int):
        index = torch.randint(0, n, (batch_size,), device=device, generator=generator)
        latents, embeds = conditioning.batch(pool, index, generator)
        noise = torch.randn(latents.shape, device=device, generator=generator)
        timesteps = schedule.sample_timesteps(batch_size, generator, device)
        noisy = schedule.add_noise(latents, noise, timesteps)
        with _autocast(device, amp):
            prediction = unet(noisy, timesteps, encoder_hidden_states=embeds).sample
        mse = (prediction.float() - noise).pow(2).mean(dim=(1, 2, 3))
        (mse * schedule.loss_weight[timesteps]).mean().backward()
        return mse.mean().unsqueeze(0)

    ema = Ema([unet], ema_decay) if ema_decay > 0 else None
    result = _run_loop(
        "unet", step, ("mse",), [unet], optimizer, [lr], budget, warmup, log_every, losses, log, ema, resume
    )
    unet.eval().requires_grad_(False)
    return result


def _controlled_step(
    unet,
    controlnets: dict[str, Any],
    pool: ScenePool,
    conditioning: Conditioning,
    schedule: DiffusionSchedule,
    *,
    per_condition: int,
    uncontrolled: int,
    prompt_dropout: float,
    high_noise_bias: float,
    device: str,
    amp: bool,
    generator,
    mean_loss_weight: float = 0.0,
    noise_offset: float = 0.0,
) -> Callable[[int], Any]:
    """The step shared by the ControlNet and joint stages; it returns each condition type's mean MSE, then
    (with ``uncontrolled > 0``) the uncontrolled scenes' mean MSE, then (with ``mean_loss_weight > 0``) the
    mean of the channel-mean loss (see :class:`ControlledSettings`). ``noise_offset`` adds that much of one
    Gaussian per sample and latent channel to the noise (offset noise).

    Every iteration draws ``per_condition`` scenes per condition type, each run through its own ControlNet,
    and ``uncontrolled`` scenes without control (zero residuals, which is what a dropped ControlNet adds);
    one U-Net call takes them all (one call instead of five: the models are small, so the per-call overhead
    is what costs). Gradients reach whichever models require them.
    """
    n = len(pool)

    def noisy_batch(size: int, bias: float):
        index = torch.randint(0, n, (size,), device=device, generator=generator)
        latents, embeds = conditioning.batch(pool, index, generator, dropout=prompt_dropout)
        noise = training_noise(latents.shape, noise_offset, generator, device)
        timesteps = schedule.sample_timesteps(size, generator, device, bias)
        return index, schedule.add_noise(latents, noise, timesteps), noise, timesteps, embeds

    def step(_: int):
        noisy_all, noise_all, t_all, embeds_all, downs, mids = [], [], [], [], [], []
        for name, controlnet in controlnets.items():
            index, noisy, noise, timesteps, embeds = noisy_batch(per_condition, high_noise_bias)
            with _autocast(device, amp):
                down, mid = controlnet(
                    noisy,
                    timesteps,
                    encoder_hidden_states=embeds,
                    controlnet_cond=pool.condition_batch(name, index),
                    return_dict=False,
                )
            downs.append(down)
            mids.append(mid)
            noisy_all.append(noisy)
            noise_all.append(noise)
            t_all.append(timesteps)
            embeds_all.append(embeds)
        if uncontrolled:
            _, noisy, noise, timesteps, embeds = noisy_batch(uncontrolled, 0.0)
            downs.append([r.new_zeros((uncontrolled, *r.shape[1:])) for r in downs[0]])
            mids.append(mids[0].new_zeros((uncontrolled, *mids[0].shape[1:])))
            noisy_all.append(noisy)
            noise_all.append(noise)
            t_all.append(timesteps)
            embeds_all.append(embeds)
        timesteps = torch.cat(t_all)
        with _autocast(device, amp):
            prediction = unet(
                torch.cat(noisy_all),
                timesteps,
                encoder_hidden_states=torch.cat(embeds_all),
                down_block_additional_residuals=[torch.cat(r) for r in zip(*downs, strict=True)],
                mid_block_additional_residual=torch.cat(mids),
            ).sample
        error = prediction.float() - torch.cat(noise_all)
        mse = error.pow(2).mean(dim=(1, 2, 3))
        loss = (mse * schedule.loss_weight[timesteps]).mean()
        if mean_loss_weight > 0:
            channel_mean = _channel_mean_loss(error, schedule.inverse_snr[timesteps])
            loss = loss + mean_loss_weight * channel_mean.mean()
        loss.backward()
        controlled = per_condition * len(controlnets)
        means = mse[:controlled].view(len(controlnets), per_condition).mean(dim=1)
        values = [means, mse[controlled:].mean().view(1)] if uncontrolled else [means]
        if mean_loss_weight > 0:
            values.append(channel_mean.mean().detach().view(1))
        return torch.cat(values)

    return step


def training_noise(shape, offset: float, generator, device: str):
    """Gaussian noise of ``shape`` ``[N, C, H, W]``, plus ``offset`` times one Gaussian per sample and channel
    (offset noise; ``offset = 0`` draws exactly ``torch.randn``)."""
    noise = torch.randn(shape, device=device, generator=generator)
    if offset > 0:
        noise = noise + offset * torch.randn((*shape[:2], 1, 1), device=device, generator=generator)
    return noise


def _channel_mean_loss(noise_error, inverse_snr):
    """Per sample: the squared error of each latent channel's spatial mean of the predicted *picture*
    (``x0``), from the error of the predicted noise (``x0`` error = ``sqrt((1 - ᾱ)/ᾱ)`` × noise error).

    A latent channel's spatial mean is the picture's overall colour, on the shapes benchmark the background's
    — the one thing only the prompt names. The noise-prediction MSE weights it by ``ᾱ/(1 - ᾱ)``: 0.005 at
    the first sampling step (t = 999), where the background is decided, and nearly nothing the model could
    not read off its noisy input at the later ones; this term weights it as a picture error at every step.
    """
    return noise_error.mean(dim=(2, 3)).pow(2).mean(dim=1) * inverse_snr


@dataclass(frozen=True)
class ControlledSettings:
    """How a stage that trains ControlNets (alone or with the U-Net) learns.

    Attributes:
        batch_size: Scenes per condition type and iteration.
        lr: Peak learning rate (warm-up, then cosine to 10 %).
        prompt_dropout: Share of scenes trained with the empty prompt (classifier-free guidance).
        control_dropout: Joint stage only: share of each batch trained with no control at all.
        high_noise_bias: Share of timesteps drawn from T2I-Adapter's cubic schedule.
        log_every: Iterations between two log lines (and loss-curve points).
        warmup: Warm-up iterations.
        ema_decay: EMA of the trained weights, which ship (0: off).
        mean_loss_weight: Weight of the channel-mean loss added to the noise-prediction loss: the squared
            error of each latent channel's spatial mean of the predicted picture (see
            :func:`_channel_mean_loss`; 0: off).
        noise_offset: Standard deviation of a per-sample, per-channel constant added to the training noise
            (offset noise, as diffusers' ``train_text_to_image.py --noise_offset``): SD1.5's schedule leaves
            ``sqrt(ᾱ) = 0.068`` of the picture at the first sampling step, enough of a 16 x 16 latent's
            channel means for the U-Net to read the picture's overall colour off its input instead of the
            prompt; the offset hides it (0: off).
        text_encoder_lr: Joint stage only: peak learning rate of the text encoder, trained with the U-Net
            (``conditioning.text_encoder`` must be set; 0: frozen).
    """

    batch_size: int
    lr: float
    prompt_dropout: float = 0.1
    control_dropout: float = 0.2
    high_noise_bias: float = 0.5
    log_every: int = 50
    warmup: int = 100
    ema_decay: float = 0.0
    mean_loss_weight: float = 0.0
    noise_offset: float = 0.0
    text_encoder_lr: float = 0.0


@dataclass
class StageRuntime:
    """Where and for how long a stage runs, and where its progress goes.

    Attributes:
        device: Torch device.
        budget: The stage's time and iteration budget.
        generator: The stage's data and noise generator.
        losses: Receives the loss-curve points.
        log: Receives progress lines.
        amp: bf16 autocast.
        resume: What makes the loop resumable (``None``: no checkpoints, for benchmarks).
    """

    device: str
    budget: StageBudget
    generator: Any
    losses: LossLog
    log: Log
    amp: bool = False
    resume: LoopResume | None = None


def train_controlnets(
    controlnets: dict[str, Any],
    unet,
    pool: ScenePool,
    conditioning: Conditioning,
    schedule: DiffusionSchedule,
    settings: ControlledSettings,
    runtime: StageRuntime,
) -> StageResult:
    """Train one ControlNet per condition type against the frozen ``unet``, all in one loop
    (``settings.batch_size`` scenes per condition type and iteration; ``control_dropout`` does not apply)."""
    names = list(controlnets)
    unet.eval().requires_grad_(False)
    for controlnet in controlnets.values():
        controlnet.train().requires_grad_(True)
    optimizer = _optimizer([{"params": list(c.parameters())} for c in controlnets.values()], settings.lr)
    step = _controlled_step(
        unet,
        controlnets,
        pool,
        conditioning,
        schedule,
        per_condition=settings.batch_size,
        uncontrolled=0,
        prompt_dropout=settings.prompt_dropout,
        high_noise_bias=settings.high_noise_bias,
        device=runtime.device,
        amp=runtime.amp,
        generator=runtime.generator,
        mean_loss_weight=settings.mean_loss_weight,
        noise_offset=settings.noise_offset,
    )
    ema = Ema(list(controlnets.values()), settings.ema_decay) if settings.ema_decay > 0 else None
    result = _run_loop(
        "controlnet",
        step,
        (*(f"mse_{c}" for c in names), *(["channel_mean"] if settings.mean_loss_weight > 0 else [])),
        list(controlnets.values()),
        optimizer,
        [settings.lr] * len(names),
        runtime.budget,
        settings.warmup,
        settings.log_every,
        runtime.losses,
        runtime.log,
        ema,
        runtime.resume,
    )
    for controlnet in controlnets.values():
        controlnet.eval().requires_grad_(False)
    return result


def train_decoder(
    vae,
    pool: ScenePool,
    conditioning: Conditioning,
    *,
    device: str,
    amp: bool = False,
    budget: StageBudget,
    batch_size: int,
    lr: float,
    generator,
    losses: LossLog,
    log: Log,
    log_every: int = 50,
    warmup: int = 100,
    ema_decay: float = 0.0,
    resume: LoopResume | None = None,
) -> StageResult:
    """Train ``vae``'s decoder on, with the encoder frozen (the same losses as :func:`train_vae`, no KL).

    The encoder, and with it every latent the U-Net and ControlNets were trained on, stays exactly as it
    was, so a better decoder raises the reconstruction ceiling without retraining the denoisers. The
    latents come from the pool's precomputed posteriors (``conditioning``): no encoder pass per step.
    """
    vae.eval().requires_grad_(False)
    trained = [vae.post_quant_conv, vae.decoder]
    for module in trained:
        module.train().requires_grad_(True)
    optimizer = _optimizer([p for m in trained for p in m.parameters()], lr)
    n = len(pool)

    def step(_: int):
        index = torch.randint(0, n, (batch_size,), device=device, generator=generator)
        means, stds = conditioning.latent_means[index], conditioning.latent_stds[index]
        z = means + stds * torch.randn(means.shape, device=device, generator=generator)
        x = pool.image_batch(index)
        with _autocast(device, amp):
            reconstruction = vae.decode(z).sample
        reconstruction = reconstruction.float()
        l1 = (reconstruction - x).abs().mean()
        dx = (reconstruction.diff(dim=-1) - x.diff(dim=-1)).abs().mean()
        dy = (reconstruction.diff(dim=-2) - x.diff(dim=-2)).abs().mean()
        loss = l1 + _VAE_GRAD_WEIGHT * (dx + dy)
        loss.backward()
        return torch.stack([loss, l1])

    ema = Ema(trained, ema_decay) if ema_decay > 0 else None
    result = _run_loop(
        "decoder", step, ("loss", "l1"), trained, optimizer, [lr], budget, warmup, log_every, losses, log,
        ema, resume,
    )  # fmt: skip
    vae.eval().requires_grad_(False)
    return result


def joint_batch_sizes(batch_size: int, conditions: int, control_dropout: float) -> tuple[int, int]:
    """Scenes per condition type and scenes without control in one joint iteration.

    ``control_dropout`` is the share of the whole batch trained without any ControlNet.

    Example:
        >>> joint_batch_sizes(8, 4, 0.2), joint_batch_sizes(1, 2, 0.2), joint_batch_sizes(8, 4, 0.0)
        ((8, 8), (1, 1), (8, 0))
    """
    if control_dropout <= 0:
        return batch_size, 0
    # at least one uncontrolled scene whenever dropout is asked for, however small the batch
    return batch_size, max(1, round(control_dropout * batch_size * conditions / (1.0 - control_dropout)))


def train_joint(
    unet,
    controlnets: dict[str, Any],
    pool: ScenePool,
    conditioning: Conditioning,
    schedule: DiffusionSchedule,
    settings: ControlledSettings,
    runtime: StageRuntime,
) -> StageResult:
    """Train the U-Net and every ControlNet together (control dropout keeps the base usable on its own).

    Every iteration draws ``settings.batch_size`` scenes per condition type, each run through its own
    ControlNet, and a share ``settings.control_dropout`` of the whole batch with no control at all (see
    :func:`_controlled_step`). Unlike freezing the base first, the U-Net learns from every controlled scene
    too, and the layout that the condition gives makes each of them a far easier (so faster learned)
    denoising problem. With ``settings.text_encoder_lr > 0`` the text encoder (``conditioning.text_encoder``)
    trains too, as the last of the stage's models.
    """
    names = list(controlnets)
    per_condition, uncontrolled = joint_batch_sizes(settings.batch_size, len(names), settings.control_dropout)
    modules = [unet, *controlnets.values()]
    lrs = [settings.lr] * len(modules)
    if settings.text_encoder_lr > 0:
        if conditioning.text_encoder is None:
            raise ValueError("`text_encoder_lr` > 0 needs `conditioning.text_encoder`.")
        modules.append(conditioning.text_encoder)
        lrs.append(settings.text_encoder_lr)
    for module in modules:
        module.train().requires_grad_(True)
    optimizer = _optimizer(
        [{"params": list(m.parameters()), "lr": lr} for m, lr in zip(modules, lrs, strict=True)], settings.lr
    )
    step = _controlled_step(
        unet,
        controlnets,
        pool,
        conditioning,
        schedule,
        per_condition=per_condition,
        uncontrolled=uncontrolled,
        prompt_dropout=settings.prompt_dropout,
        high_noise_bias=settings.high_noise_bias,
        device=runtime.device,
        amp=runtime.amp,
        generator=runtime.generator,
        mean_loss_weight=settings.mean_loss_weight,
        noise_offset=settings.noise_offset,
    )
    ema = Ema(modules, settings.ema_decay) if settings.ema_decay > 0 else None
    result = _run_loop(
        "joint",
        step,
        (
            *(f"mse_{c}" for c in names),
            *(["mse_uncontrolled"] if uncontrolled else []),
            *(["channel_mean"] if settings.mean_loss_weight > 0 else []),
        ),
        modules,
        optimizer,
        lrs,
        runtime.budget,
        settings.warmup,
        settings.log_every,
        runtime.losses,
        runtime.log,
        ema,
        runtime.resume,
    )
    for module in modules:
        module.eval().requires_grad_(False)
    return result
