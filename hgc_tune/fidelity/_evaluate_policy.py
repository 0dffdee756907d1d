"""Fidelity evaluation of policies on a dataset: every sample generated at full compute and under each policy
(by :mod:`hgc_tune.generation`, as the profiler generates), scored by :class:`FidelityScorer`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from hgc_tune.errors import FidelityError, SearchError
from hgc_tune.fidelity._confidence import check_confidence
from hgc_tune.fidelity._evaluate import TaskEvaluator
from hgc_tune.fidelity._prompt import PromptEvaluator
from hgc_tune.fidelity._prompt_guard import PromptMetric, prompt_fidelity
from hgc_tune.fidelity._registry import PROMPT_METRICS
from hgc_tune.fidelity._scorer import ConstraintScorer, FidelityEstimate, FidelityScorer
from hgc_tune.generation import iter_outputs
from hgc_tune.generation._inputs import (
    GenerationJob,
    GenerationSettings,
    condition_array,
    generation_size,
    jobs_from_samples,
)
from hgc_tune.models._tasks import steps_run, task_and_strength
from hgc_tune.policy import full_compute_policy, target_for_pipeline
from hgc_tune.policy._macs import macs_provenance

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.generation import GeneratedOutput
    from hgc_tune.macs import MacTable
    from hgc_tune.policy import Policy

__all__ = ["compare_policies", "evaluate_policy"]


def _confidence(confidence: float) -> float:
    try:
        return check_confidence(confidence)
    except FidelityError as e:
        raise SearchError(str(e)) from e


def _jobs(
    pipe: ControlNetPipeline, samples: Iterable[Any], seed: int, strength: float | None, what: str
) -> tuple[str, float | None, list[GenerationJob]]:
    """The pipeline's task, the strength its calls take and the samples' jobs."""
    task, strength = task_and_strength(pipe, strength, error=SearchError)
    jobs = jobs_from_samples(samples, seed=seed, task=task)
    if not jobs:
        raise SearchError(f"`samples` is empty: there is nothing to {what}.")
    return task, strength, jobs


def _full_compute_scorer(
    pipe: ControlNetPipeline,
    evaluator: TaskEvaluator,
    jobs: list[GenerationJob],
    settings: GenerationSettings,
    on_output: Callable[[], None],
) -> FidelityScorer:
    """Generate the full-compute references of ``jobs`` and score against them."""
    references = []
    for output in iter_outputs(pipe, None, jobs, settings):
        references.append(output)
        on_output()
    conditions = [condition_array(job.condition, settings.height, settings.width) for job in jobs]
    return FidelityScorer(evaluator, references, conditions)


def _guidance(pipe: ControlNetPipeline, guidance_scale: float | None) -> float:
    """``guidance_scale``, or the recommended scale of the model ``pipe`` holds."""
    if guidance_scale is None:
        from hgc_tune.models import pipeline_guidance

        return pipeline_guidance(pipe).scale
    return float(guidance_scale)


# Fidelity to the full-compute picture, reported beside the metric of every evaluation.
_PICTURE_METRICS = ("ssim", "psnr")


def _with_picture(scorer: FidelityScorer, condition_type: str | None) -> ConstraintScorer:
    """``scorer``'s metric, with SSIM and PSNR to the full-compute pictures reported beside it."""
    reported = [
        FidelityScorer(TaskEvaluator(condition_type, name), scorer.references, scorer.conditions)
        for name in _PICTURE_METRICS
    ]
    return ConstraintScorer([scorer], [math.inf], reported=reported)


def _task_fields(task: str, strength: float | None) -> dict[str, Any]:
    return {"task": task, "strength": strength} if task != "text2img" else {}


def evaluate_policy(
    pipe: ControlNetPipeline,
    policy: Policy | None,
    samples: Iterable[Any],
    *,
    num_steps: int,
    metric: str | None = None,
    condition_type: str | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    controlnet_scale: float = 1.0,
    mac_table: MacTable | None = None,
    confidence: float = 0.95,
    progress: bool = False,
    strength: float | None = None,
    samples_per_call: int = 1,
    prompt_metric: PromptMetric | None = None,
) -> dict[str, Any]:
    """Fidelity (and MACs) of a policy on a set of samples, against full compute of the same samples.

    Every sample is generated twice with its seed: at full compute (ControlNet scale 1) and with ``policy``
    applied (``None``: no policy) and ControlNet scale ``controlnet_scale``. ``policy=None`` with
    ``controlnet_scale=0`` measures diffusers' "ControlNet multiplied by 0"; the policy
    ``peer_policy("cnwin-k0-drop", …)`` measures the same dropped control without computing the ControlNet.

    Args:
        pipe: The pipeline.
        policy: A :class:`hgc_tune.policy.Policy` or ``None``.
        samples: Dataset samples (``hgc_tune.data.open_dataset``).
        num_steps: ``num_inference_steps`` (text2img: the policy's steps, when there is one; img2img and
            inpainting run fewer when ``strength < 1``, and the policy counts the steps run).
        metric: Metric name; ``None``: the condition type's default.
        condition_type: The samples' condition type.
        guidance_scale: Classifier-free guidance scale; ``None``: the model's recommended one
            (:func:`hgc_tune.models.pipeline_guidance`).
        height: Image height; default the pipeline's native size.
        width: Image width; default ``height``.
        seed: Seed of samples without their own (``seed + index``).
        controlnet_scale: ControlNet conditioning scale on the policy side.
        mac_table: A :class:`hgc_tune.macs.MacTable` for the policy's MACs; ``None``: MACs not reported.
        confidence: One-sided confidence level of ``loss_upper`` in ``[0, 1)`` (``0``: the loss itself).
        progress: Show a tqdm bar on stderr.
        strength: img2img and inpainting pipelines: the denoising strength (default: diffusers' default of
            the task); each sample's init image and mask are taken as the profiler takes them.
        samples_per_call: How many samples one pipeline call generates, on both sides (a sample's output
            depends on its batch, so both are batched alike).
        prompt_metric: The model's prompt metric (:func:`hgc_tune.fidelity.prompt_metric_for`): each
            sample's image is also scored against its prompt, at full compute and with the policy, under
            ``prompt`` (:func:`~hgc_tune.fidelity._prompt_guard.prompt_fidelity`; an unguarded one is
            recorded as such); ``None``: no ``prompt`` key.

    Returns:
        ``metric``, ``kind``, ``condition_type``, ``samples``, ``full``, ``policy``, ``loss`` (relative loss
        of the means), ``loss_upper`` (its paired one-sided upper bound at ``confidence``; ``None`` when one
        sample cannot bound it), ``confidence``, per-sample values, ``guidance_scale`` (the scale used, at
        full compute and with the policy), ``policy_name``, ``controlnet_scale``,
        ``picture`` (the mean ``ssim`` and ``psnr`` of the policy's pictures to the full-compute ones) and
        ``macs`` (both conventions, :func:`hgc_tune.policy._macs.macs_provenance`; ``None`` without a table).

    Example:
        >>> from hgc_tune.models import load_pipeline  # doctest: +SKIP
        >>> from hgc_tune.data import open_dataset  # doctest: +SKIP
        >>> from hgc_tune.policy import load_policy  # doctest: +SKIP
        >>> pipe = load_pipeline("shapes", condition="seg")  # doctest: +SKIP
        >>> samples = open_dataset("shapes", condition_type="seg", split="test", limit=8)  # doctest: +SKIP
        >>> policy = load_policy("policies/shapes-seg.json").select("seg")  # doctest: +SKIP
        >>> evaluate_policy(pipe, policy, samples, num_steps=policy.num_steps, condition_type="seg")["loss"]
        ... # doctest: +SKIP
    """
    confidence = _confidence(confidence)
    evaluator = TaskEvaluator(condition_type, metric)
    guidance_scale = _guidance(pipe, guidance_scale)
    height, width = generation_size(pipe, height, width)
    task, strength, jobs = _jobs(pipe, samples, seed, strength, "evaluate")
    full = GenerationSettings(
        num_steps, float(guidance_scale), height, width, strength=strength, samples_per_call=samples_per_call
    )
    settings = replace(full, controlnet_scale=float(controlnet_scale))
    bar = tqdm(total=2 * len(jobs), unit="image", desc="evaluate", disable=not progress)
    policy_images: list[Any] = []
    try:
        scorer = _full_compute_scorer(pipe, evaluator, jobs, full, lambda: bar.update(1))
        outputs = iter_outputs(pipe, policy, jobs, settings)
        scored = _with_picture(scorer, condition_type).score(
            _keeping_images(outputs, policy_images) if prompt_metric is not None else outputs,
            sequential=False,
            confidence=confidence,
            on_sample=lambda i, v: bar.update(1),
        )
    finally:
        bar.close()
    estimate = scored.primary
    prompt = {}
    if prompt_metric is not None:
        prompt["prompt"] = (
            prompt_fidelity(
                prompt_metric,
                [r.image for r in scorer.references[: len(policy_images)]],
                policy_images,
                [job.prompt for job in jobs[: len(policy_images)]],
                confidence=confidence,
            )
            if prompt_metric.guarded
            else prompt_metric.to_json()
        )
    return {
        "metric": evaluator.metric.name,
        "kind": evaluator.metric.kind,
        "higher_is_better": evaluator.metric.higher_is_better,
        "condition_type": condition_type,
        "samples": estimate.samples,
        "num_steps": num_steps,
        "guidance_scale": guidance_scale,
        "full": estimate.full,
        "policy": estimate.policy,
        "loss": estimate.loss,
        "loss_upper": estimate.upper if estimate.confidence > 0 else estimate.loss,
        "confidence": estimate.confidence,
        "per_sample_full": list(estimate.per_sample_full),
        "per_sample_policy": list(estimate.per_sample_policy),
        "policy_name": None if policy is None else policy.name,
        "controlnet_scale": float(controlnet_scale),
        "samples_per_call": samples_per_call,
        "picture": {e.metric: float(e.policy) for e in scored.reported},
        "macs": _evaluated_macs(pipe, policy, mac_table, num_steps, strength, guidance_scale, condition_type),
        **_task_fields(task, strength),
        **prompt,
    }


def _keeping_images(outputs: Iterator[GeneratedOutput], images: list[Any]) -> Iterator[GeneratedOutput]:
    """``outputs``, each image also appended to ``images`` (for the prompt metric); closing it closes them."""
    try:
        for output in outputs:
            images.append(output.image)
            yield output
    finally:
        close = getattr(outputs, "close", None)
        if close is not None:
            close()


def _evaluated_macs(
    pipe: ControlNetPipeline,
    policy: Policy | None,
    mac_table: MacTable | None,
    num_steps: int,
    strength: float | None,
    guidance_scale: float,
    condition_type: str | None,
) -> dict[str, Any] | None:
    """The MACs of ``policy`` (``None``: full compute of the steps run), or ``None`` without a table."""
    if mac_table is None:
        return None
    counted = policy
    if counted is None:
        run = steps_run(num_steps, strength)
        counted = full_compute_policy(target_for_pipeline(pipe, num_steps=run, condition_type=condition_type))
    return macs_provenance(counted, mac_table, cfg=guidance_scale > 1.0)


def compare_policies(
    pipe: ControlNetPipeline,
    policies: Mapping[str, Policy],
    samples: Iterable[Any],
    *,
    num_steps: int,
    metric: str | None = None,
    condition_type: str | None = None,
    guidance_scale: float | None = None,
    budget: float | None = None,
    confidence: float = 0.95,
    mac_table: MacTable | None = None,
    on_output: Callable[[str], None] | None = None,
    strength: float | None = None,
    samples_per_call: int = 1,
    guards: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Fidelity and MACs of several policies on the same samples, against one full-compute run of them.

    The full-compute outputs are generated once and every policy is scored on every sample (no early stop),
    paired by seed, so the rows compare like with like. Samples are generated as :func:`evaluate_policy`
    generates them (at the pipeline's native size; img2img and inpainting with each sample's init image and
    mask, at ``strength``).

    Args:
        pipe: The pipeline (at its native resolution).
        policies: Row name -> :class:`hgc_tune.policy.Policy` (made for ``num_steps``).
        samples: Dataset samples (``hgc_tune.data.open_dataset``).
        num_steps: Denoising steps (``num_inference_steps``).
        metric: Metric name; ``None``: the condition type's default (its task metric).
        condition_type: The samples' condition type.
        guidance_scale: Classifier-free guidance scale; ``None``: the model's recommended one
            (:func:`hgc_tune.models.pipeline_guidance`).
        budget: The loss budget; with it each row says whether its upper bound is ``within`` it.
        confidence: One-sided confidence level of ``loss_upper`` in ``[0, 1)``.
        mac_table: A :class:`hgc_tune.macs.MacTable`; ``None``: MACs not reported.
        on_output: Called with the row name (``full compute`` for the references) after each generation.
        strength: img2img and inpainting pipelines: the denoising strength (default: diffusers' default of
            the task).
        samples_per_call: How many samples one pipeline call generates (references and policies alike).
        guards: Further constraints, metric name -> budget, as a search's ``--guard`` takes them: a prompt
            metric (``background``; ``clip`` needs a CLIP model, so not here) or a reference metric
            (``ssim``, …). With guards, each of the k bounds (the metric's and the guards') is taken at
            ``1 − (1 − confidence)/k`` (Bonferroni) and a row is ``within`` only when every bound is.

    Returns:
        One dict per policy, in order: ``name``, ``policy_name``, ``metric``, ``samples``, ``full``,
        ``policy``, ``loss``, ``loss_upper`` (``None``: unbounded), ``confidence``, ``level`` (each bound's
        level), ``within`` (``None`` without a budget), ``guards`` (per guard ``metric``, ``budget``,
        ``full``, ``policy``, ``loss``, ``loss_upper``, ``within``), ``picture`` (mean SSIM and PSNR to the
        full-compute pictures), ``per_sample_full``, ``per_sample_policy``, ``macs`` (both conventions),
        ``guidance_scale`` (the scale used) and, for img2img and inpainting, ``task`` and ``strength``.
    """
    confidence = _confidence(confidence)
    evaluator = TaskEvaluator(condition_type, metric)
    guidance_scale = _guidance(pipe, guidance_scale)
    height, width = generation_size(pipe)
    task, strength, jobs = _jobs(pipe, samples, 0, strength, "compare on")
    settings = GenerationSettings(
        num_steps, float(guidance_scale), height, width, strength=strength, samples_per_call=samples_per_call
    )
    report = (lambda name: None) if on_output is None else on_output
    scorer = _full_compute_scorer(pipe, evaluator, jobs, settings, lambda: report("full compute"))
    guard_budgets = dict(guards or {})
    constrained = _guarded(scorer, guard_budgets, [job.prompt for job in jobs], condition_type, budget)
    rows = []
    for name, policy in policies.items():
        scored = constrained.score(
            iter_outputs(pipe, policy, jobs, settings),
            sequential=False,
            confidence=confidence,
            on_sample=None if on_output is None else _sample_reporter(on_output, name),
        )
        row = _comparison_row(name, policy, scored.primary, confidence, budget)
        row["level"] = scored.level
        row["guards"] = [
            {
                "metric": e.metric,
                "budget": b,
                "full": e.full,
                "policy": e.policy,
                "loss": e.loss,
                "loss_upper": e.upper,
                "within": e.loss_upper <= b,
            }
            for e, b in zip(scored.estimates[1:], scored.budgets[1:])
        ]
        if budget is not None:
            row["within"] = bool(row["within"]) and all(g["within"] for g in row["guards"])
        row["picture"] = {e.metric: float(e.policy) for e in scored.reported}
        row["macs"] = _evaluated_macs(pipe, policy, mac_table, num_steps, strength, guidance_scale, None)
        rows.append({**row, "guidance_scale": guidance_scale, **_task_fields(task, strength)})
    return rows


def _guarded(
    scorer: FidelityScorer,
    guards: Mapping[str, float],
    prompts: list[str],
    condition_type: str | None,
    budget: float | None,
) -> ConstraintScorer:
    """``scorer``'s metric and the ``guards`` (metric name -> budget) as one constraint scorer on the same
    references, with SSIM and PSNR to the full-compute pictures reported beside them."""
    scorers = [scorer]
    for name in guards:
        if name in PROMPT_METRICS:
            scorers.append(FidelityScorer(PromptEvaluator(name), scorer.references, prompts))
        else:
            evaluator = TaskEvaluator(condition_type, name)
            scorers.append(FidelityScorer(evaluator, scorer.references, scorer.conditions))
    reported = _with_picture(scorer, condition_type).reported
    budgets = [math.inf if budget is None else budget, *guards.values()]
    return ConstraintScorer(scorers, budgets, reported=reported)


def _sample_reporter(on_output: Callable[[str], None], name: str) -> Callable[[int, float], None]:
    """An ``on_sample`` callback that calls ``on_output(name)`` after each sample."""

    def on_sample(index: int, value: float) -> None:
        on_output(name)

    return on_sample


def _comparison_row(
    name: str, policy: Policy, estimate: FidelityEstimate, confidence: float, budget: float | None
) -> dict[str, Any]:
    upper = estimate.loss_upper
    return {
        "name": name,
        "policy_name": policy.name,
        "metric": estimate.metric,
        "samples": estimate.samples,
        "full": estimate.full,
        "policy": estimate.policy,
        "loss": estimate.loss,
        "loss_upper": upper if math.isfinite(upper) else None,
        "confidence": confidence,
        "within": None if budget is None else bool(upper <= budget),
        "per_sample_full": list(estimate.per_sample_full),
        "per_sample_policy": list(estimate.per_sample_policy),
    }
