"""Where the shapes model's text path loses the prompt's background (issue 23, a diagnosis).

Seven measurements on one set of weights (``--weights``, the shipped ones by default), at full compute
(``--scenes``: the validation scenes of the first; the third and last use the first scene):

1. **Prompt vs input.** For each scene, a noisy latent ``x_t`` of its ground truth at a few timesteps (fixed
   noise); the U-Net (uncontrolled, and with the seg ControlNet) predicts ``x0`` once per background named in
   the prompt (the scene's prompt with its background word swapped). The decoded prediction's background
   colour (median over the scene's background pixels) is compared across prompts (what the prompt changes)
   and across scenes (what the noisy input changes).
2. **The signal left at the first sampling step.** SD1.5's schedule keeps ``sqrt(alpha_bar) = 0.068`` of the
   picture at ``t = 999``, and a 16 x 16 latent averages the noise of each channel down to ``1/16``: the
   background's latent channel means times 0.068, against that noise, say whether the model can read the
   background off its input instead of the prompt during training — which the pure noise it starts from at
   sampling time does not carry.
3. **The text encoder.** Cosine similarity of the prompt embeddings between backgrounds, per position.
4. **The reader.** What :func:`hgc_tune.fidelity.read_background` reads for the mean of the seven colours.
5. **What the prompt is worth to the loss.** On ``--loss-scenes`` validation scenes (uncontrolled), the
   squared error of the predicted picture's latent channel means at the noisy timesteps, with each scene's
   own prompt and with its background word swapped for another (the next in :data:`BACKGROUNDS`): equal
   errors mean the prediction does not use the background word.
6. **The VAE's ceiling.** The background read back from ground-truth scenes encoded and decoded by the VAE
   (``--vae-scenes`` validation scenes, 0: skipped), per background named: what no denoiser can beat.
7. **Where sampling ends.** The latent channel means of full-compute samples (seg condition of the first
   scene, 20 UniPC steps, guidance 7.5) for each background named, against the data's channel means of that
   background and the typical distance of a scene's channel means from its background's.

Usage (from the repository root):
    PYTHONPATH=. python analysis/zoo_text_path.py [--weights DIR] [--scenes 4] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hgc_tune.data._benchmark import split_seeds
from hgc_tune.data.shapes import BACKGROUNDS, render_scene
from hgc_tune.fidelity import read_background
from hgc_tune.generation._inputs import condition_input
from hgc_tune.models import _shapes, load_pipeline

_TIMESTEPS = (999, 900, 700, 500)


def _swap(prompt: str, background: str) -> str:
    head, _, _ = prompt.rpartition(" on a")
    return f"{head} on a {background} background"


def _encode(pipe, prompts: list[str]) -> torch.Tensor:
    tokens = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        return pipe.text_encoder(tokens.input_ids)[0]


def _to_images(pipe, latents: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        x = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _background_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.median(image[mask].astype(np.float64), axis=0)


def prompt_vs_input(pipe, scenes, names: list[str]) -> dict:
    """Spread of the predicted background colour across prompts and across scenes, per timestep and mode."""
    alphas = pipe.scheduler.alphas_cumprod.to(torch.float64)
    out: dict = {}
    for controlled in (False, True):
        for t in _TIMESTEPS:
            a, s = float(alphas[t].sqrt()), float((1 - alphas[t]).sqrt())
            colours = np.zeros((len(scenes), len(names), 3))
            latent_means = np.zeros((len(scenes), len(names), 4))
            reads = []
            for i, scene in enumerate(scenes):
                image = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 127.5 - 1
                with torch.no_grad():
                    x0 = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
                noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(scene.seed))
                xt = (a * x0 + s * noise).repeat(len(names), 1, 1, 1)
                embeds = _encode(pipe, [_swap(scene.prompt, b) for b in names])
                timestep = torch.full((len(names),), t)
                extra = {}
                if controlled:
                    cond = torch.from_numpy(scene.condition("seg")).permute(2, 0, 1)[None].float() / 255
                    with torch.no_grad():
                        down, mid = pipe.controlnet(
                            xt, timestep, encoder_hidden_states=embeds,
                            controlnet_cond=cond.repeat(len(names), 1, 1, 1), return_dict=False,
                        )  # fmt: skip
                    extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
                with torch.no_grad():
                    eps = pipe.unet(xt, timestep, encoder_hidden_states=embeds, **extra).sample
                predicted = (xt - s * eps) / a
                latent_means[i] = predicted.mean(dim=(2, 3)).numpy()
                images = _to_images(pipe, predicted)
                mask = scene.class_map == 0
                for j, image_j in enumerate(images):
                    colours[i, j] = _background_colour(image_j, mask)
                reads.append([read_background(im, mask) for im in images])
            across_prompts = float(np.linalg.norm(colours - colours.mean(1, keepdims=True), axis=2).mean())
            across_scenes = float(np.linalg.norm(colours - colours.mean(0, keepdims=True), axis=2).mean())
            latent_spread = np.linalg.norm(latent_means - latent_means.mean(1, keepdims=True), axis=2).mean()
            right = float(np.mean([[r == b for r, b in zip(row, names, strict=True)] for row in reads]))
            truth = [sc.background for sc in scenes]
            own = float(np.mean([[r == b for r in row] for row, b in zip(reads, truth, strict=True)]))
            key = f"{'seg' if controlled else 'uncontrolled'}@t={t}"
            out[key] = {
                "rgb_spread_across_prompts": round(across_prompts, 2),
                "rgb_spread_across_scenes": round(across_scenes, 2),
                "latent_mean_spread_across_prompts": round(float(latent_spread), 4),
                "named_background_read": round(right, 3),
                "scenes_own_background_read": round(own, 3),
                "signal_share": round(a, 4),
            }
            print(key, out[key], flush=True)
    return out


def signal_leak(pipe, names: list[str], n: int = 64) -> dict:
    """Per background: its latent channel means (scaled) and their size at t=999 against the noise's mean."""
    alphas = pipe.scheduler.alphas_cumprod.to(torch.float64)
    a999 = float(alphas[-1].sqrt())
    by_name: dict[str, list[np.ndarray]] = {b: [] for b in names}
    seeds = iter(range(10_000, 10_000 + 50 * n))
    while min(len(v) for v in by_name.values()) < n // len(names):
        scene = render_scene(next(seeds))
        image = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            x0 = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
        by_name[scene.background].append(x0.mean(dim=(2, 3))[0].numpy())
    means = {b: np.mean(v, axis=0) for b, v in by_name.items()}
    centre = np.mean(list(means.values()), axis=0)
    latent = pipe.unet.config.sample_size
    noise_std = 1.0 / latent  # std of a channel's spatial mean of unit Gaussian noise (16 x 16 latent)
    spread = np.mean([np.linalg.norm(m - centre) for m in means.values()])
    within = np.mean([np.linalg.norm(x - means[b]) for b, v in by_name.items() for x in v])
    return {
        "latent_mean_spread_of_backgrounds": round(float(spread), 4),
        "latent_mean_distance_within_background": round(float(within), 4),
        "sqrt_alpha_bar_999": round(a999, 4),
        "noise_channel_mean_std": round(noise_std, 4),
        "channel_means": {b: [round(float(x), 3) for x in m] for b, m in means.items()},
        "leak_at_999_over_noise": {
            b: round(float(np.linalg.norm(a999 * (m - centre)) / noise_std), 3) for b, m in means.items()
        },
    }


def prompt_worth(pipe, n: int, names: list[str]) -> dict:
    """Channel-mean error of the predicted ``x0`` with the right and with a wrong background word."""
    alphas = pipe.scheduler.alphas_cumprod.to(torch.float64)
    scenes = [render_scene(s) for s in split_seeds("validation", n)]
    images = torch.stack([torch.from_numpy(sc.image).permute(2, 0, 1) for sc in scenes]).float() / 127.5 - 1
    with torch.no_grad():
        x0 = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
    right = _encode(pipe, [sc.prompt for sc in scenes])
    wrong_names = [names[(names.index(sc.background) + 1) % len(names)] for sc in scenes]
    wrong = _encode(pipe, [_swap(sc.prompt, b) for sc, b in zip(scenes, wrong_names, strict=True)])
    out = {}
    for t in _TIMESTEPS:
        a, s = float(alphas[t].sqrt()), float((1 - alphas[t]).sqrt())
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        xt = a * x0 + s * noise
        errors = {}
        for label, embeds in (("right", right), ("wrong", wrong)):
            with torch.no_grad():
                eps = pipe.unet(xt, torch.full((n,), t), encoder_hidden_states=embeds).sample
            predicted = (xt - s * eps) / a
            errors[label] = float((predicted - x0).mean(dim=(2, 3)).pow(2).mean())
        out[f"t={t}"] = {k: round(v, 4) for k, v in errors.items()}
    return out


def sampled_channel_means(pipe, scene, names: list[str], data_means: dict) -> dict:
    """Per background named: the channel means of a full-compute sample's latents, their distance to that
    background's data channel means, and the background whose data channel means are nearest."""
    out = {}
    for b in names:
        # a PIL condition, as the library passes it: a numpy one would be read as floats in [0, 1]
        latents = pipe(
            prompt=[_swap(scene.prompt, b)], image=[condition_input(scene.condition("seg"))],
            num_inference_steps=20, guidance_scale=7.5, generator=torch.Generator().manual_seed(scene.seed),
            output_type="latent",
        ).images  # fmt: skip
        m = latents.mean(dim=(2, 3))[0].numpy()
        distance = {n: float(np.linalg.norm(m - np.asarray(data_means[n]))) for n in names}
        out[b] = {
            "channel_means": [round(float(x), 3) for x in m],
            "distance_to_named": round(distance[b], 3),
            "nearest": min(distance, key=distance.__getitem__),
        }
        print("sample", b, out[b], flush=True)
    return out


def vae_ceiling(pipe, n: int) -> dict:
    """Per background: how the VAE's reconstructions of ``n`` validation scenes read back."""
    reads: dict[str, dict[str, int]] = {}
    for seed in split_seeds("validation", n):
        scene = render_scene(seed)
        image = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            latents = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
        read = read_background(_to_images(pipe, latents)[0], scene.class_map == 0)
        counts = reads.setdefault(scene.background, {})
        counts[read] = counts.get(read, 0) + 1
    right = sum(c.get(b, 0) for b, c in reads.items())
    return {"scenes": n, "recovered": round(right / n, 3), "reads_by_named": reads}


def text_separation(pipe, scene, names: list[str]) -> dict:
    """Cosine similarity between the prompt embeddings of two backgrounds, by position."""
    embeds = _encode(pipe, [_swap(scene.prompt, b) for b in names]).double()
    ids = pipe.tokenizer(_swap(scene.prompt, names[0])).input_ids
    unit = torch.nn.functional.normalize(embeds, dim=-1)
    pairwise = torch.einsum("ipd,jpd->ijp", unit, unit)
    off = ~torch.eye(len(names), dtype=torch.bool)
    per_position = pairwise[off].mean(0)
    word = len(ids) - 3  # the background word's first token: "... <word> background </s>"
    flat = torch.nn.functional.normalize(embeds.flatten(1), dim=-1)
    return {
        "tokens": len(ids),
        "cos_at_background_word": round(float(per_position[word]), 4),
        "cos_at_eos": round(float(per_position[len(ids) - 1]), 4),
        "cos_at_padding_mean": round(float(per_position[len(ids) :].mean()), 4),
        "cos_whole_prompt": round(float((flat @ flat.T)[off].mean()), 4),
        "token_norm": round(float(embeds.norm(dim=-1).mean()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=_shapes.WEIGHTS_DIR)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--vae-scenes", type=int, default=70)
    parser.add_argument("--loss-scenes", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    original = _shapes.WEIGHTS_DIR
    _shapes.WEIGHTS_DIR = args.weights
    try:
        pipe = load_pipeline("shapes", condition="seg")
    finally:
        _shapes.WEIGHTS_DIR = original
    names = list(BACKGROUNDS)
    scenes = [render_scene(s) for s in split_seeds("validation", args.scenes)]
    mean_colour = np.mean([c for c, _, _ in BACKGROUNDS.values()], axis=0)
    report = {
        "weights": str(args.weights),
        "prediction_type": pipe.scheduler.config.prediction_type,
        "text": text_separation(pipe, scenes[0], names),
        "signal_leak": signal_leak(pipe, names),
        "reader_on_mean_colour": read_background(np.tile(mean_colour.astype(np.uint8), (8, 8, 1))),
        "prompt_worth": prompt_worth(pipe, args.loss_scenes, names),
        "vae_ceiling": vae_ceiling(pipe, args.vae_scenes) if args.vae_scenes > 0 else None,
    }
    pipe.set_progress_bar_config(disable=True)
    report["sampled_channel_means"] = sampled_channel_means(
        pipe, scenes[0], names, report["signal_leak"]["channel_means"]
    )
    print(json.dumps(report, indent=2), flush=True)
    report["prompt_vs_input"] = prompt_vs_input(pipe, scenes, names)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
