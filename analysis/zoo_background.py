"""How often the shapes model draws the background its prompt names (prompt adherence, issue 20/23).

Generates the first ``--samples`` validation scenes per condition type with the ``shapes`` weights
(``--weights``, the shipped ones by default) at full compute and reads the background back with
:func:`hgc_tune.fidelity.read_background`, over the pixels the scene's class map (what the seg condition
marks) calls background. Prints one line per condition type and writes ``--json-out``.

Usage (from the repository root):
    PYTHONPATH=. python analysis/zoo_background.py [--weights DIR] [--samples 32] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from hgc_tune.data._benchmark import split_seeds
from hgc_tune.data.shapes import BACKGROUNDS, CONDITION_TYPES, render_scene
from hgc_tune.fidelity import read_background
from hgc_tune.generation._inputs import condition_input
from hgc_tune.models import _shapes, load_pipeline

# The backgrounds of version 1 of the benchmark, the only ones the weights shipped before it knew.
_OLD = tuple(BACKGROUNDS)[:3]


def _generate(pipe, scenes, condition: str, *, steps: int, guidance: float, batch: int) -> np.ndarray:
    images = []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        generators = [torch.Generator("cpu").manual_seed(s.seed) for s in chunk]
        out = pipe(
            prompt=[s.prompt for s in chunk],
            # PIL, as the library passes it: the pipeline reads a numpy condition as floats in [0, 1]
            image=[condition_input(s.condition(condition)) for s in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="np",
        ).images
        images.append(np.clip(np.rint(np.asarray(out, dtype=np.float64) * 255), 0, 255).astype(np.uint8))
    return np.concatenate(images)


def measure(
    weights: Path,
    samples: int,
    steps: int,
    guidance: float,
    batch: int,
    conditions: tuple[str, ...] = CONDITION_TYPES,
) -> dict:
    """Per condition type: the share of samples whose background is read back right, overall and split by
    whether the named background is one of version 1's three; confusions of the reads."""
    scenes = [render_scene(seed) for seed in split_seeds("validation", samples)]
    named = Counter(s.background for s in scenes)
    results = {}
    original = _shapes.WEIGHTS_DIR
    _shapes.WEIGHTS_DIR = weights
    try:
        for condition in conditions:
            started = time.perf_counter()
            pipe = load_pipeline("shapes", condition=condition)
            pipe.set_progress_bar_config(disable=True)
            images = _generate(pipe, scenes, condition, steps=steps, guidance=guidance, batch=batch)
            reads = [
                read_background(image, s.class_map == 0) for image, s in zip(images, scenes, strict=True)
            ]
            right = [r == s.background for r, s in zip(reads, scenes, strict=True)]
            old = [ok for ok, s in zip(right, scenes, strict=True) if s.background in _OLD]
            new = [ok for ok, s in zip(right, scenes, strict=True) if s.background not in _OLD]
            results[condition] = {
                "recovered": float(np.mean(right)),
                "recovered_old_three": float(np.mean(old)) if old else None,
                "recovered_new": float(np.mean(new)) if new else None,
                "samples": len(right),
                "samples_old_three": len(old),
                "reads": dict(Counter(reads)),
                "seconds": round(time.perf_counter() - started, 1),
            }
    finally:
        _shapes.WEIGHTS_DIR = original
    return {
        "weights": str(weights),
        "split": "validation",
        "samples": samples,
        "steps": steps,
        "guidance": guidance,
        "named": dict(named),
        "chance": 1.0 / len(BACKGROUNDS),
        "ground_truth_recovered": float(
            np.mean([read_background(s.image, s.class_map == 0) == s.background for s in scenes])
        ),
        "conditions": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=_shapes.WEIGHTS_DIR)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--conditions", default=",".join(CONDITION_TYPES), help="condition types (default all)"
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    conditions = tuple(c for c in args.conditions.split(",") if c)
    unknown = [c for c in conditions if c not in CONDITION_TYPES]
    if unknown or not conditions:
        parser.error(f"--conditions must name some of {', '.join(CONDITION_TYPES)}, got {args.conditions!r}")
    torch.set_num_threads(args.threads)
    report = measure(args.weights, args.samples, args.steps, args.guidance, args.batch, conditions)
    truth = report["ground_truth_recovered"]
    print(f"named backgrounds: {report['named']}; ground truth read back: {truth:.3f}")
    for condition, r in report["conditions"].items():
        print(
            f"{condition}: background recovered {r['recovered']:.3f} ({r['samples']} samples); "
            f"old three {r['recovered_old_three']} ({r['samples_old_three']}); new {r['recovered_new']}; "
            f"reads {r['reads']} ({r['seconds']} s)"
        )
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
