"""Scoring generated pictures against their prompts with a prompt metric (:data:`PROMPT_METRICS`).

A prompt metric guards what no condition map carries. Like a task metric it is measured on every sample at
full compute and under the policy, per sample, so the paired bound of its loss applies. Both prompt metrics
are proxies: ``background`` reads the shapes benchmark's background back from the picture, ``clip`` is the
CLIP score of a :class:`~hgc_tune.fidelity.ClipScorer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hgc_tune.errors import FidelityError
from hgc_tune.fidelity._metrics import as_uint8_image
from hgc_tune.fidelity._registry import PROMPT_METRICS, Metric

if TYPE_CHECKING:
    from hgc_tune._typing import ArrayInput
    from hgc_tune.fidelity._clip import ClipScorer

__all__ = ["PromptEvaluator"]


class PromptEvaluator:
    """Scores pictures against their prompts with one prompt metric.

    Args:
        metric: A prompt metric's name (``background``, ``clip``) or :class:`Metric`.
        clip: The CLIP model that ``clip`` scores with (:func:`~hgc_tune.fidelity.load_clip_scorer`).

    Raises:
        FidelityError: Not a prompt metric, or ``clip`` without a CLIP model.
    """

    def __init__(self, metric: str | Metric, clip: ClipScorer | None = None) -> None:
        name = metric.name if isinstance(metric, Metric) else metric
        if name not in PROMPT_METRICS:
            raise FidelityError(
                f"`metric` must be a prompt metric ({', '.join(PROMPT_METRICS)}), but got metric={name!r}."
            )
        if name == "clip" and clip is None:
            raise FidelityError(
                "the prompt metric 'clip' needs a CLIP model (`clip=load_clip_scorer(PATH)`), but got "
                "clip=None."
            )
        self.metric = PROMPT_METRICS[name]
        self.clip = clip

    def score_many(self, images: Sequence[ArrayInput], prompts: Sequence[str]) -> list[float]:
        """The metric of each picture with its prompt (one CLIP batch for ``clip``)."""
        if len(images) != len(prompts):
            raise FidelityError(
                f"one prompt per image is needed, but got {len(images)} images and {len(prompts)} prompts."
            )
        if self.clip is not None and self.metric.name == "clip":
            return [float(v) for v in np.asarray(self.clip(list(images), list(prompts)))]
        return [float(self.metric.fn(as_uint8_image(i), p)) for i, p in zip(images, prompts)]

    def score(self, image: ArrayInput, prompt: str) -> float:
        """The metric of one picture with its prompt."""
        return self.score_many([image], [prompt])[0]
