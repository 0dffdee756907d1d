"""Measure the embedded ``shapes`` model against its acceptance bars and print a markdown table + JSON.

Every figure comes from the documented commands or the library they call, on the validation split, at the
weights' recommended guidance (``recommended_guidance`` in their ``training.json``; ``--guidance`` overrides):

- control, per condition type: ``hgc-tune evaluate --policy peer:cnwin-k0-drop`` (full compute = the
  ControlNet at work; the policy = the ControlNet dropped at every step), 32 samples, 20 steps;
- prompt adherence, per condition type: the share of the same 32 full-compute pictures whose background, read
  back by :func:`hgc_tune.fidelity.read_background` (a proxy), is the one the prompt names;
- colours: the share of objects drawn in their class's colour, i.e. whose pixels (by the scene's class map)
  the benchmark's colour decoder (:func:`hgc_tune.data.shapes.decode_class_map`) gives mostly their own class
  (a proxy too: each class appears at most once per scene, so a class region is one object);
- grid cells: of the first 16 of those pictures (a sample grid's 4 x 4), how many have both the named
  background and every object in its colour (``--grids DIR`` writes that grid per condition type,
  ``DIR/zoo-bars-grid-<type>.png``, each cell framed green where the readers score it right, red where not);
- stability: the paired per-sample change of seg mIoU under ``peer:deepcache-n3-b0``, 64 samples;
- the VAE's ceiling: mIoU of the class map decoded from encode -> decode of 64 held-out scenes, beside the
  ground-truth pictures' own decoding;
- the size of what ships.

Usage:
    PYTHONPATH=. python analysis/zoo_bars.py [--weights hgc_tune/models/weights/shapes] [--json-out FILE] \
        [--grids reports/zoo]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CONDITIONS = ("seg", "canny", "hed", "depth")
# condition -> (metric, higher is better, ratio vs dropped, floor)
BARS = {
    "seg": ("miou", True, 2.5, 0.65),
    "canny": ("edge_f1", True, 3.0, None),
    "hed": ("edge_ssim", True, 3.0, None),
    "depth": ("depth_rmse", False, 0.45, None),
}
BACKGROUND_BAR = 0.90
COLOUR_BAR = 0.90
VAE_BAR = 0.93
STABILITY_STD_BAR = 0.03
FLIP = 0.1
SIZE_BAR_MB = 50.0
# Cells of a sample grid (4 x 4) and how many the readers must score right.
GRID_CELLS = 16
GRID_BAR = 14
SPLIT = "validation"
STEPS = 20


def _evaluate(weights: Path, condition: str, policy: str, samples: int, guidance: float) -> dict:
    command = [
        sys.executable, "-m", "hgc_tune", "evaluate", "--model", str(weights / "base"),
        "--controlnet", str(weights / f"controlnet-{condition}"), "--condition", condition,
        "--policy", policy, "--dataset", "shapes", "--split", SPLIT, "--samples", str(samples),
        "--steps", str(STEPS), "--guidance-scale", f"{guidance:g}", "--json",
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout)


def colours_right(image, class_map) -> tuple[int, int]:
    """(objects drawn in their class's colour, objects) of one picture: an object is right when most of its
    pixels decode to its own class."""
    import numpy as np

    from hgc_tune.data.shapes import decode_class_map

    decoded = decode_class_map(image)
    labels = [int(label) for label in np.unique(class_map) if label != 0]
    right = sum(int(np.mean(decoded[class_map == label] == label) > 0.5) for label in labels)
    return right, len(labels)


def scored_grid(images, cells_right, columns: int = 4, scale: int = 2, frame: int = 2):
    """The pictures as one grid (row-major), each cell upscaled ``scale`` times and framed green where
    ``cells_right`` says the readers scored it right, red where not: an ``(H, W, 3)`` uint8 array."""
    import numpy as np

    from training.shapes.selfcheck import grid_image

    cells = []
    for image, right in zip(images, cells_right, strict=True):
        big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        cell = np.empty((big.shape[0] + 2 * frame, big.shape[1] + 2 * frame, 3), dtype=np.uint8)
        cell[:] = (0, 160, 0) if right else (200, 0, 0)
        cell[frame : frame + big.shape[0], frame : frame + big.shape[1]] = big
        cells.append(cell)
    # the trainer's tiler: cells edge to edge, empty places white
    return grid_image([cells[i : i + columns] for i in range(0, len(cells), columns)], scale=1, gap=0)


def _prompt_and_colours(
    weights: Path, condition: str, samples: int, guidance: float, grids: Path | None = None
) -> dict:
    """Full-compute pictures of the first ``samples`` validation scenes, read back for their background and
    their objects' colours (and, with ``grids``, the first 16 written there as a scored grid)."""
    import numpy as np
    import torch

    from hgc_tune.data._benchmark import split_seeds
    from hgc_tune.data.shapes import render_scene
    from hgc_tune.fidelity import read_background
    from hgc_tune.generation._inputs import condition_input
    from hgc_tune.models import load_pipeline
    from hgc_tune.models._shapes import shapes_checkpoint

    scenes = [render_scene(seed) for seed in split_seeds(SPLIT, samples)]
    base, controlnet = shapes_checkpoint(condition, weights_dir=weights)
    pipe = load_pipeline(str(base), controlnet=str(controlnet))
    pipe.set_progress_bar_config(disable=True)
    images = []
    for start in range(0, len(scenes), 8):
        chunk = scenes[start : start + 8]
        out = pipe(
            prompt=[s.prompt for s in chunk],
            # PIL, as the library passes it: the pipeline reads a numpy condition as floats in [0, 1]
            image=[condition_input(s.condition(condition)) for s in chunk],
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            generator=[torch.Generator("cpu").manual_seed(s.seed) for s in chunk],
            output_type="np",
        ).images
        images += list(np.clip(np.rint(np.asarray(out, dtype=np.float64) * 255), 0, 255).astype(np.uint8))
    backgrounds = [
        read_background(image, s.class_map == 0) == s.background
        for image, s in zip(images, scenes, strict=True)
    ]
    colours = [colours_right(image, s.class_map) for image, s in zip(images, scenes, strict=True)]
    objects = sum(n for _, n in colours)
    # A grid cell is right when the readers find the named background and every object in its colour.
    cells = [b and r == n for b, (r, n) in zip(backgrounds, colours, strict=True)][:GRID_CELLS]
    if grids is not None:
        from PIL import Image

        grids.mkdir(parents=True, exist_ok=True)
        grid = scored_grid(images[: len(cells)], cells)
        Image.fromarray(grid).save(grids / f"zoo-bars-grid-{condition}.png")
    return {
        "samples": len(scenes),
        "background_recovered": float(np.mean(backgrounds)),
        "objects": objects,
        "colours_right": sum(r for r, _ in colours) / objects if objects else float("nan"),
        "grid_cells_right": sum(cells),
        "grid_cells": len(cells),
    }


def _vae_ceiling(weights: Path, samples: int) -> dict:
    """The VAE's reconstruction of ``samples`` held-out scenes, read as the trainer's self-check reads it."""
    import torch
    from diffusers import AutoencoderKL

    from hgc_tune.data._benchmark import split_seeds
    from hgc_tune.data._shapes import render_scene
    from training.shapes.selfcheck import vae_reconstruction

    vae = AutoencoderKL.from_pretrained(weights / "base" / "vae", torch_dtype=torch.float32).eval()
    figures = vae_reconstruction(vae, [render_scene(s, size=64) for s in split_seeds("heldout", samples)])
    return {
        "samples": samples,
        "reconstruction_miou": figures["reconstruction"],
        "ground_truth_miou": figures["ground_truth"],
    }


def _size_mb(weights: Path) -> float:
    files = [
        f for sub in ("base", *(f"controlnet-{c}" for c in CONDITIONS)) for f in (weights / sub).rglob("*")
    ]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def measure(
    weights: Path,
    control_samples: int,
    stability_samples: int,
    guidance: float,
    grids: Path | None = None,
) -> dict:
    """All figures of the table, as JSON-ready data (``grids``: where to write the scored sample grids)."""
    control, prompt = {}, {}
    for condition in CONDITIONS:
        metric, higher, ratio_bar, floor = BARS[condition]
        result = _evaluate(weights, condition, "peer:cnwin-k0-drop", control_samples, guidance)
        with_control, dropped = result["full"], result["policy"]
        ratio = with_control / dropped if dropped else float("inf")
        passes = ratio >= ratio_bar if higher else ratio <= ratio_bar
        if floor is not None:
            passes = passes and with_control >= floor
        control[condition] = {
            "metric": metric,
            "with_control": with_control,
            "dropped": dropped,
            "ratio": ratio,
            "bar": f"{'>=' if higher else '<='} {ratio_bar}x dropped" + (f" and >= {floor}" if floor else ""),
            "passes": passes,
        }
        read = _prompt_and_colours(weights, condition, control_samples, guidance, grids)
        read["background_passes"] = read["background_recovered"] >= BACKGROUND_BAR
        read["colours_pass"] = read["colours_right"] >= COLOUR_BAR
        read["grid_passes"] = read["grid_cells_right"] >= GRID_BAR
        prompt[condition] = read
    cached = _evaluate(weights, "seg", "peer:deepcache-n3-b0", stability_samples, guidance)
    changes = [p - f for f, p in zip(cached["per_sample_full"], cached["per_sample_policy"])]
    stability = {
        "samples": len(changes),
        "mean_full": cached["full"],
        "mean_change": statistics.fmean(changes),
        "std_change": statistics.stdev(changes),
        "flips_over_0.1": sum(abs(c) > FLIP for c in changes),
    }
    stability["passes"] = stability["std_change"] <= STABILITY_STD_BAR and stability["flips_over_0.1"] <= 1
    vae = _vae_ceiling(weights, 64)
    vae["passes"] = vae["reconstruction_miou"] >= VAE_BAR
    size = _size_mb(weights)
    return {
        "weights": str(weights),
        "split": SPLIT,
        "steps": STEPS,
        "guidance": guidance,
        "control": control,
        "prompt_and_colours": prompt,
        "stability": stability,
        "vae": vae,
        "size_mb": size,
        "size_passes": size <= SIZE_BAR_MB,
    }


def markdown(figures: dict) -> str:
    """The figures as the acceptance table."""
    rows = ["| what | measured | bar | passes |", "| --- | --- | --- | --- |"]
    for condition, c in figures["control"].items():
        rows.append(
            f"| {condition} {c['metric']} | {c['with_control']:.3f} vs dropped {c['dropped']:.3f} "
            f"({c['ratio']:.2f}x) | {c['bar']} | {'yes' if c['passes'] else 'no'} |"
        )
    for condition, r in figures["prompt_and_colours"].items():
        rows.append(
            f"| {condition}: background named in the prompt, read back ({r['samples']}) | "
            f"{r['background_recovered']:.1%} | >= {BACKGROUND_BAR:.0%} | "
            f"{'yes' if r['background_passes'] else 'no'} |"
        )
        rows.append(
            f"| {condition}: objects in their class's colour ({r['objects']}) | {r['colours_right']:.1%} | "
            f">= {COLOUR_BAR:.0%} | {'yes' if r['colours_pass'] else 'no'} |"
        )
        rows.append(
            f"| {condition}: grid cells with both right (first {r['grid_cells']}) | "
            f"{r['grid_cells_right']} | >= {GRID_BAR} | {'yes' if r['grid_passes'] else 'no'} |"
        )
    v = figures["vae"]
    rows.append(
        f"| VAE reconstruction (held-out, {v['samples']}) | mIoU {v['reconstruction_miou']:.3f} "
        f"(ground truth "
        f"{v['ground_truth_miou']:.3f}) | >= {VAE_BAR} | {'yes' if v['passes'] else 'no'} |"
    )
    s = figures["stability"]
    rows.append(
        f"| seg mIoU change under deepcache-n3-b0 ({s['samples']}) | std {s['std_change']:.4f}, "
        f"{s['flips_over_0.1']} samples > {FLIP} (mean mIoU {s['mean_full']:.3f}) | std <= "
        f"{STABILITY_STD_BAR}, <= 1 flip | {'yes' if s['passes'] else 'no'} |"
    )
    rows.append(
        f"| shipped weights | {figures['size_mb']:.1f} MB | <= {SIZE_BAR_MB:g} MB | "
        f"{'yes' if figures['size_passes'] else 'no'} |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("hgc_tune/models/weights/shapes"))
    parser.add_argument("--control-samples", type=int, default=32)
    parser.add_argument("--stability-samples", type=int, default=64)
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale (default: the weights' recommended one, from their training.json)",
    )
    parser.add_argument("--json-out", type=Path, help="also write the figures here")
    parser.add_argument(
        "--grids",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each condition type's scored 4 x 4 sample grid to DIR/zoo-bars-grid-<type>.png",
    )
    args = parser.parse_args(argv)
    guidance = args.guidance
    if guidance is None:
        from hgc_tune.models._guidance import weights_recommended_guidance

        guidance = weights_recommended_guidance(args.weights) or 7.5
    print(f"{args.weights}: {SPLIT} split, {STEPS} steps, guidance {guidance:g}", file=sys.stderr)
    figures = measure(args.weights, args.control_samples, args.stability_samples, guidance, args.grids)
    print(markdown(figures))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
