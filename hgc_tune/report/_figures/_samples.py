"""The sample grid: condition | full compute | policy | absolute difference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from hgc_tune.report._figure_info._samples import _get_samples_info
from hgc_tune.report._figures._base import new_figure, style


def plot_samples(
    conditions: np.ndarray,
    full: np.ndarray,
    policy_images: np.ndarray | None,
    *,
    indices: Sequence[int],
    seeds: Sequence[int],
    prompts: Sequence[str],
    psnr_db: Sequence[float] | None = None,
    policy_name: str = "policy",
) -> Figure:
    """A grid of samples: condition | full compute | policy | absolute difference.

    Args:
        conditions: uint8 ``[K, H, W, 3]`` condition images.
        full: uint8 ``[K, H, W, 3]`` full-compute images (the profile's references).
        policy_images: uint8 ``[K, H, W, 3]`` images under the policy, or ``None`` (two columns only).
        indices: The samples' indices in the profile.
        seeds: Their seeds.
        prompts: Their prompts (drawn as plain text: ``$`` is not math).
        psnr_db: PSNR of each policy image against full compute.
        policy_name: The policy column's title.
    """
    info = _get_samples_info(
        conditions,
        full,
        policy_images,
        indices=indices,
        seeds=seeds,
        prompts=prompts,
        psnr_db=psnr_db,
        policy_name=policy_name,
    )
    k, columns = len(info.rows), len(info.titles)
    with style():
        fig = new_figure(2.3 * columns + 2.6, 2.35 * k + 0.8)
        axes = fig.subplots(k, columns, squeeze=False)
        mappable = None
        for row in range(k):
            for col, image in enumerate(info.images[row]):
                axes[row, col].imshow(image, interpolation="nearest")
            if info.diff is not None:
                mappable = axes[row, 3].imshow(
                    info.diff[row], cmap="inferno", vmin=0, vmax=info.diff_max, interpolation="nearest"
                )
                if info.psnr_labels is not None:
                    axes[row, 2].set_xlabel(info.psnr_labels[row], fontsize=8)
            for col in range(columns):
                axes[row, col].set_xticks([])
                axes[row, col].set_yticks([])
                if row == 0:
                    axes[row, col].set_title(info.titles[col], fontsize=10).set_parse_math(False)
            axes[row, 0].set_ylabel(
                info.rows[row], fontsize=8, rotation=0, ha="right", va="center", labelpad=8
            ).set_parse_math(False)
        if mappable is not None:
            fig.colorbar(mappable, ax=axes[:, 3], label="mean |Δ| over RGB (0–255 levels)", shrink=0.8)
    return fig
