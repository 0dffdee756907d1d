"""Paired confidence bounds of a fidelity loss: how far the loss measured on n samples may be from the truth.

Samples are paired: sample ``i`` is generated with the same seed at full compute (``f_i``) and with the
policy (``p_i``). The loss is a ratio of means, ``L = mean(d) / mean(f)`` with ``d_i = f_i − p_i``
(higher-is-better metric) or ``d_i = p_i − f_i`` (lower-is-better); an ``absolute`` metric's loss is
``mean(d)`` itself. Its standard error comes from the delta method, linearising the ratio around the means:

    z_i = (d_i − L·f_i) / mean(f)          (relative loss; z_i = d_i for an absolute one)
    se  = sd(z) / sqrt(n)                  (sd with n − 1 degrees of freedom)
    upper = L + t_{c, n−1} · se,  lower = L − t_{c, n−1} · se

with ``t_{c, n−1}`` the one-sided ``c`` quantile of Student's t. Pairing is what makes this tight: the noise
of ``f_i`` that ``p_i`` shares (same seed, same scene) cancels in ``d_i``. For a reference metric (``f_i`` is
the metric's ideal for every sample) the formula reduces to the one-sample t bound of ``d / ideal``.

Why Student t on the linearised differences and not a paired bootstrap: the search recomputes the bound after
every generated sample, at n = 3…16, where a percentile bootstrap is known to cover too little (it cannot
widen beyond the spread of the few values it resamples), whereas t widens with ``t_{c, n−1}``; t is also
deterministic, costs nothing, and can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from hgc_tune.errors import FidelityError
from hgc_tune.fidelity._registry import Metric, get_metric

__all__ = ["DEFAULT_CONFIDENCE", "LossBound", "bonferroni_level", "check_confidence", "paired_loss_bound"]

DEFAULT_CONFIDENCE = 0.95
"""The default one-sided confidence level of a loss bound (``--confidence``)."""

METHOD = "paired delta-method Student t"


def check_confidence(confidence: object) -> float:
    """``confidence`` as a float in ``[0, 1)`` (``0`` = the point estimate).

    Raises:
        FidelityError: Not a number in ``[0, 1)``.
    """
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not math.isfinite(confidence)
        or not 0.0 <= confidence < 1.0
    ):
        raise FidelityError(
            f"`confidence` must be in [0, 1) (0 = the point estimate, 0.95 = a 95% upper bound), but got "
            f"confidence={confidence!r}."
        )
    return float(confidence)


def bonferroni_level(confidence: float, k: int) -> float:
    """The confidence level of each of ``k`` bounds that hold together with confidence ``confidence``.

    A policy is within budget when every constraint's upper bound is; for all ``k`` statements to hold at
    once with probability at least ``c``, each bound is taken at ``1 − (1 − c)/k`` (Bonferroni: the
    probabilities that some bound fails add up to at most ``1 − c``, whatever the dependence between the
    metrics, which are scored on the same outputs and so are far from independent). ``k = 1`` gives ``c``;
    ``c = 0`` (point estimates) stays ``0``.

    Raises:
        FidelityError: ``confidence`` outside ``[0, 1)`` or ``k`` not a positive integer.

    Example:
        >>> bonferroni_level(0.95, 2)
        0.975
    """
    confidence = check_confidence(confidence)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise FidelityError(f"`k` (the number of constraints) must be a positive integer, but got k={k!r}.")
    if confidence == 0.0 or k == 1:
        return confidence
    return 1.0 - (1.0 - confidence) / k


@dataclass(frozen=True)
class LossBound:
    """A fidelity loss with its one-sided confidence bounds.

    Attributes:
        loss: The point estimate ``metric.loss(mean full, mean policy)``.
        upper: The one-sided upper bound at ``confidence`` (``loss`` at confidence 0; ``inf`` for one sample).
        lower: The one-sided lower bound at ``confidence`` (the clear-failure test uses it).
        confidence: The confidence level in ``[0, 1)``.
        samples: The number of paired samples.
        se: The delta-method standard error of ``loss``.
    """

    loss: float
    upper: float
    lower: float
    confidence: float
    samples: int
    se: float

    def verdict(self, budget: float) -> str:
        """``pass`` (the upper bound is within ``budget``), ``fail`` (the lower bound is above it), or
        ``undecided`` (the bound straddles the budget: more samples could decide)."""
        if self.upper <= budget:
            return "pass"
        if self.lower > budget:
            return "fail"
        return "undecided"


def _values(values: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise FidelityError(f"`{name}` must hold finite values, but got {list(a)}.")
    return a


def paired_loss_bound(
    full: Sequence[float],
    policy: Sequence[float],
    metric: str | Metric,
    confidence: float = DEFAULT_CONFIDENCE,
) -> LossBound:
    """The loss of ``policy`` against ``full`` (per-sample metric values of the same seeds) and its bounds.

    Args:
        full: The metric of each sample at full compute (a reference metric: its ideal, repeated).
        policy: The metric of the same samples under the policy, same order.
        metric: The metric (name or :class:`Metric`); fixes the direction and the loss formula.
        confidence: One-sided confidence level in ``[0, 1)``; ``0`` gives the point estimate as the bounds.

    Raises:
        FidelityError: Lengths differ or are zero, a value is not finite, ``confidence`` is outside
            ``[0, 1)``, or a relative loss whose full-compute mean is ``<= 0``.

    Example:
        >>> b = paired_loss_bound([0.8, 0.9, 0.7], [0.78, 0.9, 0.67], "miou", confidence=0.95)
        >>> round(b.loss, 4), round(b.upper, 4)
        (0.0208, 0.0573)
    """
    m = get_metric(metric)
    confidence = check_confidence(confidence)
    f, p = _values(full, "full"), _values(policy, "policy")
    n = len(f)
    if n == 0 or len(p) != n:
        raise FidelityError(
            f"`full` and `policy` must hold one value per sample (at least one), but got {n} and {len(p)}."
        )
    f_mean, p_mean = float(f.mean()), float(p.mean())
    loss = float(m.loss(f_mean, p_mean))
    d = f - p if m.higher_is_better else p - f
    z = (d - loss * f) / f_mean if m.loss_mode == "relative" else d
    se = float(z.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    if confidence == 0.0:
        return LossBound(loss, loss, loss, confidence, n, se)
    if n < 2:
        return LossBound(loss, math.inf, -math.inf, confidence, n, se)
    half = 0.0 if se == 0.0 else float(stats.t.ppf(confidence, n - 1)) * se
    return LossBound(loss, loss + half, loss - half, confidence, n, se)
