"""Is the prompt guard sensitive? The drop in prompt adherence when the prompt's force is taken away.

A prompt metric guards what only the prompt carries; it is worth a budget only if taking the prompt's force
away moves it. For each condition type this generates the first ``--samples`` validation scenes of the shapes
benchmark twice from the same seeds, at the model's recommended guidance and at guidance 1 (no CFG), scores
both with the search's prompt metric (``PROMPT_METRICS["background"]``: the soft background reading, a
proxy) and states the paired one-sided lower confidence bound of the drop
(:func:`hgc_tune.fidelity.paired_loss_bound`, the bound the search uses). The guard is sensitive on a
condition type when that lower bound exceeds ``--budget`` (1.5 points by default): a policy that removed
guidance would then fail it. The 0/1 reading (the share of scenes whose background is read back) is printed
beside it.

When the recommended guidance is itself 1, there is no guidance to take away and that comparison is empty.
``--without-background`` compares instead, at the same guidance, the scene's prompt with the same prompt
less its background words ("... on a wood background" -> "..."), both scored against the scene's own prompt:
whether the metric sees the prompt-only content taken away, whatever takes it.

Usage (from the repository root):
    PYTHONPATH=. python analysis/prompt_sensitivity.py --samples 64 \\
        --json-out analysis/prompt_sensitivity.json
    PYTHONPATH=. python analysis/prompt_sensitivity.py --samples 64 --without-background
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

# The background phrase every shapes prompt ends with (hgc_tune.data's scene description).
_BACKGROUND_PHRASE = re.compile(r" on an? \w+ background$")


def without_background(prompt: str) -> str:
    """The prompt less its trailing background phrase (unchanged if it has none)."""
    return _BACKGROUND_PHRASE.sub("", prompt)


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
    strip_background: bool = False,
) -> dict[str, Any]:
    """The prompt metric of one condition type at the recommended guidance (or ``high``) and at ``low``,
    paired; ``weights``: a shapes weights folder other than the shipped one. With ``strip_background`` the
    second arm runs at the same guidance with the prompts less their background phrase instead."""
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
    if strip_background:
        low = recommended
        arms = {
            "high": jobs,
            "low": [dataclasses.replace(j, prompt=without_background(j.prompt)) for j in jobs],
        }
    else:
        arms = {"high": jobs, "low": jobs}
    guidances = {"high": recommended, "low": low}
    scores: dict[str, list[float]] = {}
    reads: dict[str, list[float]] = {}
    started = time.perf_counter()
    for arm, arm_jobs in arms.items():
        settings = GenerationSettings(steps, guidances[arm], height, width, samples_per_call=samples_per_call)
        images = [o.image for o in iter_outputs(pipe, None, arm_jobs, settings)]
        # both arms are scored against the scene's own prompt
        scores[arm] = [float(metric.fn(i, j.prompt)) for i, j in zip(images, jobs)]
        reads[arm] = [background_adherence(i, j.prompt) for i, j in zip(images, jobs)]
    bound = paired_loss_bound(scores["high"], scores["low"], metric, confidence)
    return {
        "condition": condition,
        "samples": len(jobs),
        "recommended_guidance": recommended,
        "low_guidance": low,
        "compared": "prompt without its background" if strip_background else f"guidance {low:g}",
        "score_recommended": float(np.mean(scores["high"])),
        "score_low": float(np.mean(scores["low"])),
        "drop": bound.loss,
        "drop_lower": bound.lower,
        "drop_upper": bound.upper,
        "confidence": bound.confidence,
        "read_back_recommended": float(np.mean(reads["high"])),
        "read_back_low": float(np.mean(reads["low"])),
        "per_sample_recommended": scores["high"],
        "per_sample_low": scores["low"],
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
    parser.add_argument(
        "--without-background",
        action="store_true",
        help="compare with the prompts less their background phrase, at the same guidance (for a model "
        "whose recommended guidance is 1)",
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
            strip_background=args.without_background,
        )
        row["sensitive"] = row["drop_lower"] > args.budget
        rows.append(row)
        print(
            f"{condition:>6}: background score {row['score_recommended']:.3f} at guidance "
            f"{row['recommended_guidance']:g} -> {row['score_low']:.3f} with {row['compared']}; drop "
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
