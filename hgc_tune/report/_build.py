"""``build_report``: figures, summary and ``index.html`` of a profile, a policy and a search's trade-off."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import hgc_tune
from hgc_tune._atomic import atomic_folder, atomic_write_text, is_temporary
from hgc_tune.errors import ReportError
from hgc_tune.fidelity import psnr
from hgc_tune.models._blocks import is_whole_model_key
from hgc_tune.policy import Policy, PolicyFile, full_compute_policy, load_policy
from hgc_tune.policy._macs import policy_step_macs
from hgc_tune.policy._target import policy_profile_mismatches
from hgc_tune.profile import Profile
from hgc_tune.report._grid import PolicyGrid, policy_grid
from hgc_tune.report._html import ReportFigure, render_html
from hgc_tune.report._samples import generate_policy_images, pipeline_for_profile, sample_indices
from hgc_tune.report._summary import profile_cfg, report_summary
from hgc_tune.search._pareto import ParetoData, load_pareto

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.fidelity import PromptMetric

__all__ = ["FIGURES", "INDEX_FILE", "SUMMARY_FILE", "ReportResult", "build_report"]

INDEX_FILE = "index.html"
SUMMARY_FILE = "report.json"

# Every figure the report can hold, in page order: file, title, the question it answers, how to read it.
FIGURES: dict[str, ReportFigure] = {
    f.name: f
    for f in (
        ReportFigure(
            "similarity_unet",
            "similarity_unet.png",
            "U-Net block similarity",
            "Which U-Net blocks barely change from one step to the next, and at which steps?",
            "Module × step. Left/top: cosine similarity of each block's output with the previous step's; "
            "right/bottom: its relative L1 change in %. Yellow cells are stable: reusing the block's cached "
            "output there costs little fidelity.",
        ),
        ReportFigure(
            "similarity_controlnet",
            "similarity_controlnet.png",
            "ControlNet block similarity",
            "Which ControlNet blocks (and the ControlNet as a whole) are stable across steps?",
            "As above for the ControlNet's down blocks, mid block and the whole ControlNet (all residuals).",
        ),
        ReportFigure(
            "attention_drift",
            "attention_drift.png",
            "Cross-attention drift",
            "When do the cross-attention (attn2) maps settle, so that prompt-level reuse is safe?",
            "attn2 module × step: relative L1 change (%) and Jensen-Shannon divergence of the head-averaged "
            "attention map against the previous step. A line separates U-Net rows from ControlNet rows.",
        ),
        ReportFigure(
            "controlnet_residuals",
            "controlnet_residuals.png",
            "ControlNet residual change",
            "From which step on does the control signal stop changing, so the ControlNet can be reused or "
            "dropped?",
            "Relative L1 change and cosine similarity of all ControlNet residuals together (black, mean ± "
            "std over samples) and of each ControlNet block; grey bands: steps where the policy reuses or "
            "drops the ControlNet.",
        ),
        ReportFigure(
            "policy_grid",
            "policy_grid.png",
            "The policy over the similarity heatmap",
            "What does the policy compute, reuse or drop at each step, and does it reuse where modules are "
            "stable?",
            "Module × step; background: relative change vs the previous step (yellow = stable). //// = the "
            "module reuses its cached output; dots (..) = it sits inside a module that reuses; xxx = "
            "ControlNet dropped; a small dot = conditional CFG half only. Row labels end with (steps "
            "computed / steps).",
        ),
        ReportFigure(
            "step_macs",
            "step_macs.png",
            "MACs per step",
            "At which steps, and in which denoiser, does the policy save compute?",
            "Stacked bars: U-Net and ControlNet MACs per step under the policy (paper convention); dashed: "
            "full compute.",
        ),
        ReportFigure(
            "tradeoff",
            "tradeoff.png",
            "Trade-off: MAC reduction vs fidelity loss",
            "Is the chosen policy the cheapest within the budget, and how does it compare with the peer "
            "schedules (DeepCache, T-GATE, ControlNet window)?",
            "Every search trial (blue: within budget, grey: over), the Pareto front (orange), the budget "
            "(red dashed), the chosen policy (gold star) and the peers (labelled).",
        ),
        ReportFigure(
            "samples",
            "samples.png",
            "Samples",
            "What do the images look like under the policy, and where do they differ from full compute?",
            "Per profiled sample: condition | full-compute reference | the policy's image (same seed, prompt "
            "and steps) | mean absolute difference over RGB.",
        ),
    )
}


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote.

    Attributes:
        out_dir: The report folder.
        index: Its ``index.html``.
        figures: Figure name -> PNG path, in page order.
        files: Every file written (figures, ``report.json``, ``index.html``, in that order).
        summary: The summary data (also in ``report.json``).
        notes: What was skipped and why.
    """

    out_dir: Path
    index: Path
    figures: dict[str, Path]
    files: list[Path]
    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        return {
            "out_dir": str(self.out_dir),
            "index": str(self.index),
            "figures": {name: str(path) for name, path in self.figures.items()},
            "files": [str(p) for p in self.files],
            "summary": self.summary,
            "notes": list(self.notes),
        }


def _resolve_profile(profile: Profile | str | os.PathLike[str]) -> tuple[Profile, str | None]:
    if isinstance(profile, Profile):
        return profile, None
    if isinstance(profile, str | os.PathLike):
        return Profile.load(profile), str(profile)
    raise ReportError(f"`profile` must be a Profile or a profile folder, but got {type(profile).__name__}.")


def _resolve_policy(
    policy: Policy | PolicyFile | str | os.PathLike[str] | None, profile: Profile
) -> Policy | None:
    if policy is None or isinstance(policy, Policy):
        return policy
    if isinstance(policy, str | os.PathLike):
        policy = load_policy(policy)
    if isinstance(policy, PolicyFile):
        return policy.select(profile.condition_type or None)
    raise ReportError(
        f"`policy` must be a Policy, a PolicyFile or a policy JSON path, but got {type(policy).__name__}."
    )


def _check_policy_fits_profile(policy: Policy, profile: Profile) -> None:
    if policy.num_steps != profile.num_steps:
        raise ReportError(
            f"policy {policy.name!r} was made for {policy.num_steps} steps, but the profile has "
            f"{profile.num_steps}: profile with --steps {policy.num_steps}."
        )
    if policy.target.fingerprint != profile.fingerprint:
        raise ReportError(
            f"policy {policy.name!r} was made for model fingerprint {policy.target.fingerprint!r}, but the "
            f"profile is of {profile.fingerprint!r}: report the policy with a profile of its own model."
        )
    diffs = policy_profile_mismatches(policy, profile.meta)
    if diffs:
        raise ReportError(
            f"policy {policy.name!r} does not fit the profile: {'; '.join(diffs)}; report the policy with a "
            "profile made with its scheduler and condition."
        )


def _pareto_notes(pareto: ParetoData, policy: Policy | None, profile: Profile) -> list[str]:
    notes = []
    if pareto.num_steps is not None and pareto.num_steps != profile.num_steps:
        notes.append(
            f"The Pareto file is of a search over {pareto.num_steps} steps, but the profile has "
            f"{profile.num_steps}."
        )
    chosen = pareto.chosen
    p = policy.provenance if policy is not None else None
    if p is not None and p.study == pareto.study and p.trial is not None and chosen is not None:
        if p.trial != chosen.number:
            notes.append(
                f"The policy shown is trial {p.trial} of study {p.study}, but the search chose trial "
                f"{chosen.number}."
            )
    return notes


def _side_by_side(conditions: np.ndarray) -> np.ndarray:
    """Condition images for the sample grid: several per sample (``[n, k, H, W, 3]``) side by side."""
    return np.concatenate(list(np.moveaxis(conditions, 1, 0)), axis=2) if conditions.ndim == 5 else conditions


def _controlnet_figure(index: int, key: str, condition_type: str | None) -> ReportFigure:
    """The block-similarity figure of one of several ControlNets."""
    types = str(condition_type or "").split(",")
    kind = f", {types[index]}" if index < len(types) and types[index] else ""
    return ReportFigure(
        f"similarity_controlnet_{index}",
        f"similarity_controlnet_{index}.png",
        f"ControlNet {index} block similarity ({key}{kind})",
        f"Which blocks of ControlNet {index} (and that ControlNet as a whole) are stable across steps?",
        "As for the U-Net, for this ControlNet's down blocks, mid block and the whole ControlNet (all its "
        "residuals); each ControlNet has its own window and block schedule.",
    )


def build_report(
    profile: Profile | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    policy: Policy | PolicyFile | str | os.PathLike[str] | None = None,
    pareto: ParetoData | str | os.PathLike[str] | None = None,
    samples: int = 4,
    pipe: ControlNetPipeline | None = None,
    model: str | None = None,
    controlnet: str | Sequence[str] | None = None,
    device: str = "cpu",
    prompt_metric: PromptMetric | None = None,
) -> ReportResult:
    """Write a report folder: PNG figures, ``report.json`` and a self-contained ``index.html``.

    Figures (see :data:`FIGURES`): block similarity of the U-Net and of the ControlNet, cross-attention
    drift, ControlNet residual change; with a policy, the policy grid over the similarity heatmap and the
    MACs per step; with a Pareto file, the trade-off; and a sample grid (condition | full compute | policy |
    difference; without a policy, condition | full compute). The policy's images are generated here with the
    profile's seeds, prompts and condition images, on ``pipe`` or on the pipeline the profile names.

    The files are written into a temporary folder beside ``out_dir``, which then replaces ``out_dir`` as a
    whole (:func:`hgc_tune._atomic.atomic_folder`): a reader finds the old report or the new one, and a
    failed build (a full disk) leaves nothing and the old report unchanged.

    Args:
        profile: A :class:`~hgc_tune.profile.Profile` or its folder.
        out_dir: The report folder: a new one, or one that holds a report (replaced).
        policy: A policy, a policy file, or its path (a file's policy is picked by the profile's condition
            type); ``None`` for a profile-only report.
        pareto: The search's trade-off (:class:`ParetoData` or a ``.pareto.json`` path), or ``None``.
        samples: How many profiled samples to show (0: no sample grid).
        pipe: The pipeline to generate the policy's images on; default: load the profile's model.
        model: Load this model instead of the profile's (when ``pipe`` is ``None``).
        controlnet: ControlNet for a base model that holds none (when ``pipe`` is ``None``).
        device: Torch device of the loaded pipeline.
        prompt_metric: The model's prompt metric (:func:`hgc_tune.fidelity.prompt_metric_for`): with a
            policy, the shown samples are scored against their prompts at full compute and with the policy
            (summary ``prompt``); ``None``: no ``prompt`` entry.

    Returns:
        A :class:`ReportResult` listing every file written.

    Raises:
        ReportError: Bad ``samples``, a malformed Pareto file, or a policy whose steps, fingerprint or
            module keys do not fit the profile.
        ProfileError: A missing or damaged profile folder.

    Example:
        >>> result = build_report("runs/tiny-seg", "reports/tiny-seg",
        ...                       policy="policies/tiny-seg.json", samples=2)  # doctest: +SKIP
        >>> result.index  # doctest: +SKIP
        PosixPath('reports/tiny-seg/index.html')
    """
    loaded, profile_source = _resolve_profile(profile)
    chosen = _resolve_policy(policy, loaded)
    trade_off = load_pareto(pareto, error=ReportError) if isinstance(pareto, str | os.PathLike) else pareto
    indices = sample_indices(loaded, samples)

    def pipeline() -> ControlNetPipeline:
        if pipe is not None:
            return pipe
        return pipeline_for_profile(loaded, model=model, controlnet=controlnet, device=device)

    return _write_report(out_dir, loaded, profile_source, chosen, trade_off, indices, pipeline, prompt_metric)


def _write_report(
    out_dir: str | os.PathLike[str],
    profile: Profile,
    profile_source: str | None,
    policy: Policy | None,
    pareto: ParetoData | None,
    indices: list[int],
    pipeline: Callable[[], ControlNetPipeline],
    prompt_metric: PromptMetric | None = None,
) -> ReportResult:
    """:func:`build_report` with its inputs resolved; ``pipeline()`` is called (the pipeline loaded) only when
    a policy's samples are shown, after the other figures are written."""
    # matplotlib here, not at the top: importing hgc_tune.report (the figures' data modules included) must
    # not import it.
    from hgc_tune.report import _figures as figs

    cfg = profile_cfg(profile)
    grid = None
    if policy is not None:
        _check_policy_fits_profile(policy, profile)
        grid = policy_grid(policy, [*profile.block_keys, *profile.attention_keys], cfg=cfg)

    target = _report_folder(out_dir)
    # Built in a temporary folder that replaces the old report as a whole: a failed build (a full disk)
    # leaves no partial report, and the one that was there unchanged.
    with atomic_folder(os.path.abspath(target)) as out:
        notes: list[str] = []
        figures: dict[str, Path] = {}
        infos: dict[str, ReportFigure] = dict(FIGURES)

        def write(name: str, fig) -> None:
            # Generated images keep full colour: a palette would blur the very differences they show.
            figures[name] = figs.save_figure(fig, out / infos[name].file, palette=name != "samples")

        _write_profile_figures(write, infos, profile, policy)
        if policy is not None and grid is not None:  # a policy has its grid
            _write_policy_figures(write, profile, policy, grid, cfg)
        else:
            notes.append(
                "No policy given (--policy): the policy grid, MACs per step and policy images are skipped."
            )
        if pareto is not None:
            notes += _pareto_notes(pareto, policy, profile)
            write("tradeoff", figs.plot_tradeoff(pareto))
        else:
            notes.append("No Pareto file given (--pareto): the trade-off figure is skipped.")

        psnr_db = policy_images = None
        if indices:
            pipe = pipeline() if policy is not None else None
            psnr_db, policy_images = _write_sample_figure(write, profile, policy, indices, pipe)
        else:
            notes.append("No samples requested (--samples 0): the sample grid is skipped.")

        summary = report_summary(
            profile,
            policy=policy,
            pareto=pareto,
            grid_counts=grid.counts() if grid is not None else None,
            sample_indices=indices,
            psnr_db=psnr_db,
            profile_source=profile_source,
        )
        if prompt_metric is not None:
            summary["prompt"] = _prompt_summary(prompt_metric, profile, indices, policy_images)
        summary["figures"] = {name: infos[name].file for name in figures}
        summary["notes"] = notes
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        page = render_html(summary, [infos[name] for name in figures], notes, version=hgc_tune.__version__)
        atomic_write_text(out / INDEX_FILE, page)
    figures = {name: target / path.name for name, path in figures.items()}
    summary_path, index = target / SUMMARY_FILE, target / INDEX_FILE
    return ReportResult(
        out_dir=target,
        index=index,
        figures=figures,
        files=[*figures.values(), summary_path, index],
        summary=summary,
        notes=notes,
    )


def _write_profile_figures(
    write: Callable[[str, Any], None], infos: dict[str, ReportFigure], profile: Profile, policy: Policy | None
) -> None:
    """The profile's figures: block similarity (one per ControlNet), attention drift, ControlNet residuals."""
    from hgc_tune.report import _figures as figs  # matplotlib: see _write_report

    write("similarity_unet", figs.plot_block_similarity(profile, "unet"))
    several = [k for k in profile.block_keys if is_whole_model_key(k) and k != "controlnet"]
    if several:
        # Several ControlNets (MultiControlNetModel): one heatmap per ControlNet.
        for i, key in enumerate(several):
            info = _controlnet_figure(i, key, profile.condition_type)
            infos[info.name] = info
            write(info.name, figs.plot_block_similarity(profile, key, title=info.title))
    else:
        write("similarity_controlnet", figs.plot_block_similarity(profile, "controlnet"))
    write("attention_drift", figs.plot_attention_drift(profile))
    write("controlnet_residuals", figs.plot_controlnet_residuals(profile, policy))


def _write_policy_figures(
    write: Callable[[str, Any], None], profile: Profile, policy: Policy, grid: PolicyGrid, cfg: bool
) -> None:
    """The policy's grid over the similarity heatmap and its MACs per step."""
    from hgc_tune.report import _figures as figs  # matplotlib: see _write_report

    cfg_until = policy.guidance.cfg_until if policy.guidance is not None and cfg else None
    write("policy_grid", figs.plot_policy_grid(profile, grid, policy_name=policy.name, cfg_until=cfg_until))
    table = profile.mac_table
    full = full_compute_policy(policy.target)
    write(
        "step_macs",
        figs.plot_step_macs(
            policy_step_macs(policy, table, cfg=cfg),
            policy_step_macs(full, table, cfg=cfg),
            convention="paper",
            policy_name=policy.name,
        ),
    )


def _write_sample_figure(
    write: Callable[[str, Any], None],
    profile: Profile,
    policy: Policy | None,
    indices: list[int],
    pipe: ControlNetPipeline | None,
) -> tuple[list[float] | None, np.ndarray | None]:
    """The sample grid (with a policy: its images generated on ``pipe``); returns their PSNR in dB against
    full compute and the images (``None`` without a policy)."""
    from hgc_tune.report import _figures as figs  # matplotlib: see _write_report

    policy_images = None
    psnr_db = None
    full_images = profile.reference_images[indices]
    if policy is not None:
        if pipe is None:
            raise ReportError(
                f"the samples of policy {policy.name!r} are generated on a pipeline, but got pipe=None."
            )
        policy_images = generate_policy_images(pipe, profile, policy, indices)
        psnr_db = [psnr(p, f) for p, f in zip(policy_images, full_images)]
    write(
        "samples",
        figs.plot_samples(
            _side_by_side(profile.condition_images[indices]),
            full_images,
            policy_images,
            indices=indices,
            seeds=[profile.seeds[i] for i in indices],
            prompts=[profile.prompts[i] for i in indices],
            psnr_db=psnr_db,
            policy_name=policy.name if policy is not None else "policy",
        ),
    )
    return psnr_db, policy_images


def _prompt_summary(
    prompt_metric: PromptMetric, profile: Profile, indices: list[int], policy_images: np.ndarray | None
) -> dict[str, Any]:
    """The prompt metric of the shown samples at full compute and with the policy (its record alone when
    unguarded, or without a policy's images)."""
    from hgc_tune.fidelity._prompt_guard import prompt_fidelity

    if not prompt_metric.guarded or policy_images is None:
        return prompt_metric.to_json()
    return prompt_fidelity(
        prompt_metric,
        list(profile.reference_images[indices]),
        list(policy_images),
        [profile.prompts[i] for i in indices],
        confidence=0.0,  # a handful of shown samples: the figures, not a bound
    )


def _report_folder(out_dir: str | os.PathLike[str]) -> Path:
    """The report folder: a new folder, or one that holds a report (its page or summary, and figures), which
    the new report replaces as a whole.

    Raises:
        ReportError: ``out_dir`` is a file, or a folder that holds anything else.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"`out_dir` must be a folder, but got out_dir={str(out)!r}, which is a file.")
    if out.is_dir():
        entries = [entry for entry in out.iterdir() if not is_temporary(entry.name)]
        names = {entry.name for entry in entries}
        foreign = sorted(
            entry.name
            for entry in entries
            if not (entry.is_file() and (entry.name in (INDEX_FILE, SUMMARY_FILE) or entry.suffix == ".png"))
        )
        if foreign or (entries and not names & {INDEX_FILE, SUMMARY_FILE}):
            held = repr(foreign[0]) if foreign else "figures of no report"
            raise ReportError(
                f"`out_dir` must be a new folder or hold a report (a report replaces its folder as a whole), "
                f"but {str(out)!r} holds {held}; choose another folder."
            )
    return out
