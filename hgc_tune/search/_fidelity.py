"""Generating outputs with and without a policy, and scoring them against full compute, one sample at a time.

The fidelity loss is a loss of means: ``metric.loss(mean m_full, mean m_policy)`` over the samples (see
:mod:`hgc_tune.fidelity`). :class:`FidelityScorer` consumes the policy's outputs lazily, so a policy whose
running loss already breaks the budget clearly is rejected without generating the remaining samples.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    "evaluate_policy",
    "generate_output",
    "iter_outputs",
    "jobs_from_samples",
]

# Metrics that compare final latents rather than decoded images.
_LATENT_METRICS = frozenset({"latent_rel_error"})


@dataclass(frozen=True)
class GenerationJob:
    """One sample to generate: prompt, negative prompt, seed and condition image (PIL)."""

    prompt: str
    negative_prompt: str | None
    seed: int
    condition: Any


@dataclass(frozen=True)
class GenerationSettings:
    """How every sample is generated (the profile's settings for a search)."""

    num_steps: int
    guidance_scale: float
    height: int
    width: int
    controlnet_scale: float = 1.0


@dataclass(frozen=True)
class GeneratedOutput:
    """A generated sample: the uint8 ``H×W×3`` image and the final float32 latent ``[4, h, w]``."""

    image: np.ndarray
    latent: np.ndarray


def jobs_from_samples(samples: Iterable[Any], *, seed: int = 0) -> list[GenerationJob]:
    """Generation jobs from dataset samples (``.prompt``, ``.condition_image()``, ``.negative_prompt``,
    ``.seed``); a sample without a seed gets ``seed + index``, as in the profiler."""
    jobs = []
    for i, sample in enumerate(samples):
        own = getattr(sample, "seed", None)
        jobs.append(
            GenerationJob(
                prompt=sample.prompt,
                negative_prompt=getattr(sample, "negative_prompt", None),
                seed=int(own) if own is not None else seed + i,
                condition=sample.condition_image().convert("RGB"),
            )
        )
    return jobs


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
    output = pipe(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        image=job.condition,
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
        rejected_early: Whether evaluation stopped early because the running loss broke the budget.
        per_sample_full: The full-compute metric of each evaluated sample.
        per_sample_policy: The policy's metric of each evaluated sample.
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_sample_full"] = list(self.per_sample_full)
        d["per_sample_policy"] = list(self.per_sample_policy)
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

    def full_compute(self) -> FidelityEstimate:
        """The estimate of a policy that changes nothing (its outputs are the references)."""
        n = len(self)
        policy = [self.score_one(i, r) for i, r in enumerate(self.references)]
        return FidelityEstimate(
            metric=self.metric.name,
            full=float(np.mean(self.full_scores)),
            policy=float(np.mean(policy)),
            loss=self._loss(n, policy),
            samples=n,
            total=n,
            per_sample_full=tuple(self.full_scores),
            per_sample_policy=tuple(policy),
        )

    def score(
        self,
        outputs: Iterable[GeneratedOutput],
        *,
        budget: float | None = None,
        margin: float = 0.0,
        min_samples: int = 3,
        on_sample: Callable[[int, float], None] | None = None,
    ) -> FidelityEstimate:
        """Score policy outputs in sample order; stop early when the running loss breaks the budget clearly.

        After each sample ``n >= min_samples`` (and before the last), the loss of the partial means
        ``metric.loss(mean full[:n], mean policy[:n])`` is compared with ``budget + margin``; above it, the
        remaining samples are not generated and the estimate is marked ``rejected_early``.

        Args:
            outputs: The policy's outputs, in sample order (consumed lazily; closed when scoring stops).
            budget: The loss budget; ``None`` disables early rejection.
            margin: How far above the budget the running loss must be to reject.
            min_samples: Samples to evaluate before rejecting.
            on_sample: Called with ``(index, value)`` after each sample.
        """
        n_total = len(self)
        policy: list[float] = []
        rejected = False
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
                if budget is not None and min_samples <= n < n_total:
                    try:
                        partial = self._loss(n, policy)
                    except FidelityError:  # a partial full-compute mean of 0: no estimate yet
                        continue
                    if partial > budget + margin:
                        rejected = True
                        break
        n = len(policy)
        if n == 0:
            raise SearchError("no policy outputs were produced.")
        if not rejected and n != n_total:
            raise SearchError(f"got {n} outputs for {n_total} samples.")
        return FidelityEstimate(
            metric=self.metric.name,
            full=float(np.mean(self.full_scores[:n])),
            policy=float(np.mean(policy)),
            loss=self._loss(n, policy),
            samples=n,
            total=n_total,
            rejected_early=rejected,
            per_sample_full=tuple(self.full_scores[:n]),
            per_sample_policy=tuple(policy),
        )


def _condition_array(image: Any, height: int, width: int) -> np.ndarray:
    from PIL import Image

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
    progress: bool = False,
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
        num_steps: Denoising steps (the policy's, when there is one).
        metric: Metric name; ``None``: the condition type's default.
        condition_type: The samples' condition type.
        guidance_scale: Classifier-free guidance scale.
        height: Image height; default the pipeline's native size.
        width: Image width; default ``height``.
        seed: Seed of samples without their own (``seed + index``).
        controlnet_scale: ControlNet conditioning scale on the policy side.
        mac_table: A :class:`hgc_tune.macs.MacTable` for the policy's MACs; ``None``: MACs not reported.
        progress: Show a tqdm bar on stderr.

    Returns:
        ``metric``, ``kind``, ``condition_type``, ``samples``, ``full``, ``policy``, ``loss`` (relative loss
        of the means), per-sample values, ``policy_name``, ``controlnet_scale`` and ``macs`` (both
        conventions, :func:`hgc_tune.policy.macs_provenance`; ``None`` without a table).

    Example:
        >>> from hgc_tune.models import load_pipeline  # doctest: +SKIP
        >>> from hgc_tune.data import open_dataset  # doctest: +SKIP
        >>> from hgc_tune.policy import load_policy  # doctest: +SKIP
        >>> pipe = load_pipeline("shapes", condition="seg")  # doctest: +SKIP
        >>> samples = open_dataset("shapes", condition_type="seg", split="heldout", limit=8)  # doctest: +SKIP
        >>> policy = load_policy("policies/shapes-seg.json").select("seg")  # doctest: +SKIP
        >>> evaluate_policy(pipe, policy, samples, num_steps=policy.num_steps, condition_type="seg")["loss"]
        ... # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from hgc_tune.fidelity import TaskEvaluator
    from hgc_tune.policy import full_compute_policy, macs_provenance, target_for_pipeline

    evaluator = TaskEvaluator(condition_type, metric)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    height = size if height is None else height
    width = height if width is None else width
    jobs = jobs_from_samples(samples, seed=seed)
    if not jobs:
        raise SearchError("`samples` is empty: there is nothing to evaluate.")
    full_settings = GenerationSettings(num_steps, float(guidance_scale), height, width)
    policy_settings = GenerationSettings(
        num_steps, float(guidance_scale), height, width, float(controlnet_scale)
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
            iter_outputs(pipe, policy, jobs, policy_settings), on_sample=lambda i, v: bar.update(1)
        )
    finally:
        bar.close()
    macs = None
    if mac_table is not None:
        cfg = guidance_scale > 1.0
        counted = policy
        if counted is None:
            counted = full_compute_policy(
                target_for_pipeline(pipe, num_steps=num_steps, condition_type=condition_type)
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
        "per_sample_full": list(estimate.per_sample_full),
        "per_sample_policy": list(estimate.per_sample_policy),
        "policy_name": None if policy is None else policy.name,
        "controlnet_scale": float(controlnet_scale),
        "macs": macs,
    }
