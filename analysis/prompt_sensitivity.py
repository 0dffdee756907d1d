"""Is the prompt guard sensitive? The drop in prompt adherence when classifier-free guidance is taken away.

A prompt metric guards what only the prompt carries; it is worth a budget only if taking the prompt's force
away moves it. For each condition type this generates the first ``--samples`` validation scenes of the shapes
benchmark twice from the same seeds, at the model's recommended guidance and at guidance 1 (no CFG), scores
both with the search's prompt metric (``PROMPT_METRICS["background"]``: the soft background reading, a
proxy) and states the paired one-sided lower confidence bound of the drop
(:func:`hgc_tune.fidelity.paired_loss_bound`, the bound the search uses). The guard is sensitive on a
condition type when that lower bound exceeds ``--budget`` (1.5 points by default): a policy that removed
guidance would then fail it. The 0/1 reading (the share of scenes whose background is read back) is printed
beside it.

Usage (from the repository root):
    PYTHONPATH=. python analysis/prompt_sensitivity.py --samples 64 \\
        --json-out analysis/prompt_sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def measure_condition(
    condition: str,
    *,
    samples: int,
    steps: int,
    low: float,
    confidence: float,
    samples_per_call: int,
    weights: Path | None = None,
    high: float | None = None,
) -> dict[str, Any]:
    """The prompt metric of one condition type at the recommended guidance (or ``high``) and at ``low``,
    paired; ``weights``: a shapes weights folder other than the shipped one."""
    from hgc_tune.data import open_dataset
    from hgc_tune.fidelity import PROMPT_METRICS, background_adherence, paired_loss_bound
    from hgc_tune.generation import GenerationSettings, iter_outputs
    from hgc_tune.generation._inputs import generation_size, jobs_from_samples
    from hgc_tune.models import load_pipeline, pipeline_guidance
    from hgc_tune.models._guidance import weights_recommended_guidance
    from hgc_tune.models._shapes import shapes_checkpoint

    if weights is None:
        pipe = load_pipeline("shapes", condition=condition)
        measured = None
    else:
        base, controlnet = shapes_checkpoint(condition, weights_dir=weights)
        pipe = load_pipeline(str(base), controlnet=str(controlnet))
        measured = weights_recommended_guidance(weights)
    recommended = high if high is not None else measured or pipeline_guidance(pipe).scale
    jobs = jobs_from_samples(
        open_dataset("shapes", condition_type=condition, split="validation", limit=samples)
    )
    height, width = generation_size(pipe)
    metric = PROMPT_METRICS["background"]
    scores: dict[float, list[float]] = {}
    reads: dict[float, list[float]] = {}
    started = time.perf_counter()
    for guidance in (recommended, low):
        settings = GenerationSettings(steps, guidance, height, width, samples_per_call=samples_per_call)
        images = [o.image for o in iter_outputs(pipe, None, jobs, settings)]
        scores[guidance] = [float(metric.fn(i, j.prompt)) for i, j in zip(images, jobs)]
        reads[guidance] = [background_adherence(i, j.prompt) for i, j in zip(images, jobs)]
    bound = paired_loss_bound(scores[recommended], scores[low], metric, confidence)
    return {
        "condition": condition,
        "samples": len(jobs),
        "recommended_guidance": recommended,
        "low_guidance": low,
        "score_recommended": float(np.mean(scores[recommended])),
        "score_low": float(np.mean(scores[low])),
        "drop": bound.loss,
        "drop_lower": bound.lower,
        "drop_upper": bound.upper,
        "confidence": bound.confidence,
        "read_back_recommended": float(np.mean(reads[recommended])),
        "read_back_low": float(np.mean(reads[low])),
        "per_sample_recommended": scores[recommended],
        "per_sample_low": scores[low],
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conditions", default="seg,canny,hed,depth")
    parser.add_argument("--samples", type=int, default=64, help="validation scenes per condition type")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--low-guidance", type=float, default=1.0, help="the guidance compared (1: no CFG)")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--budget", type=float, default=0.015, help="the prompt guard's budget (points)")
    parser.add_argument("--samples-per-call", type=int, default=8)
    parser.add_argument("--weights", type=Path, default=None, help="shapes weights (default: the shipped)")
    parser.add_argument(
        "--guidance", type=float, default=None, help="the guidance compared against (default: recommended)"
    )
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for condition in [c.strip() for c in args.conditions.split(",") if c.strip()]:
        row = measure_condition(
            condition,
            samples=args.samples,
            steps=args.steps,
            low=args.low_guidance,
            confidence=args.confidence,
            samples_per_call=args.samples_per_call,
            weights=args.weights,
            high=args.guidance,
        )
        row["sensitive"] = row["drop_lower"] > args.budget
        rows.append(row)
        print(
            f"{condition:>6}: background score {row['score_recommended']:.3f} at guidance "
            f"{row['recommended_guidance']:g} -> {row['score_low']:.3f} at {row['low_guidance']:g}; drop "
            f"{100 * row['drop']:.1f} points, {100 * row['confidence']:g}% lower bound "
            f"{100 * row['drop_lower']:.1f} ({'>' if row['sensitive'] else '<='} {100 * args.budget:g}: "
            f"{'sensitive' if row['sensitive'] else 'NOT sensitive'}); read back "
            f"{100 * row['read_back_recommended']:.0f} % -> {100 * row['read_back_low']:.0f} % "
            f"({row['samples']} scenes, {row['seconds']:.0f} s)",
            flush=True,
        )
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"budget": args.budget, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
