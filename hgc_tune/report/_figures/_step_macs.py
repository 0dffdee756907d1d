"""MACs per denoising step under a policy: stacked U-Net / ControlNet bars against full compute."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from hgc_tune.report._figure_info._step_macs import _get_step_macs_info
from hgc_tune.report._figures._base import new_figure, style


def plot_step_macs(
    steps_policy: Sequence[dict[str, int]],
    steps_full: Sequence[dict[str, int]],
    *,
    convention: str,
    policy_name: str = "policy",
) -> Figure:
    """MACs per denoising step under the policy (stacked U-Net / ControlNet bars) against full compute.

    Args:
        steps_policy: :func:`hgc_tune.policy._macs.policy_step_macs` of the policy.
        steps_full: The same for the all-compute policy.
        convention: The MAC convention of both, for the axis label.
        policy_name: Shown in the title.
    """
    info = _get_step_macs_info(steps_policy, steps_full, convention=convention, policy_name=policy_name)
    n = len(info.full)
    x = np.arange(n)
    with style():
        fig = new_figure(max(7.0, 0.35 * n + 3.5), 4.2)
        ax = fig.subplots()
        ax.grid(True, axis="y", color="#e5e5e5")
        ax.bar(x, info.unet, color="tab:blue", label="U-Net (policy)")
        ax.bar(x, info.controlnet, bottom=info.unet, color="tab:orange", label="ControlNet (policy)")
        ax.step(
            np.append(x, n) - 0.5,
            np.append(info.full, info.full[-1:]),
            where="post",
            color="black",
            linewidth=1.5,
            linestyle="--",
            label="full compute",
        )
        ax.set_xlabel("denoising step s")
        ax.set_ylabel(f"per step, {info.unit}; {info.convention} convention")
        ax.set_xticks(x if n <= 30 else x[:: max(1, round(n / 15))])
        ax.set_xlim(-0.6, n - 0.4)
        title = ax.set_title(
            f"Where policy {info.policy_name!s} saves compute: denoiser MACs per step "
            f"({info.saved:.1%} fewer overall)",
            fontsize=11,
        )
        title.set_parse_math(False)
        fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig
