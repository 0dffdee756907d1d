"""Scoring generated images and turning full-vs-policy scores into a fidelity loss."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hgc_tune.errors import FidelityError
from hgc_tune.fidelity import _metrics
from hgc_tune.fidelity._registry import Metric, check_metric_fits, default_metric
from hgc_tune.fidelity._task_models import (
    ConditionDecoder,
    DepthEstimator,
    EdgeDetector,
    Segmenter,
    SoftEdgeDetector,
    shapes_task_models,
)

__all__ = ["FidelityResult", "TaskEvaluator", "evaluate_pairs"]

# the task model each task metric needs to read a generated image
_NEEDS: dict[str, str] = {
    "miou": "segmenter",
    "edge_f1": "edge_detector",
    "edge_ssim": "soft_edge_detector",
    "depth_rmse": "depth_estimator",
}


def _gray(condition: Any, name: str = "condition_image") -> np.ndarray:
    """A condition image as one float ``[0, 1]`` channel (conditions are gray renderings in RGB)."""
    a = _metrics.as_float_image(condition, name=name)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=-1)
    if a.ndim != 2:
        raise FidelityError(f"`{name}` must be H×W or H×W×3, but got shape {tuple(a.shape)}.")
    return a


class TaskEvaluator:
    """Scores generated images for one condition type with one metric.

    For a task metric, :meth:`score` compares a map extracted from the image by a task model against the
    condition (ControlNet++'s protocol): ``miou`` segments the image and compares with the condition's
    class map; ``edge_f1`` runs Canny on the image and compares with the condition's edges (condition
    pixels > 0.5 are edges); ``edge_ssim`` compares the image's soft-edge map with the gray condition;
    ``depth_rmse`` compares the image's estimated depth with the gray condition depth, both in ``[0, 1]``.
    For a reference metric, :meth:`score` compares the image (or latent) with a reference output.

    Task models left as ``None`` default to the shapes benchmark's (``hgc_tune.data.shapes``), imported
    only when the chosen metric needs them.

    Args:
        condition_type: ``seg``, ``canny``, ``hed``, ``lineart``, ``depth``, another type or ``None``.
        metric: a metric name or :class:`Metric`; ``None`` = :func:`default_metric` of the type.
        segmenter: image → class map (``miou``).
        depth_estimator: image → depth in ``[0, 1]`` (``depth_rmse``).
        edge_detector: image → bool edges (``edge_f1``).
        soft_edge_detector: image → soft edges in ``[0, 1]`` (``edge_ssim``).
        condition_class_map: seg condition image → class map (``miou``).
        edge_tolerance: ``edge_f1``'s matching radius in pixels.

    Raises:
        FidelityError: a metric that does not fit the condition type, or built-in task models that are
            needed but cannot be imported.

    Example:
        >>> ev = TaskEvaluator("seg", segmenter=my_seg, condition_class_map=my_decoder)  # doctest: +SKIP
        >>> ev.score(generated_image, condition_image)  # doctest: +SKIP
        0.83
    """

    def __init__(
        self,
        condition_type: str | None,
        metric: str | Metric | None = None,
        segmenter: Segmenter | None = None,
        depth_estimator: DepthEstimator | None = None,
        *,
        edge_detector: EdgeDetector | None = None,
        soft_edge_detector: SoftEdgeDetector | None = None,
        condition_class_map: ConditionDecoder | None = None,
        edge_tolerance: float = 1.0,
    ) -> None:
        self.condition_type = condition_type
        chosen = default_metric(condition_type) if metric is None else metric
        self.metric = check_metric_fits(chosen, condition_type)
        models: dict[str, Any] = {
            "segmenter": segmenter,
            "depth_estimator": depth_estimator,
            "edge_detector": edge_detector,
            "soft_edge_detector": soft_edge_detector,
            "condition_class_map": condition_class_map,
        }
        if self.metric.kind == "task" and self.metric.name not in _NEEDS:
            raise FidelityError(
                f"TaskEvaluator has no task model for the task metric metric={self.metric.name!r}; "
                f"it knows {', '.join(sorted(_NEEDS))}."
            )
        needed = {_NEEDS[self.metric.name]} if self.metric.kind == "task" else set()
        if self.metric.name == "miou":
            needed.add("condition_class_map")
        if any(models[k] is None for k in needed):
            builtin = shapes_task_models()
            models = {k: builtin[k] if v is None and k in needed else v for k, v in models.items()}
        self.segmenter = models["segmenter"]
        self.depth_estimator = models["depth_estimator"]
        self.edge_detector = models["edge_detector"]
        self.soft_edge_detector = models["soft_edge_detector"]
        self.condition_class_map = models["condition_class_map"]
        self.edge_tolerance = edge_tolerance
        self._fn: Callable[[Any, Any], float] = (
            functools.partial(_metrics.edge_f1, tolerance=edge_tolerance)
            if self.metric.name == "edge_f1"
            else self.metric.fn
        )

    def task_maps(self, image: Any, condition_image: Any) -> tuple[np.ndarray, np.ndarray]:
        """The ``(prediction, target)`` maps a task metric compares: from the image and from the condition.

        Raises:
            FidelityError: the evaluator's metric is a reference metric.
        """
        name = self.metric.name
        if self.metric.kind != "task":
            raise FidelityError(f"metric={name!r} is a reference metric; it has no task maps.")
        img = _metrics.as_uint8_image(image)
        if name == "miou":
            return np.asarray(self.segmenter(img)), np.asarray(
                self.condition_class_map(_metrics.as_uint8_image(condition_image, name="condition_image"))
            )
        if name == "edge_f1":
            return np.asarray(self.edge_detector(img)), _gray(condition_image) > 0.5
        if name == "edge_ssim":
            return np.asarray(self.soft_edge_detector(img)), _gray(condition_image)
        return np.asarray(self.depth_estimator(img), dtype=np.float64), _gray(condition_image)

    def score(self, image: Any, condition_image: Any = None, *, reference: Any = None) -> float:
        """The metric of one generated image (or latent, for ``latent_rel_error``).

        Args:
            image: the generated output: ``H×W×3`` uint8 or ``[0, 1]`` float image, PIL image, or latent.
            condition_image: the input condition (task metrics).
            reference: the full-compute output to compare with (reference metrics).

        Raises:
            FidelityError: the input the metric needs is missing, or shapes do not match.
        """
        if self.metric.kind == "task":
            if condition_image is None:
                raise FidelityError(f"the task metric {self.metric.name!r} needs `condition_image`.")
            pred, target = self.task_maps(image, condition_image)
            return float(self._fn(pred, target))
        if reference is None:
            raise FidelityError(f"the reference metric {self.metric.name!r} needs `reference`.")
        return float(self._fn(image, reference))


@dataclass(frozen=True)
class FidelityResult:
    """The fidelity of a policy on a set of samples.

    Attributes:
        metric: the metric's name.
        kind: ``"task"`` or ``"reference"``.
        higher_is_better: the metric's direction.
        condition_type: the condition type scored.
        full: the mean metric at full compute (for a reference metric: its ideal value).
        policy: the mean metric under the policy.
        loss: ``Metric.loss(full, policy)``: the relative degradation of the means (the loss of the means,
            not the mean of per-sample losses).
        per_sample_full: the metric of each full-compute sample.
        per_sample_policy: the metric of each policy sample.
    """

    metric: str
    kind: str
    higher_is_better: bool
    condition_type: str | None
    full: float
    policy: float
    loss: float
    per_sample_full: tuple[float, ...] = field(default=())
    per_sample_policy: tuple[float, ...] = field(default=())

    @property
    def n(self) -> int:
        """The number of samples."""
        return len(self.per_sample_policy)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with ``n`` added and per-sample tuples as lists)."""
        d = asdict(self)
        d["n"] = self.n
        d["per_sample_full"] = list(self.per_sample_full)
        d["per_sample_policy"] = list(self.per_sample_policy)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FidelityResult:
        """The inverse of :meth:`to_dict` (``n`` is ignored)."""
        fields = {k: v for k, v in d.items() if k != "n"}
        fields["per_sample_full"] = tuple(fields.get("per_sample_full", ()))
        fields["per_sample_policy"] = tuple(fields.get("per_sample_policy", ()))
        return cls(**fields)


def evaluate_pairs(
    full_images: Sequence[Any],
    policy_images: Sequence[Any],
    conditions: Sequence[Any] | None,
    evaluator: TaskEvaluator,
) -> dict[str, Any]:
    """Score full-compute and policy outputs of the same samples and compute the policy's fidelity loss.

    Task metric: each full and each policy output is scored against its condition; the loss is
    :func:`relative_loss` of the two means. Reference metric: each policy output is scored against the
    full output of the same sample, the full side is the metric's ideal (the reference against itself),
    and the loss is :meth:`Metric.loss`: ``1 − mean SSIM``; ``(cap − mean PSNR) / cap`` with PSNR capped at
    60 dB; the mean ``latent_rel_error`` itself. Reference losses lie in ``[0, ∞)``; a task loss is negative
    when the policy scores better than full compute.

    Args:
        full_images: full-compute outputs, one per sample (images, or latents for ``latent_rel_error``).
        policy_images: the policy's outputs of the same samples, same order.
        conditions: the condition images, same order (may be ``None`` for a reference metric).
        evaluator: the :class:`TaskEvaluator` that fixes the metric and task models.

    Returns:
        :meth:`FidelityResult.to_dict`: ``metric``, ``kind``, ``higher_is_better``, ``condition_type``,
        ``full``, ``policy``, ``loss``, ``n``, ``per_sample_full``, ``per_sample_policy``.

    Raises:
        FidelityError: lengths differ or are zero, a per-sample value is not finite, or (task metric) the
            full-compute mean is ``<= 0`` so a relative loss is undefined.
    """
    metric = evaluator.metric
    n = len(full_images)
    if n == 0:
        raise FidelityError("`full_images` is empty; evaluate_pairs needs at least one sample.")
    if len(policy_images) != n:
        raise FidelityError(
            f"`full_images` and `policy_images` must have one entry per sample, but got "
            f"len(full_images)={n} and len(policy_images)={len(policy_images)}."
        )
    if metric.kind == "task":
        if conditions is None or len(conditions) != n:
            got = "None" if conditions is None else str(len(conditions))
            raise FidelityError(
                f"the task metric {metric.name!r} needs one condition per sample, but got "
                f"len(full_images)={n} and len(conditions)={got}."
            )
        full = [evaluator.score(f, c) for f, c in zip(full_images, conditions, strict=True)]
        policy = [evaluator.score(p, c) for p, c in zip(policy_images, conditions, strict=True)]
    else:
        if metric.ideal is None:  # a prompt metric: it scores against prompts, not the full output
            raise FidelityError(
                f"metric {metric.name!r} ({metric.kind}) has no `ideal` (its value against itself), but got "
                "ideal=None; pass a task or reference metric."
            )
        full = [float(metric.ideal)] * n
        policy = [evaluator.score(p, reference=f) for p, f in zip(policy_images, full_images, strict=True)]
    for side, values in (("full", full), ("policy", policy)):
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise FidelityError(
                f"metric {metric.name!r} is not finite for the {side} outputs of samples {bad}."
            )
    m_full, m_policy = float(np.mean(full)), float(np.mean(policy))
    result = FidelityResult(
        metric=metric.name,
        kind=metric.kind,
        higher_is_better=metric.higher_is_better,
        condition_type=evaluator.condition_type,
        full=m_full,
        policy=m_policy,
        loss=metric.loss(m_full, m_policy),
        per_sample_full=tuple(full),
        per_sample_policy=tuple(policy),
    )
    return result.to_dict()
