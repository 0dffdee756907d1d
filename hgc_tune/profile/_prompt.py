"""The prompt metric a profile was made with: recorded in ``profile.json`` under ``prompt_metric``, so that a
search scores prompts with the same CLIP model (same weights) as the profile did.

``prompt_metric`` holds :meth:`hgc_tune.fidelity.PromptMetric.to_json` (``guarded``, ``metric``, ``model``,
``digest``) and, for the CLIP score, ``reference_scores``: the score of each full-compute reference image
with its prompt. Profiles written before the field existed have none: their prompt metric is unknown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hgc_tune.errors import SearchError

if TYPE_CHECKING:
    from hgc_tune.fidelity import PromptMetric
    from hgc_tune.profile._artifact import Profile

__all__ = ["PROMPT_METRIC_KEY", "check_prompt_metric_fits", "recorded_prompt_metric", "with_prompt_metric"]

PROMPT_METRIC_KEY = "prompt_metric"


def with_prompt_metric(profile: Profile, prompt_metric: PromptMetric) -> Profile:
    """``profile`` with its prompt metric recorded (and, for the CLIP score, each reference image's score)."""
    from hgc_tune.profile._artifact import Profile

    record: dict[str, Any] = prompt_metric.to_json()
    if prompt_metric.guarded and prompt_metric.model is not None:
        scores = prompt_metric.scores(list(profile.reference_images), profile.prompts)
        record["reference_scores"] = [float(v) for v in scores]
    return Profile({**profile.meta, PROMPT_METRIC_KEY: record}, profile.tensors())


def recorded_prompt_metric(profile: Profile) -> dict[str, Any] | None:
    """The prompt metric recorded in ``profile`` (``None``: a profile written before it was recorded)."""
    record = profile.meta.get(PROMPT_METRIC_KEY)
    return dict(record) if isinstance(record, dict) else None


def check_prompt_metric_fits(profile: Profile, prompt_metric: PromptMetric) -> None:
    """Refuse a CLIP model other than the one the profile was made with (another digest of its weights).

    Raises:
        SearchError: Both name a CLIP model and their digests differ; the message names both.
    """
    recorded = recorded_prompt_metric(profile) or {}
    made, given = recorded.get("digest"), prompt_metric.digest
    if made is not None and given is not None and made != given:
        raise SearchError(
            f"--clip {prompt_metric.model!r} (weights digest {given}) is not the CLIP model the profile was "
            f"made with ({recorded.get('model')!r}, digest {made}); pass that one, or profile again with "
            "this --clip."
        )
