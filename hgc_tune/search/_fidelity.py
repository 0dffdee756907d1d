"""Generating outputs with and without a policy, and scoring them against full compute, one sample at a time.

The fidelity loss is a loss of means: ``metric.loss(mean m_full, mean m_policy)`` over the samples (see
:mod:`hgc_tune.fidelity`), reported with its paired one-sided upper confidence bound
(:func:`hgc_tune.fidelity.paired_loss_bound`). :class:`FidelityScorer` consumes the policy's outputs lazily
and tests sequentially: a policy gets more samples only while its bound straddles the budget, so a clear
failure (lower bound above the budget) or a clear pass (upper bound within it) stops generating early.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hgc_tune.errors import FidelityError, SearchError

__all__ = [
    "FidelityEstimate",
    "FidelityScorer",
    "GeneratedOutput",
    "GenerationJob",
    "GenerationSettings",
    "compare_policies",
    "evaluate_policy",
    "generate_output",
    "iter_outputs",
    "jobs_from_samples",
]

# Metrics that compare final latents rather than decoded images.
_LATENT_METRICS = frozenset({"latent_rel_error"})


@dataclass(frozen=True)
class GenerationJob:
    """One sample to generate: prompt, negative prompt, seed and condition image (PIL); for img2img and
    inpainting pipelines also the init image and the mask (PIL; ``None``: the default mask)."""

    prompt: str
    negative_prompt: str | None
    seed: int
    condition: Any
    init_image: Any = None
    mask_image: Any = None


@dataclass(frozen=True)
class GenerationSettings:
    """How every sample is generated (the profile's settings for a search).

    ``num_steps`` is the ``num_inference_steps`` of every call; with ``strength`` (img2img and inpainting
    pipelines only) a call runs fewer steps when ``strength < 1``.
    """

    num_steps: int
    guidance_scale: float
    height: int
    width: int
    controlnet_scale: float = 1.0
    strength: float | None = None


@dataclass(frozen=True)
class GeneratedOutput:
    """A generated sample: the uint8 ``H×W×3`` image and the final float32 latent ``[4, h, w]``."""

    image: np.ndarray
    latent: np.ndarray


def jobs_from_samples(
    samples: Iterable[Any], *, seed: int = 0, task: str = "text2img"
) -> list[GenerationJob]:
    """Generation jobs from dataset samples (``.prompt``, ``.condition_image()``, ``.negative_prompt``,
    ``.seed``); a sample without a seed gets ``seed + index``, as in the profiler.

    For ``task`` ``img2img`` and ``inpaint`` a job also gets the sample's init image and mask, by the
    profiler's rule (:func:`hgc_tune.models._tasks.sample_task_images`): ``init_image()``, else
    ``ground_truth_image()``, else the condition image; the mask is ``mask_image()`` or, if the sample has
    none, the default (the middle half repainted).
    """
    from hgc_tune.models._tasks import sample_task_images

    jobs = []
    for i, sample in enumerate(samples):
        own = getattr(sample, "seed", None)
        condition = _rgb(sample.condition_image())
        init, mask = sample_task_images(sample, condition, task)
        jobs.append(
            GenerationJob(
                prompt=sample.prompt,
                negative_prompt=getattr(sample, "negative_prompt", None),
                seed=int(own) if own is not None else seed + i,
                condition=condition,
                init_image=init,
                mask_image=mask,
            )
        )
    return jobs


def _rgb(image: Any) -> Any:
    """A condition image as RGB; several (one per ControlNet) as a list of them."""
    if isinstance(image, list | tuple):
        return [one.convert("RGB") for one in image]
    return image.convert("RGB")


def generate_output(pipe: Any, job: GenerationJob, settings: GenerationSettings) -> GeneratedOutput:
    """Run the pipeline once, exactly as the profiler does (so full compute reproduces its references)."""
    import torch

    final: dict[str, Any] = {}

    def on_step_end(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}

    kwargs: dict[str, Any] = {}
    if settings.controlnet_scale != 1.0:
        kwargs["controlnet_conditioning_scale"] = float(settings.controlnet_scale)
    if job.init_image is None and job.mask_image is None and settings.strength is None:
        kwargs["image"] = job.condition
    else:
        from hgc_tune.models._tasks import generation_inputs

        kwargs.update(
            generation_inputs(
                pipe,
                job.condition,
                init_image=job.init_image,
                mask_image=job.mask_image,
                strength=settings.strength,
            )
        )
    output = pipe(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.num_steps,
        guidance_scale=settings.guidance_scale,
        generator=torch.Generator().manual_seed(job.seed),
        output_type="np",
        callback_on_step_end=on_step_end,
        **kwargs,
    )
    image = (np.asarray(output.images[0]) * 255).round().astype(np.uint8)
    latent = final["latents"][0].detach().float().cpu().numpy()
    return GeneratedOutput(image=image, latent=latent)


def iter_outputs(
    pipe: Any, policy: Any, jobs: Sequence[GenerationJob], settings: GenerationSettings
) -> Iterator[GeneratedOutput]:
    """Generate ``jobs`` one by one with ``policy`` applied (``None``: full compute).

    The policy is applied when the first output is requested and removed when the generator finishes or is
    closed, so a consumer that stops early leaves the pipeline as it was.
    """
    from hgc_tune.executor import apply_policy

    handle = apply_policy(pipe, policy) if policy is not None else None
    try:
        for job in jobs:
            yield generate_output(pipe, job, settings)
    finally:
        if handle is not None:
            handle.remove()


@dataclass(frozen=True)
class FidelityEstimate:
    """The fidelity of a policy on (a prefix of) a set of samples.

    Attributes:
        metric: The metric's name.
        full: Mean metric at full compute over the evaluated samples.
        policy: Mean metric under the policy over the evaluated samples.
        loss: ``metric.loss(full, policy)``, the loss of the means.
        samples: How many samples were evaluated.
        total: How many samples there were.
        rejected_early: Whether evaluation stopped early because the loss broke the budget clearly.
        per_sample_full: The full-compute metric of each evaluated sample.
        per_sample_policy: The policy's metric of each evaluated sample.
        upper: The one-sided upper confidence bound of ``loss`` at ``confidence`` (``None``: unbounded).
        lower: The one-sided lower confidence bound (``None``: unbounded).
        confidence: The confidence level of the bounds (``0``: they equal the loss).
        accepted_early: Whether evaluation stopped early because the upper bound was already within budget.
    """

    metric: str
    full: float
    policy: float
    loss: float
    samples: int
    total: int
    rejected_early: bool = False
    per_sample_full: tuple[float, ...] = field(default=())
    per_sample_policy: tuple[float, ...] = field(default=())
    upper: float | None = None
    lower: float | None = None
    confidence: float = 0.0
    accepted_early: bool = False

    @property
    def loss_upper(self) -> float:
        """The upper confidence bound of the loss (``inf`` when one sample cannot bound it; the loss itself
        for an estimate made without a confidence level)."""
        if self.upper is None:
            return self.loss if self.confidence == 0.0 else math.inf
        return float(self.upper)

    def within(self, budget: float) -> bool:
        """Whether the upper bound of the loss is within ``budget`` (and the estimate was not cut short by a
        clear failure)."""
        return not self.rejected_early and self.loss_upper <= budget

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (an unbounded ``upper``/``lower`` becomes ``None``)."""
        d = asdict(self)
        d["per_sample_full"] = list(self.per_sample_full)
        d["per_sample_policy"] = list(self.per_sample_policy)
        for key in ("upper", "lower"):
            if d[key] is not None and not math.isfinite(d[key]):
                d[key] = None
        return d


class FidelityScorer:
    """Scores policy outputs against full-compute references of the same samples.

    Args:
        evaluator: A :class:`hgc_tune.fidelity.TaskEvaluator` (fixes the metric and task models).
        references: The full-compute outputs, one per sample.
        conditions: The condition images (uint8 ``H×W×3`` arrays), one per sample.

    Raises:
        SearchError: Lengths differ, there are no samples, or a task metric scores 0 or less at full compute
            (its relative loss would be undefined).
    """

    def __init__(
        self, evaluator: Any, references: Sequence[GeneratedOutput], conditions: Sequence[Any]
    ) -> None:
        if not references:
            raise SearchError("the fidelity scorer needs at least one sample, but got none.")
        if len(conditions) != len(references):
            raise SearchError(
                f"one condition per reference is needed, but got {len(conditions)} conditions and "
                f"{len(references)} references."
            )
        self.evaluator = evaluator
        self.metric = evaluator.metric
        self.references = list(references)
        self.conditions = list(conditions)
        if self.metric.kind == "task":
            self.full_scores = [evaluator.score(r.image, c) for r, c in zip(self.references, self.conditions)]
            bad = [i for i, v in enumerate(self.full_scores) if not math.isfinite(v)]
            if bad:
                raise SearchError(
                    f"metric {self.metric.name!r} is not finite at full compute for samples {bad}."
                )
            mean = float(np.mean(self.full_scores))
            if self.metric.loss_mode == "relative" and mean <= 0:
                raise SearchError(
                    f"metric {self.metric.name!r} scores {mean:g} at full compute on these samples, so a "
                    "relative loss is undefined; pick a reference metric (ssim, psnr, latent_rel_error)."
                )
        else:
            self.full_scores = [float(self.metric.ideal)] * len(self.references)

    def __len__(self) -> int:
        return len(self.references)

    def score_one(self, index: int, output: GeneratedOutput) -> float:
        """The policy-side metric of sample ``index``."""
        if self.metric.kind == "task":
            return float(self.evaluator.score(output.image, self.conditions[index]))
        if self.metric.name in _LATENT_METRICS:
            return float(self.evaluator.score(output.latent, reference=self.references[index].latent))
        return float(self.evaluator.score(output.image, reference=self.references[index].image))

    def _loss(self, n: int, policy_scores: Sequence[float]) -> float:
        return float(
            self.metric.loss(float(np.mean(self.full_scores[:n])), float(np.mean(policy_scores[:n])))
        )

    def _estimate(
        self, policy: Sequence[float], confidence: float, *, rejected: bool = False, accepted: bool = False
    ) -> FidelityEstimate:
        from hgc_tune.fidelity import paired_loss_bound

        n = len(policy)
        bound = paired_loss_bound(self.full_scores[:n], policy, self.metric, confidence)
        return FidelityEstimate(
            metric=self.metric.name,
            full=float(np.mean(self.full_scores[:n])),
            policy=float(np.mean(policy)),
            loss=bound.loss,
            samples=n,
            total=len(self),
            rejected_early=rejected,
            per_sample_full=tuple(self.full_scores[:n]),
            per_sample_policy=tuple(float(v) for v in policy),
            upper=bound.upper if math.isfinite(bound.upper) else None,
            lower=bound.lower if math.isfinite(bound.lower) else None,
            confidence=bound.confidence,
            accepted_early=accepted,
        )

    def full_compute(self, *, confidence: float = 0.0) -> FidelityEstimate:
        """The estimate of a policy that changes nothing (its outputs are the references)."""
        policy = [self.score_one(i, r) for i, r in enumerate(self.references)]
        return self._estimate(policy, confidence)

    def score(
        self,
        outputs: Iterable[GeneratedOutput],
        *,
        budget: float | None = None,
        margin: float = 0.0,
        min_samples: int = 3,
        confidence: float = 0.0,
        max_samples: int | None = None,
        accept_early: bool = True,
        on_sample: Callable[[int, float], None] | None = None,
    ) -> FidelityEstimate:
        """Score policy outputs in sample order, stopping as soon as the verdict on the budget is clear.

        After each sample ``n >= min_samples`` (and before the last), with ``budget`` given:

        - ``confidence > 0`` (sequential test): the paired bounds of the loss on the ``n`` samples so far are
          computed; a lower bound above ``budget`` stops with ``rejected_early`` (a clear failure), an upper
          bound within ``budget`` stops with ``accepted_early`` (a clear pass). Otherwise the bound straddles
          the budget and the next sample is generated.
        - ``confidence == 0`` (point estimate): a running loss above ``budget + margin`` stops with
          ``rejected_early``.

        Args:
            outputs: The policy's outputs, in sample order (consumed lazily; closed when scoring stops).
            budget: The loss budget; ``None`` scores every sample.
            margin: With ``confidence == 0``, how far above the budget the running loss must be to reject.
            min_samples: Samples to evaluate before stopping early.
            confidence: One-sided confidence level of the bounds, in ``[0, 1)``.
            max_samples: Score at most this many samples (a screen); ``None``: all.
            accept_early: Stop on a clear pass; ``False``: only a clear failure stops early, so a pass is
                decided on every sample (a check with one look at the end cannot pass by optional stopping).
            on_sample: Called with ``(index, value)`` after each sample.
        """
        from hgc_tune.fidelity import paired_loss_bound
        from hgc_tune.fidelity._confidence import check_confidence

        try:
            confidence = check_confidence(confidence)
        except FidelityError as e:
            raise SearchError(str(e)) from e
        n_total = len(self)
        limit = n_total if max_samples is None else max(1, min(int(max_samples), n_total))
        policy: list[float] = []
        rejected = accepted = False
        with contextlib.closing(iter(outputs)) as it:
            for index, output in enumerate(it):
                if index >= n_total:
                    raise SearchError(f"got more outputs than the {n_total} samples.")
                value = self.score_one(index, output)
                if not math.isfinite(value):
                    raise FidelityError(
                        f"metric {self.metric.name!r} is not finite for the policy's sample {index}."
                    )
                policy.append(value)
                if on_sample is not None:
                    on_sample(index, value)
                n = len(policy)
                if n >= limit:
                    break
                if budget is None or n < min_samples:
                    continue
                try:
                    if confidence > 0.0:
                        verdict = paired_loss_bound(
                            self.full_scores[:n], policy, self.metric, confidence
                        ).verdict(budget)
                        rejected, accepted = verdict == "fail", accept_early and verdict == "pass"
                    else:
                        rejected = self._loss(n, policy) > budget + margin
                except FidelityError:  # a partial full-compute mean of 0: no estimate yet
                    continue
                if rejected or accepted:
                    break
        n = len(policy)
        if n == 0:
            raise SearchError("no policy outputs were produced.")
        if not (rejected or accepted) and n != limit:
            raise SearchError(f"got {n} outputs for {limit} samples.")
        return self._estimate(policy, confidence, rejected=rejected, accepted=accepted)


def _condition_array(image: Any, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if isinstance(image, list | tuple):  # several ControlNets: [k, H, W, 3]
        return np.stack([_condition_array(one, height, width) for one in image])

    if image.size != (width, height):
        image = image.resize((width, height), Image.NEAREST)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def evaluate_policy(
    pipe: Any,
    policy: Any,
    samples: Iterable[Any],
    *,
    num_steps: int,
    metric: str | None = None,
    condition_type: str | None = None,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    controlnet_scale: float = 1.0,
    mac_table: Any = None,
    confidence: float = 0.95,
    progress: bool = False,
    strength: float | None = None,
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
        guidance_scale: Classifier-free guidance scale.
        height: Image height; default the pipeline's native size.
        width: Image width; default ``height``.
        seed: Seed of samples without their own (``seed + index``).
        controlnet_scale: ControlNet conditioning scale on the policy side.
        mac_table: A :class:`hgc_tune.macs.MacTable` for the policy's MACs; ``None``: MACs not reported.
        confidence: One-sided confidence level of ``loss_upper`` in ``[0, 1)`` (``0``: the loss itself).
        progress: Show a tqdm bar on stderr.
        strength: img2img and inpainting pipelines: the denoising strength (default: diffusers' default of
            the task); each sample's init image and mask are taken as the profiler takes them.

    Returns:
        ``metric``, ``kind``, ``condition_type``, ``samples``, ``full``, ``policy``, ``loss`` (relative loss
        of the means), ``loss_upper`` (its paired one-sided upper bound at ``confidence``; ``None`` when one
        sample cannot bound it), ``confidence``, per-sample values, ``policy_name``, ``controlnet_scale`` and
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
    from tqdm.auto import tqdm

    from hgc_tune.fidelity import TaskEvaluator
    from hgc_tune.fidelity._confidence import check_confidence
    from hgc_tune.policy import full_compute_policy, target_for_pipeline
    from hgc_tune.policy._macs import macs_provenance

    try:
        confidence = check_confidence(confidence)
    except FidelityError as e:
        raise SearchError(str(e)) from e
    evaluator = TaskEvaluator(condition_type, metric)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    height = size if height is None else height
    width = height if width is None else width
    task, strength = _task_strength(pipe, strength)
    jobs = jobs_from_samples(samples, seed=seed, task=task)
    if not jobs:
        raise SearchError("`samples` is empty: there is nothing to evaluate.")
    full_settings = GenerationSettings(num_steps, float(guidance_scale), height, width, strength=strength)
    policy_settings = GenerationSettings(
        num_steps, float(guidance_scale), height, width, float(controlnet_scale), strength=strength
    )
    bar = tqdm(total=2 * len(jobs), unit="image", desc="evaluate", disable=not progress)
    try:
        references = []
        for output in iter_outputs(pipe, None, jobs, full_settings):
            references.append(output)
            bar.update(1)
        conditions = [_condition_array(job.condition, height, width) for job in jobs]
        scorer = FidelityScorer(evaluator, references, conditions)
        estimate = scorer.score(
            iter_outputs(pipe, policy, jobs, policy_settings),
            confidence=confidence,
            on_sample=lambda i, v: bar.update(1),
        )
    finally:
        bar.close()
    macs = None
    if mac_table is not None:
        cfg = guidance_scale > 1.0
        counted = policy
        if counted is None:
            from hgc_tune.models._tasks import steps_run

            run = steps_run(num_steps, strength)
            counted = full_compute_policy(
                target_for_pipeline(pipe, num_steps=run, condition_type=condition_type)
            )
        macs = macs_provenance(counted, mac_table, cfg=cfg)
    return {
        "metric": evaluator.metric.name,
        "kind": evaluator.metric.kind,
        "higher_is_better": evaluator.metric.higher_is_better,
        "condition_type": condition_type,
        "samples": estimate.samples,
        "num_steps": num_steps,
        "full": estimate.full,
        "policy": estimate.policy,
        "loss": estimate.loss,
        "loss_upper": estimate.upper if estimate.confidence > 0 else estimate.loss,
        "confidence": estimate.confidence,
        "per_sample_full": list(estimate.per_sample_full),
        "per_sample_policy": list(estimate.per_sample_policy),
        "policy_name": None if policy is None else policy.name,
        "controlnet_scale": float(controlnet_scale),
        "macs": macs,
        **({"task": task, "strength": strength} if task != "text2img" else {}),
    }


def _task_strength(pipe: Any, strength: float | None) -> tuple[str, float | None]:
    """The pipeline's task and the strength its calls take (``None`` for text2img)."""
    from hgc_tune.errors import ModelLoadError
    from hgc_tune.models._tasks import DEFAULT_STRENGTH, pipeline_task

    try:
        task = pipeline_task(pipe)
    except ModelLoadError:
        task = "text2img"
    if task == "text2img":
        if strength is not None:
            raise SearchError(
                f"`strength` is for img2img and inpainting pipelines, but got strength={strength!r} for a "
                f"{type(pipe).__name__}."
            )
        return task, None
    strength = DEFAULT_STRENGTH[task] if strength is None else strength
    if not isinstance(strength, int | float) or isinstance(strength, bool) or not 0 < strength <= 1:
        raise SearchError(f"`strength` must be in (0, 1], but got strength={strength!r}.")
    return task, float(strength)


def compare_policies(
    pipe: Any,
    policies: Mapping[str, Any],
    samples: Iterable[Any],
    *,
    num_steps: int,
    metric: str | None = None,
    condition_type: str | None = None,
    guidance_scale: float = 7.5,
    budget: float | None = None,
    confidence: float = 0.95,
    mac_table: Any = None,
    on_output: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Fidelity and MACs of several policies on the same samples, against one full-compute run of them.

    The full-compute outputs are generated once and every policy is scored on every sample (no early stop),
    paired by seed, so the rows compare like with like.

    Args:
        pipe: The pipeline (at its native resolution).
        policies: Row name -> :class:`hgc_tune.policy.Policy` (made for ``num_steps``).
        samples: Dataset samples (``hgc_tune.data.open_dataset``).
        num_steps: Denoising steps.
        metric: Metric name; ``None``: the condition type's default (its task metric).
        condition_type: The samples' condition type.
        guidance_scale: Classifier-free guidance scale.
        budget: The loss budget; with it each row says whether its upper bound is ``within`` it.
        confidence: One-sided confidence level of ``loss_upper`` in ``[0, 1)``.
        mac_table: A :class:`hgc_tune.macs.MacTable`; ``None``: MACs not reported.
        on_output: Called with the row name (``full compute`` for the references) after each generation.

    Returns:
        One dict per policy, in order: ``name``, ``policy_name``, ``metric``, ``samples``, ``full``,
        ``policy``, ``loss``, ``loss_upper`` (``None``: unbounded), ``confidence``, ``within`` (``None``
        without a budget), ``per_sample_full``, ``per_sample_policy`` and ``macs`` (both conventions).
    """
    from hgc_tune.fidelity import TaskEvaluator
    from hgc_tune.fidelity._confidence import check_confidence
    from hgc_tune.policy._macs import macs_provenance

    try:
        confidence = check_confidence(confidence)
    except FidelityError as e:
        raise SearchError(str(e)) from e
    evaluator = TaskEvaluator(condition_type, metric)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    jobs = jobs_from_samples(samples)
    if not jobs:
        raise SearchError("`samples` is empty: there is nothing to compare on.")
    settings = GenerationSettings(num_steps, float(guidance_scale), size, size)
    references = []
    for output in iter_outputs(pipe, None, jobs, settings):
        references.append(output)
        if on_output is not None:
            on_output("full compute")
    conditions = [_condition_array(job.condition, size, size) for job in jobs]
    scorer = FidelityScorer(evaluator, references, conditions)
    rows = []
    for name, policy in policies.items():
        estimate = scorer.score(
            iter_outputs(pipe, policy, jobs, settings),
            confidence=confidence,
            on_sample=None if on_output is None else (lambda i, v, name=name: on_output(name)),
        )
        upper = estimate.loss_upper
        rows.append(
            {
                "name": name,
                "policy_name": policy.name,
                "metric": evaluator.metric.name,
                "samples": estimate.samples,
                "full": estimate.full,
                "policy": estimate.policy,
                "loss": estimate.loss,
                "loss_upper": upper if math.isfinite(upper) else None,
                "confidence": confidence,
                "within": None if budget is None else bool(upper <= budget),
                "per_sample_full": list(estimate.per_sample_full),
                "per_sample_policy": list(estimate.per_sample_policy),
                "macs": None
                if mac_table is None
                else macs_provenance(policy, mac_table, cfg=guidance_scale > 1.0),
            }
        )
    return rows
