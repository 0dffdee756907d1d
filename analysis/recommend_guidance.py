"""Measure a shapes model's recommended guidance scale, and (``--write``) store it with its weights.

Full compute (no policy) at every guidance scale of ``--grid``, on the first ``--samples`` scenes of the
calibration split per condition type, each scene generated from its own seed at every scale (so the scales
are compared on the same scenes and noise). Per condition type and scale it records:

- the **task metric** (``hgc_tune.fidelity.TaskEvaluator``: mIoU for seg, edge F1 for canny, edge SSIM for
  hed, depth RMSE for depth), read from the picture against the scene's condition;
- the **prompt adherence** (``hgc_tune.fidelity.background_adherence``): the share of scenes whose background,
  named only in the prompt, is read back from the picture (over the pixels the scene's class map calls
  background). A *proxy*: it knows the benchmark's backgrounds and nothing else; chance is one in
  ``len(BACKGROUNDS)``.

The choice, one scale per model: among the scales whose prompt adherence (the mean over condition types) is
within ``--adherence-window`` (default 0.01, one percentage point) of the best scale's, the one with the best
**task score**. The task score puts the four metrics on one scale: per condition type, each scale's metric
relative to the best scale's for that type (``m / m_best`` for higher-is-better metrics, ``m_best / m`` for
depth RMSE, lower is better), so each type weighs the same and 1.0 means best on every type; the score is
their mean over condition types. Ties go to the higher adherence, then to the smaller scale.

``--write`` stores the choice in ``DIR/training.json`` as ``recommended_guidance`` (the value
``hgc_tune.models.recommended_guidance`` and ``load_pipeline("shapes")`` read) with the measurement beside
it (``recommended_guidance_measurement``); this tool is that value's one writer. Run it whenever the weights
change.

Usage (from the repository root):
    OMP_NUM_THREADS=1 nice -n 5 python analysis/recommend_guidance.py --samples 16 --steps 20 \\
        --out analysis/recommend_guidance.json --write
    python analysis/recommend_guidance.py --weights runs/shapes-cpu-8 --grid 1,3,7.5 --samples 4 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_GRID: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5)
DEFAULT_WINDOW = 0.01
SPLIT = "calibration"
RULE = (
    "among the scales whose mean prompt adherence is within the window of the best, the best task score "
    "(per condition type the metric relative to the best scale's, m/m_best or m_best/m for depth RMSE, "
    "averaged over condition types); ties: higher adherence, then the smaller scale"
)


def choose_guidance(
    rows: Sequence[Mapping[str, Any]], window: float = DEFAULT_WINDOW
) -> tuple[float, list[dict[str, Any]]]:
    """Apply the choice rule to a measured table.

    Args:
        rows: One per guidance scale: ``{"guidance": g, "conditions": {type: {"task": mean metric,
            "higher_is_better": bool, "adherence": share in [0, 1]}}}``, every row with the same types.
        window: How far below the best mean adherence a scale may be and still be chosen (0.01: one
            percentage point).

    Returns:
        The chosen scale, and the rows with ``task_score``, ``adherence`` (mean over types) and ``eligible``
        added.

    Example:
        >>> rows = [{"guidance": g, "conditions": {"seg": {"task": t, "higher_is_better": True,
        ...          "adherence": a}}} for g, t, a in ((1.0, 0.6, 0.50), (3.0, 0.7, 0.70), (7.5, 0.8, 0.65))]
        >>> choose_guidance(rows)[0]  # 7.5 has the best metric, but its adherence is 5 points below 3's
        3.0
    """
    if not rows:
        raise ValueError("choose_guidance needs at least one measured guidance scale.")
    types = list(rows[0]["conditions"])
    best: dict[str, float] = {}
    for name in types:
        values = [float(r["conditions"][name]["task"]) for r in rows]
        higher = bool(rows[0]["conditions"][name]["higher_is_better"])
        best[name] = max(values) if higher else min(values)
    scored = []
    for row in rows:
        relative = []
        for name in types:
            entry = row["conditions"][name]
            value, top = float(entry["task"]), best[name]
            if entry["higher_is_better"]:
                relative.append(value / top if top > 0 else 1.0)
            else:
                relative.append(top / value if value > 0 else 1.0)
        adherence = sum(float(row["conditions"][n]["adherence"]) for n in types) / len(types)
        scored.append({**row, "task_score": sum(relative) / len(relative), "adherence": adherence})
    best_adherence = max(r["adherence"] for r in scored)
    for row in scored:
        # A small tolerance: a share of n samples within exactly one point must count as within.
        row["eligible"] = row["adherence"] >= best_adherence - window - 1e-12
    chosen = max(
        (r for r in scored if r["eligible"]),
        key=lambda r: (r["task_score"], r["adherence"], -float(r["guidance"])),
    )
    return float(chosen["guidance"]), scored


def _scenes(samples: int) -> list[Any]:
    from hgc_tune.data._benchmark import split_seeds
    from hgc_tune.data.shapes import render_scene

    return [render_scene(seed) for seed in split_seeds(SPLIT, samples)]


def _generate(pipe: Any, scenes: Sequence[Any], condition: str, *, steps: int, guidance: float, batch: int):
    """Full-compute pictures of ``scenes`` (uint8), each from its scene seed: batched, one generator each, so
    every sample starts from the latent it would get alone."""
    import numpy as np
    import torch
    from PIL import Image

    images = []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        out = pipe(
            prompt=[s.prompt for s in chunk],
            image=[Image.fromarray(s.condition(condition)) for s in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(s.seed) for s in chunk],
            output_type="np",
        ).images
        images.append((np.asarray(out) * 255).round().astype(np.uint8))
    return np.concatenate(images)


def measure(
    weights: Path,
    *,
    grid: Sequence[float],
    conditions: Sequence[str],
    samples: int,
    steps: int,
    batch: int = 8,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Full compute at every scale of ``grid``: per scale and condition type, the task metric and the
    background read back (the rows :func:`choose_guidance` takes, with per-sample values)."""
    import numpy as np
    from tqdm.auto import tqdm

    from hgc_tune.fidelity import TaskEvaluator, background_adherence
    from hgc_tune.models import load_pipeline
    from hgc_tune.models._shapes import shapes_checkpoint

    scenes = _scenes(samples)
    rows: dict[float, dict[str, Any]] = {float(g): {"guidance": float(g), "conditions": {}} for g in grid}
    bar = tqdm(total=len(grid) * len(conditions) * len(scenes), unit="image", disable=not progress)
    try:
        for condition in conditions:
            base, controlnet = shapes_checkpoint(condition, weights_dir=weights)
            pipe = load_pipeline(str(base), controlnet=str(controlnet), scheduler="unipc")
            evaluator = TaskEvaluator(condition)
            for guidance in rows:
                bar.set_description(f"{condition} guidance {guidance:g}")
                started = time.perf_counter()
                images = _generate(pipe, scenes, condition, steps=steps, guidance=guidance, batch=batch)
                task = [
                    evaluator.score(img, s.condition(condition))
                    for img, s in zip(images, scenes, strict=True)
                ]
                adherence = [
                    background_adherence(img, s.prompt, s.class_map == 0)
                    for img, s in zip(images, scenes, strict=True)
                ]
                rows[guidance]["conditions"][condition] = {
                    "metric": evaluator.metric.name,
                    "higher_is_better": evaluator.metric.higher_is_better,
                    "task": float(np.mean(task)),
                    "adherence": float(np.mean(adherence)),
                    "per_sample_task": [float(v) for v in task],
                    "per_sample_adherence": [float(v) for v in adherence],
                    "seconds": round(time.perf_counter() - started, 1),
                }
                bar.update(len(scenes))
            del pipe
    finally:
        bar.close()
    return list(rows.values())


def _weights_digests(weights: Path, conditions: Sequence[str]) -> dict[str, str]:
    """The weights digest of each condition type's pipeline (the digest profiles and policies record)."""
    from hgc_tune.models import load_pipeline
    from hgc_tune.models._fingerprint import weights_digest
    from hgc_tune.models._shapes import shapes_checkpoint

    digests = {}
    for condition in conditions:
        base, controlnet = shapes_checkpoint(condition, weights_dir=weights)
        digests[condition] = weights_digest(load_pipeline(str(base), controlnet=str(controlnet)))
    return digests


def summary_table(rows: Sequence[Mapping[str, Any]], chosen: float, chance: float) -> str:
    """The measurement as a markdown table: per scale, each type's task metric and adherence."""
    types = list(rows[0]["conditions"])
    head = ["guidance"] + [f"{t} {rows[0]['conditions'][t]['metric']}" for t in types]
    head += [f"{t} adherence" for t in types] + ["task score", "mean adherence", "chosen"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [f"{r['guidance']:g}"] + [f"{r['conditions'][t]['task']:.3f}" for t in types]
        cells += [f"{100 * r['conditions'][t]['adherence']:.1f} %" for t in types]
        mark = "**chosen**" if r["guidance"] == chosen else ("" if r["eligible"] else "outside window")
        cells += [f"{r['task_score']:.3f}", f"{100 * r['adherence']:.1f} %", mark]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nprompt adherence is a proxy (background read back); chance is {100 * chance:.1f} %.")
    return "\n".join(lines)


def write_recommendation(weights: Path, chosen: float, measurement: Mapping[str, Any]) -> Path:
    """Store ``chosen`` as ``recommended_guidance`` in ``weights/training.json`` (the measurement beside it,
    per-sample values left out), keeping everything else; an earlier trainer's unmeasured
    ``self_check.recommended_guidance`` is dropped."""
    from hgc_tune._atomic import atomic_write_text
    from hgc_tune._json import load_json_file
    from hgc_tune.errors import ModelLoadError
    from hgc_tune.models._guidance import RECOMMENDED_GUIDANCE_KEY, TRAINING_FILE

    path = weights / TRAINING_FILE
    record = load_json_file(path, what="training record", error=ModelLoadError) if path.is_file() else {}
    if not isinstance(record, dict):
        raise ModelLoadError(f"training record {str(path)!r} must hold a JSON object.")
    check = record.get("self_check")
    if isinstance(check, dict):
        check.pop(RECOMMENDED_GUIDANCE_KEY, None)
    compact = {k: v for k, v in measurement.items() if k != "rows"}
    compact["rows"] = [
        {
            "guidance": r["guidance"],
            "task_score": r["task_score"],
            "adherence": r["adherence"],
            "eligible": r["eligible"],
            "conditions": {
                t: {k: v for k, v in c.items() if not k.startswith("per_sample")}
                for t, c in r["conditions"].items()
            },
        }
        for r in measurement["rows"]
    ]
    record[RECOMMENDED_GUIDANCE_KEY] = chosen
    record[f"{RECOMMENDED_GUIDANCE_KEY}_measurement"] = compact
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _floats(flag: str):
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be numbers joined by commas, but got {text!r}"
            ) from None
        if (
            not values
            or any(not math.isfinite(v) or v < 1 for v in values)
            or len(set(values)) != len(values)
        ):
            raise argparse.ArgumentTypeError(
                f"{flag} must be distinct finite scales >= 1 (1: no guidance), but got {text!r}"
            )
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    from hgc_tune.models._shapes import WEIGHTS_DIR

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights", type=Path, default=WEIGHTS_DIR, help="shapes weights folder (default: shipped)"
    )
    parser.add_argument(
        "--grid",
        type=_floats("--grid"),
        default=DEFAULT_GRID,
        help="guidance scales (default: 1,1.5,2,3,4,5,7.5)",
    )
    parser.add_argument(
        "--conditions", default="seg,canny,hed,depth", help="condition types (default: all four)"
    )
    parser.add_argument("--samples", type=int, default=16, help="calibration scenes per condition type")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (UniPC; default: 20)")
    parser.add_argument("--batch", type=int, default=8, help="scenes per pipeline call (default: 8)")
    parser.add_argument(
        "--adherence-window",
        type=float,
        default=DEFAULT_WINDOW,
        help="how far below the best mean adherence a chosen scale may be (default: 0.01, one point)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--out", type=Path, default=None, help="write the whole measurement here (JSON)")
    parser.add_argument("--write", action="store_true", help="store the choice in WEIGHTS/training.json")
    parser.add_argument("--json", action="store_true", help="print the measurement as JSON (else a table)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hgc_tune.data.shapes import BACKGROUNDS, CONDITION_TYPES
    from hgc_tune.errors import HgcTuneError
    from hgc_tune.models._shapes import shapes_checkpoint

    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    problems = [
        f"--conditions {args.conditions!r}: each of {', '.join(CONDITION_TYPES)}, once"
        if not conditions or len(set(conditions)) != len(conditions) or set(conditions) - set(CONDITION_TYPES)
        else "",
        f"--samples must be >= 1, but got {args.samples}" if args.samples < 1 else "",
        f"--steps must be in [1, 1000], but got {args.steps}" if not 1 <= args.steps <= 1000 else "",
        f"--batch must be >= 1, but got {args.batch}" if args.batch < 1 else "",
        f"--adherence-window must be in [0, 1], but got {args.adherence_window}"
        if not 0 <= args.adherence_window <= 1
        else "",
    ]
    try:
        if any(problems):
            raise HgcTuneError("; ".join(p for p in problems if p) + ".")
        for condition in conditions:
            shapes_checkpoint(condition, weights_dir=args.weights)  # missing weights: refused before any work
        import torch

        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        rows = measure(
            args.weights,
            grid=args.grid,
            conditions=conditions,
            samples=args.samples,
            steps=args.steps,
            batch=args.batch,
            progress=args.progress,
        )
        chosen, scored = choose_guidance(rows, args.adherence_window)
        measurement = {
            "recommended_guidance": chosen,
            "rule": RULE,
            "adherence_window": args.adherence_window,
            "adherence": "background_adherence (a proxy: the prompt's background read back)",
            "chance_adherence": 1.0 / len(BACKGROUNDS),
            "split": SPLIT,
            "samples": args.samples,
            "steps": args.steps,
            "scheduler": "UniPCMultistepScheduler",
            "grid": [float(g) for g in args.grid],
            "conditions": conditions,
            "weights_digests": _weights_digests(args.weights, conditions),
            "tool": "analysis/recommend_guidance.py",
            "seconds": round(time.perf_counter() - started, 1),
            "rows": scored,
        }
        if args.out is not None:
            from hgc_tune._atomic import atomic_write_text

            atomic_write_text(args.out, json.dumps(measurement, indent=2, sort_keys=True) + "\n")
        if args.write:
            written = write_recommendation(args.weights, chosen, measurement)
            print(f"wrote recommended_guidance {chosen:g} to {written}", file=sys.stderr)
    except HgcTuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(measurement, indent=2, sort_keys=True))
    else:
        print(summary_table(scored, chosen, measurement["chance_adherence"]))
        print(f"recommended guidance: {chosen:g} ({RULE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
