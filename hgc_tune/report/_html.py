"""The report page: one self-contained ``index.html`` that shows the figures (relative ``src``) and the
summary table. No scripts, no external resources; every string that comes from the user is escaped."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hgc_tune.policy._macs import MECHANISM_LABELS
from hgc_tune.report._labels import format_macs, format_percent

__all__ = ["ReportFigure", "render_html"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 0.92em; }
figure { margin: 1.5em 0 2.5em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.question { font-weight: 600; color: #1f4e79; margin: 0.2em 0 0.6em; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.4em; }
nav ul { columns: 2; }
.notes li { color: #7a4b00; }
footer { color: #888; font-size: 0.85em; margin-top: 3em; }
"""


@dataclass(frozen=True)
class ReportFigure:
    """One figure of the report.

    Attributes:
        name: Identifier (``similarity_unet``); also the HTML anchor.
        file: File name of the PNG, relative to the report folder.
        title: Heading.
        question: The question the figure answers for a user.
        caption: How to read it.
    """

    name: str
    file: str
    title: str
    question: str
    caption: str


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _row(label: str, *cells: object, numeric: bool = False) -> str:
    cls = ' class="num"' if numeric else ""
    return f"<tr><th>{_e(label)}</th>" + "".join(f"<td{cls}>{_e(c)}</td>" for c in cells) + "</tr>"


def _number(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _steps(m: Mapping[str, Any]) -> str:
    task = m.get("task") or "text2img"
    if task == "text2img":
        return str(m["steps"])
    return (
        f"{m['steps']} run of num_inference_steps={m.get('num_inference_steps')} "
        f"({task}, strength {m.get('strength')})"
    )


def _model_table(summary: Mapping[str, Any]) -> str:
    m = summary["model"]
    height, width = m["resolution"]
    rows = [
        _row("model", m["name"] or "–"),
        _row("fingerprint", m["fingerprint"]),
        _row("condition type", m["condition_type"] or "–"),
        _row("steps", _steps(m)),
        _row("scheduler", m["scheduler"] or "–"),
        _row("resolution", f"{height}×{width} px"),
        _row("guidance scale", f"{m['guidance_scale']:g}" + (" (CFG)" if m["cfg"] else " (no CFG)")),
        _row("profiled samples", m["samples"]),
        _row("dataset", m["dataset"] or "–"),
        _row("dtype", m["dtype"] or "–"),
    ]
    if summary.get("profile"):
        rows.insert(0, _row("profile", summary["profile"]))
    return '<table class="model">' + "".join(rows) + "</table>"


def _macs_table(summary: Mapping[str, Any]) -> str:
    macs = summary["macs"]
    has_policy = summary["policy"] is not None
    head = "<tr><th>convention</th><th>full compute</th>"
    head += "<th>policy</th><th>reduction</th><th>speed-up (MAC ratio)</th>" if has_policy else ""
    head += "</tr>"
    rows = []
    for convention, m in macs.items():
        cells = [format_macs(m["full"])]
        if has_policy:
            cells += [format_macs(m["policy"]), format_percent(m["reduction"]), f"{m['ratio']:.2f}×"]
        rows.append(_row(convention, *cells, numeric=True))
    note = (
        "<p>MACs of one generation (U-Net + ControlNet, every step, both CFG halves), one "
        "multiply-accumulate = 1, computed from the profile's MAC table. <code>paper</code>: fvcore's count "
        "without the attention matmuls (the HGC paper's convention); <code>complete</code>: with QKᵀ and "
        "AV.</p>"
    )
    return note + '<table class="macs">' + head + "".join(rows) + "</table>"


def _savings_table(savings: Mapping[str, Any]) -> str:
    """The policy's MAC reduction split among its mechanisms, one column per convention."""
    conventions = list(savings)
    order = savings[conventions[0]]["order"]
    head = "<tr><th>mechanism</th>" + "".join(f"<th>{_e(c)}</th>" for c in conventions) + "</tr>"
    rows = [
        _row(
            MECHANISM_LABELS.get(m, m),
            *(
                f"{format_percent(savings[c]['reduction'][m])} ({format_macs(savings[c]['macs'][m])})"
                for c in conventions
            ),
            numeric=True,
        )
        for m in order
    ]
    rows.append(
        _row(
            "total",
            *(
                f"{format_percent(savings[c]['reduction']['total'])} ({format_macs(savings[c]['saved'])})"
                for c in conventions
            ),
            numeric=True,
        )
    )
    note = (
        "<p>Where the reduction comes from: each MAC the policy skips is counted once, for the first "
        "mechanism in this order that skips it (a step past the guidance window saves its whole "
        "unconditional half there), so the parts add up to the total; points of the full-compute MACs. "
        "Without the guidance window, the rest is what caching alone saves.</p>"
    )
    return note + '<table class="savings">' + head + "".join(rows) + "</table>"


def _window_text(window: Mapping[str, Any] | None) -> str:
    if window is None:
        return "runs at every step"
    elsewhere = "dropped (zero residuals)" if window["mode"] == "drop" else "its residuals reused"
    return f"runs at steps {window['steps']}; elsewhere {elsewhere}"


def _measured_on(policy: Mapping[str, Any]) -> str:
    """The weights and guidance scale the policy's figures were measured on, as its provenance records."""
    parts = []
    if policy.get("weights_digest"):
        parts.append(f"weights {policy['weights_digest']}")
    if policy.get("guidance_scale") is not None:
        parts.append(f"guidance {policy['guidance_scale']:g}")
    return " at ".join(parts) or "– (not recorded)"


def _policy_table(policy: Mapping[str, Any]) -> str:
    several = policy.get("controlnets") or {}
    window_text = _window_text(policy["controlnet"])
    if several:
        window_text = "; ".join(f"{key}: {_window_text(w)}" for key, w in several.items())
    rows = [
        _row("name", policy["name"]),
        _row("source", policy["source"] or "–"),
        _row("study / trial", f"{policy['study'] or '–'} / {_number(policy['trial'])}"),
        _row("budget", format_percent(policy["budget"], 2) if policy["budget"] is not None else "–"),
        _row("metric", policy["metric"] or "–"),
        _row("measured on", _measured_on(policy)),
        _row("ControlNet", window_text),
        _row(
            "CFG",
            "full"
            if policy["cfg_until"] is None
            else f"conditional half only from step {policy['cfg_until']}",
        ),
    ]
    if policy.get("prompt") is not None:
        rows.append(_row("prompt guarded by", _prompt_guard_text(policy["prompt"])))
    if policy.get("cells"):
        cells = ", ".join(f"{name}: {count}" for name, count in policy["cells"].items() if count)
        rows.append(_row("module × step cells", cells))
    return '<table class="policy">' + "".join(rows) + "</table>"


def _prompt_guard_text(prompt: Mapping[str, Any]) -> str:
    """``clip (CLIP model M, weights digest D)``, ``background``, or that nothing guards it."""
    if not prompt.get("guarded"):
        return "nothing: the prompt was unguarded (a checkpoint without --clip)"
    text = str(prompt.get("metric"))
    if prompt.get("model"):
        text += f" (CLIP model {prompt['model']}, weights digest {prompt.get('digest')})"
    return text


def _prompt_table(prompt: Mapping[str, Any]) -> str:
    """The prompt metric of the shown samples at full compute and with the policy."""
    note = (
        "<p>Each shown sample's image scored against its prompt, at full compute and with the policy "
        f"(<code>{_e(prompt['metric'])}</code>: "
        + (
            "the CLIP score 100·max(cos(image, prompt), 0), ControlNet++'s protocol"
            if prompt["metric"] == "clip"
            else "the benchmark's background, which only the prompt names, read back"
        )
        + "; a proxy for prompt adherence, on these few samples only).</p>"
    )
    rows = [
        _row("model", prompt["model"] or "–"),
        _row("samples", prompt["samples"]),
        _row("full compute", f"{prompt['full']:.4g}"),
        _row("with the policy", f"{prompt['policy']:.4g}"),
        _row("loss (relative drop of the mean)", format_percent(prompt["loss"], 2)),
    ]
    return note + '<table class="prompt">' + "".join(rows) + "</table>"


def _fidelity_table(fidelity: Mapping[str, Mapping[str, Any]], confidence: float | None = None) -> str:
    if not fidelity:
        return "<p>The policy's provenance records no fidelity measurements.</p>"
    splits = sorted(fidelity, key=lambda s: (s == "", s != "calibration", s))
    metrics = sorted({name for values in fidelity.values() for name in values})
    head = "<tr><th>metric</th>" + "".join(f"<th>{_e(s or 'all')}</th>" for s in splits) + "</tr>"
    rows = [_row(name, *(_number(fidelity[s].get(name)) for s in splits), numeric=True) for name in metrics]
    note = ""
    if confidence:
        note = (
            f" <code>loss_upper</code> is the one-sided {100 * confidence:g}% upper confidence bound of the "
            "loss, paired over samples (each seed at full compute and with the policy); the budget holds "
            "when it does."
        )
    if "test" in fidelity:
        note += " The test split took no part in choosing the policy: its column is the figure to quote."
    return (
        "<p>As recorded in the policy's provenance by the search (losses are relative degradations against "
        f"full compute: 0.015 = 1.5%).{note}</p>"
        + '<table class="fidelity">'
        + head
        + "".join(rows)
        + "</table>"
    )


def _samples_table(samples: Mapping[str, Any]) -> str:
    psnr = samples.get("psnr_db")
    head = "<tr><th>#</th><th>seed</th><th>prompt</th><th>negative prompt</th>"
    head += "<th>PSNR vs full</th></tr>" if psnr else "</tr>"
    rows = []
    for n, index in enumerate(samples["indices"]):
        cells = [samples["seeds"][n], samples["prompts"][n], samples["negative_prompts"][n] or "–"]
        if psnr:
            cells.append(f"{psnr[n]:.1f} dB")
        rows.append(_row(str(index), *cells))
    text = "<p>The samples shown below, from the profile."
    if psnr:
        text += (
            f" PSNR of the policy's image against the full-compute reference, measured here: mean "
            f"{samples['mean_psnr_db']:.1f} dB (60 dB = identical)."
        )
    return text + '</p><table class="samples">' + head + "".join(rows) + "</table>"


def _pareto_text(pareto: Mapping[str, Any]) -> str:
    def point(p: Mapping[str, Any]) -> str:
        text = f"{format_percent(p['reduction'])} fewer MACs, loss {format_percent(p['loss'], 2)}"
        if p.get("loss_upper") is not None and pareto.get("confidence"):
            text += f" ({level} upper bound {format_percent(p['loss_upper'], 2)})"
        if p.get("heldout_loss") is not None:
            text += f", validation loss {format_percent(p['heldout_loss'], 2)}"
            if p.get("heldout_loss_upper") is not None and pareto.get("confidence"):
                text += f" (bound {format_percent(p['heldout_loss_upper'], 2)})"
        return text

    level = f"{100 * (pareto.get('confidence') or 0):g}%"

    budget = format_percent(pareto["budget"], 2)
    parts = [f"{pareto['trials']} trials, {pareto['feasible']} within the budget {budget}"]
    if pareto["failed"]:
        parts[-1] += f", {pareto['failed']} failed"
    chosen = pareto["chosen"]
    if chosen is not None:
        parts.append(f"chosen: trial {chosen['number']}, {point(chosen)}")
    elif pareto.get("message"):
        parts.append(f"no policy chosen: {pareto['message']}")
    if pareto["peers"]:
        parts.append("peers: " + "; ".join(f"{name} {point(p)}" for name, p in pareto["peers"].items()))
    rows = [_row("search", ". ".join(parts) + ".")]
    if pareto.get("source"):
        rows.insert(0, _row("Pareto file", pareto["source"]))
    if pareto.get("study"):
        rows.insert(0, _row("study", pareto["study"]))
    return '<table class="search">' + "".join(rows) + "</table>"


def _figure(fig: ReportFigure) -> str:
    return (
        f'<figure id="{_e(fig.name)}"><h3>{_e(fig.title)}</h3>'
        f'<p class="question">{_e(fig.question)}</p>'
        f'<img src="{_e(fig.file)}" alt="{_e(fig.title)}" loading="lazy">'
        f"<figcaption>{_e(fig.caption)}</figcaption></figure>"
    )


def render_html(
    summary: Mapping[str, Any], figures: Sequence[ReportFigure], notes: Sequence[str], *, version: str
) -> str:
    """The report page for ``summary`` (see :func:`~hgc_tune.report._summary.report_summary`) and ``figures``.

    Every value that can come from the user (prompts, paths, names, module keys) is escaped with
    :func:`html.escape`; images are referenced by relative ``src``, so the folder opens from disk.
    """
    m = summary["model"]
    policy = summary["policy"]
    subject = f"{m['name'] or 'model'}" + (f" / {m['condition_type']}" if m["condition_type"] else "")
    title = f"hgc-tune report: {subject}" + (f" — {policy['name']}" if policy else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<p class="sub">Hybrid-Grained Cache (<a href="https://arxiv.org/abs/2511.11031">arXiv '
        "2511.11031</a>): which blocks and cross-attention modules a policy reuses across denoising steps, "
        "why, and what it costs in fidelity.</p>",
        '<h2 id="summary">Summary</h2>',
        _model_table(summary),
        "<h3>MACs</h3>",
        _macs_table(summary),
    ]
    if summary.get("savings_by_mechanism"):
        parts += ["<h3>Where the savings come from</h3>", _savings_table(summary["savings_by_mechanism"])]
    if policy is not None:
        parts += [
            "<h3>Policy</h3>",
            _policy_table(policy),
            "<h3>Fidelity</h3>",
            _fidelity_table(policy["fidelity"], policy.get("confidence")),
        ]
    if summary["samples"]["indices"]:
        parts += ["<h3>Samples</h3>", _samples_table(summary["samples"])]
    prompt = summary.get("prompt")
    if prompt and "full" in prompt:  # scored (not unguarded, not `unscored`)
        parts += ["<h3>Prompt adherence</h3>", _prompt_table(prompt)]
    if summary.get("pareto"):
        parts += ["<h3>Search</h3>", _pareto_text(summary["pareto"])]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append('<h2 id="figures">Figures</h2><nav><ul>')
    parts += [f'<li><a href="#{_e(f.name)}">{_e(f.title)}</a> — {_e(f.question)}</li>' for f in figures]
    parts.append("</ul></nav>")
    parts += [_figure(f) for f in figures]
    parts.append(
        "<p>Module labels abbreviate diffusers paths: <code>down</code> = <code>down_blocks</code>, "
        "<code>up</code> = <code>up_blocks</code>, <code>mid</code> = <code>mid_block</code>, "
        "<code>attn</code> = <code>attentions</code>, <code>tb</code> = <code>transformer_blocks</code>.</p>"
    )
    parts.append(f"<footer>Generated by hgc-tune {_e(version)}.</footer></body></html>")
    return "\n".join(parts) + "\n"
