"""The sample grid: condition | full compute | policy | absolute difference."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class _SamplesInfo(NamedTuple):
    """The grid's cells and labels.

    Attributes:
        titles: The column titles (two columns without policy images, four with).
        rows: The row labels: sample index, seed and the start of the prompt.
        images: Per row, the pictures of its image columns (condition, full compute, and the policy's).
        diff: Mean absolute difference over RGB of full compute and the policy, ``[K, H, W]``; ``None``
            without policy images.
        diff_max: The top of the difference's colour range (at least 1 level).
        psnr_labels: Per row, the PSNR caption under the policy's image; ``None`` when not given.
    """

    titles: list[str]
    rows: list[str]
    images: list[list[np.ndarray]]
    diff: np.ndarray | None
    diff_max: float
    psnr_labels: list[str] | None


def _get_samples_info(
    conditions: np.ndarray,
    full: np.ndarray,
    policy_images: np.ndarray | None,
    *,
    indices: Sequence[int],
    seeds: Sequence[int],
    prompts: Sequence[str],
    psnr_db: Sequence[float] | None = None,
    policy_name: str = "policy",
) -> _SamplesInfo:
    """The cells of :func:`hgc_tune.report._figures.plot_samples` (see there for the arguments)."""
    titles = ["condition", "full compute"]
    diff = None
    images = [[conditions[row], full[row]] for row in range(len(full))]
    if policy_images is not None:
        titles += [_column_title(f"policy: {policy_name}"), "|full − policy|"]
        diff = np.abs(full.astype(np.int16) - policy_images.astype(np.int16)).mean(axis=-1)
        for row, panels in enumerate(images):
            panels.append(policy_images[row])
    psnr_labels = None
    if diff is not None and psnr_db is not None:
        psnr_labels = [f"PSNR {value:.1f} dB vs full" for value in psnr_db]
    return _SamplesInfo(
        titles=titles,
        rows=[_prompt_label(indices[row], seeds[row], prompts[row]) for row in range(len(full))],
        images=images,
        diff=diff,
        diff_max=max(float(diff.max()), 1.0) if diff is not None else 1.0,
        psnr_labels=psnr_labels,
    )


def _prompt_label(index: int, seed: int, prompt: str) -> str:
    wrapped = textwrap.shorten(prompt, width=70, placeholder=" …")
    return f"#{index}  seed {seed}\n" + "\n".join(textwrap.wrap(wrapped, 26)[:3])


def _column_title(text: str, width: int = 24, lines: int = 2) -> str:
    """``text`` wrapped to a sample column's width (``width`` characters), at most ``lines`` lines, the last
    ending in "…" when cut: a long policy name must not run into the next column's title."""
    wrapped = textwrap.wrap(text, width, break_on_hyphens=True) or [""]
    if len(wrapped) > lines:
        wrapped = [*wrapped[: lines - 1], wrapped[lines - 1][: width - 1] + "…"]
    return "\n".join(wrapped)
