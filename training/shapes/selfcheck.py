"""The end-of-training self-check: does each ControlNet control, measured on held-out scenes?

For each condition type, held-out scenes are generated with the trained ControlNet and with it dropped
(``controlnet_conditioning_scale=0``: the base model from the prompt alone), and the task metric of
:mod:`hgc_tune.fidelity` compares each output with the input condition. The acceptance bars are ratios
against the dropped run, so they measure control, not image quality alone.

Beside them, :func:`vae_reconstruction` reads the VAE's reconstructions of the same scenes with the seg
metric: every generated picture passes through that decoder, so it is the ceiling of what the
colour-read figures (seg mIoU, objects' colours) can reach, and the figure the decoder stage moves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from hgc_tune._atomic import atomic_write
from hgc_tune.fidelity import TaskEvaluator
from hgc_tune.models import load_pipeline

__all__ = ["ACCEPTANCE", "Acceptance", "grid_image", "self_check", "vae_reconstruction"]


@dataclass(frozen=True)
class Acceptance:
    """One condition type's bar: ``with_control`` must beat ``dropped`` by ``ratio`` (and reach ``floor``)."""

    metric: str
    higher_is_better: bool
    ratio: float
    floor: float | None = None

    def passes(self, with_control: float, dropped: float) -> bool:
        """Whether the pair of metric values meets the bar."""
        if self.higher_is_better:
            ok = with_control >= self.ratio * dropped
            return ok and (self.floor is None or with_control >= self.floor)
        return with_control <= self.ratio * dropped

    def describe(self) -> str:
        """The bar in words."""
        if self.higher_is_better:
            floor = f" and >= {self.floor}" if self.floor is not None else ""
            return f"{self.metric} >= {self.ratio}x dropped{floor}"
        return f"{self.metric} <= {self.ratio}x dropped"


ACCEPTANCE: Mapping[str, Acceptance] = {
    "seg": Acceptance("miou", True, 2.0, floor=0.5),
    "canny": Acceptance("edge_f1", True, 2.0),
    "hed": Acceptance("edge_ssim", True, 1.5),
    "depth": Acceptance("depth_rmse", False, 0.5),
}


def _condition_array(scene: Any, condition: str) -> np.ndarray:
    array = np.asarray(getattr(scene, condition), dtype=np.uint8)
    return array if array.ndim == 3 else np.repeat(array[:, :, None], 3, axis=2)


def grid_image(rows: Sequence[Sequence[np.ndarray]], scale: int = 2, gap: int = 2) -> np.ndarray:
    """Tile ``rows`` of equally sized uint8 ``[H, W, 3]`` images (nearest-neighbour upscaled) on white."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    cell_h, cell_w = h * scale, w * scale
    grid = np.full((len(rows) * (cell_h + gap) + gap, cols * (cell_w + gap) + gap, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
            y, x = gap + i * (cell_h + gap), gap + j * (cell_w + gap)
            grid[y : y + cell_h, x : x + cell_w] = big
    return grid


def vae_reconstruction(
    vae, scenes: Sequence[Any], *, task_models: Mapping[str, Callable[..., Any]] | None = None
) -> dict[str, Any]:
    """How well ``vae`` reconstructs the scenes' pictures, read by the seg task metric (mIoU).

    Each ground-truth picture is encoded and its posterior mean decoded (on ``vae``'s device and dtype);
    the reconstruction and the picture itself are segmented and compared with the scene's seg map.

    Returns:
        ``{"metric": "miou", "samples", "reconstruction", "ground_truth"}``: mean mIoU of the
        reconstructions, and of the ground-truth pictures (the reader's own ceiling).
    """
    evaluator = TaskEvaluator("seg", "miou", **dict(task_models or {}))
    truth = np.stack([np.asarray(s.image, dtype=np.uint8) for s in scenes])
    x = torch.from_numpy(truth).permute(0, 3, 1, 2).to(vae.device, vae.dtype) / 127.5 - 1
    with torch.no_grad():
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
    pictures = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    seg = [_condition_array(s, "seg") for s in scenes]
    return {
        "metric": "miou",
        "samples": len(scenes),
        "reconstruction": float(np.mean([evaluator.score(p, c) for p, c in zip(pictures, seg, strict=True)])),
        "ground_truth": float(np.mean([evaluator.score(t, c) for t, c in zip(truth, seg, strict=True)])),
    }


def _generate(pipe, prompts, controls, *, steps, guidance, scale, seed, device) -> np.ndarray:
    generators = [torch.Generator(device).manual_seed(seed + i) for i in range(len(prompts))]
    out = pipe(
        prompt=list(prompts),
        image=list(controls),
        num_inference_steps=steps,
        guidance_scale=guidance,
        controlnet_conditioning_scale=scale,
        generator=generators,
        output_type="np",
    ).images
    return np.clip(np.rint(np.asarray(out, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def self_check(
    base_dir: Path,
    controlnet_dirs: Mapping[str, Path],
    scenes: Sequence[Any],
    *,
    guidance_scales: Sequence[float],
    steps: int,
    device: str,
    seed: int,
    report_dir: Path,
    task_models: Mapping[str, Callable[..., Any]] | None = None,
    grid_rows: int = 8,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Generate held-out scenes with and without each ControlNet and score them against the bars.

    The pipelines are loaded from the saved folders through :func:`hgc_tune.models.load_pipeline` (the
    path users take), in fp32 with UniPC, at each of ``guidance_scales``; the bars are judged at the first
    (the recorded recommended guidance of the weights trained on, by default). The self-check chooses no
    guidance scale: ``analysis/recommend_guidance.py`` measures it on the finished weights and is the one
    writer of their ``recommended_guidance``. Writes a sample grid per condition type (condition | with
    ControlNet | dropped | ground truth, at the judged scale) to ``report_dir``.

    Returns:
        ``{"conditions": {cond: {str(guidance): {"metric", "with_control", "dropped", "passes",
        "per_sample_with_control", "per_sample_dropped"}}}, "bars": {cond: text}, "judged_guidance",
        "all_pass", "vae_reconstruction": see :func:`vae_reconstruction`}``.
    """
    prompts = [str(s.prompt) for s in scenes]
    shown = range(min(grid_rows, len(scenes)))
    results: dict[str, Any] = {}
    grids: dict[tuple[str, str], list[list[np.ndarray]]] = {}
    for condition, controlnet_dir in controlnet_dirs.items():
        bar = ACCEPTANCE[condition]
        evaluator = TaskEvaluator(condition, bar.metric, **dict(task_models or {}))
        pipe = load_pipeline(str(base_dir), controlnet=str(controlnet_dir), scheduler="unipc", device=device)
        conditions = [_condition_array(s, condition) for s in scenes]
        controls = [Image.fromarray(c) for c in conditions]
        per_guidance: dict[str, Any] = {}
        for guidance in guidance_scales:
            kwargs = {"steps": steps, "guidance": guidance, "seed": seed, "device": device}
            with_control = _generate(pipe, prompts, controls, scale=1.0, **kwargs)
            dropped = _generate(pipe, prompts, controls, scale=0.0, **kwargs)
            scores_on = [evaluator.score(img, c) for img, c in zip(with_control, conditions, strict=True)]
            scores_off = [evaluator.score(img, c) for img, c in zip(dropped, conditions, strict=True)]
            on, off = float(np.mean(scores_on)), float(np.mean(scores_off))
            passes = bar.passes(on, off)
            per_guidance[str(guidance)] = {
                "metric": bar.metric,
                "with_control": on,
                "dropped": off,
                "passes": passes,
                "per_sample_with_control": scores_on,
                "per_sample_dropped": scores_off,
            }
            log(
                f"  [check] {condition:5s} guidance={guidance:<4g} {bar.metric}: with ControlNet {on:.3f}, "
                f"dropped {off:.3f} -> {'PASS' if passes else 'FAIL'} ({bar.describe()})"
            )
            grids[condition, str(guidance)] = [
                [conditions[i], with_control[i], dropped[i], np.asarray(scenes[i].image, dtype=np.uint8)]
                for i in shown
            ]
        results[condition] = per_guidance
        del pipe
    vae = AutoencoderKL.from_pretrained(base_dir / "vae", torch_dtype=torch.float32).to(device).eval()
    reconstruction = vae_reconstruction(vae, scenes, task_models=task_models)
    log(
        f"  [check] VAE reconstruction of {len(scenes)} held-out pictures, seg mIoU: "
        f"{reconstruction['reconstruction']:.3f} (ground truth {reconstruction['ground_truth']:.3f})"
    )
    judged = guidance_scales[0]
    for condition in results:
        grid = grid_image(grids[condition, str(judged)])
        picture = Image.fromarray(grid)
        atomic_write(
            report_dir / f"zoo-samples-{condition}.png", lambda tmp, p=picture: p.save(tmp, format="PNG")
        )
    return {
        "conditions": results,
        "bars": {c: ACCEPTANCE[c].describe() for c in results},
        "judged_guidance": judged,
        "all_pass": bool(results) and all(results[c][str(judged)]["passes"] for c in results),
        "vae_reconstruction": reconstruction,
        "steps": steps,
        "scheduler": "UniPCMultistepScheduler",
        "samples": len(scenes),
        "grid_columns": ["condition", "with ControlNet", "ControlNet dropped", "ground truth"],
        "grid_guidance": judged,
    }
