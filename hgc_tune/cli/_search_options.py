"""The search's command-line options, defined once: ``hgc-tune search`` adds them to its parser and turns
them into a :class:`~hgc_tune.search.SearchConfig` (:func:`config_from_args`); the worker processes it
starts, and ``hgc-tune demo``'s searches, get a config back as arguments (:func:`config_argv`).

``config_from_args(parse(config_argv(config))) == config`` for every config whose fields all have a flag.
Only the light argparse types are imported here, so ``hgc-tune --help`` stays instant.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from hgc_tune.cli._checks import (
    MAX_COUNT,
    add_budget_argument,
    add_samples_per_call_argument,
    add_seed_argument,
    add_steps_argument,
    add_trials_argument,
    confidence,
    int_in,
    seconds,
)

__all__ = [
    "FLAGS",
    "add_guard_argument",
    "add_search_options",
    "config_argv",
    "config_from_args",
    "guard_argv",
    "guards_from_args",
]

# SearchConfig field -> its flag (argparse's dest: the flag's name in snake case; a --no-… flag stores False
# in its field, see _NEGATED).
FLAGS: dict[str, str] = {
    "budget": "--budget",
    "metric": "--metric",
    "guards": "--guard",
    "clip": "--clip",
    "confidence": "--confidence",
    "n_trials": "--trials",
    "timeout": "--timeout",
    "storage": "--storage",
    "storage_timeout": "--storage-timeout",
    "study_name": "--study-name",
    "seed": "--seed",
    "peers": "--peers",
    "num_steps": "--steps",
    "heartbeat_interval": "--heartbeat",
    "max_validation_tries": "--validation-tries",
    "early_rejection": "--no-early-rejection",
    "search_guidance": "--no-guidance-window",
    "samples_per_call": "--samples-per-call",
    "worker_index": "--worker-index",
}
# The boolean fields whose flag turns them off (default True).
_NEGATED: tuple[str, ...] = ("early_rejection", "search_guidance")
_NO_PEERS = "none"
_NO_GUARDS = "none"


def _guard(text: str) -> tuple[str, float] | None:
    """One ``--guard METRIC=BUDGET`` (``None`` for ``--guard none``); the error names the flag and value."""
    from hgc_tune.search._constraints import GUARD_NAMES

    if text.strip().lower() == _NO_GUARDS:
        return None
    name, sep, value = text.partition("=")
    name = name.strip()
    try:
        budget = float(value)
    except ValueError:
        budget = math.nan
    if not sep or name not in GUARD_NAMES or not 0.0 < budget < 1.0:
        raise argparse.ArgumentTypeError(
            f"`--guard` must be METRIC=BUDGET with METRIC one of {', '.join(GUARD_NAMES)} and BUDGET in "
            f"(0, 1) (or `{_NO_GUARDS}`), but got --guard {text!r}"
        )
    return name, budget


def _dest(field: str) -> str:
    if field == "guards":
        return "guard"
    return field if field in _NEGATED else FLAGS[field][2:].replace("-", "_")


def add_guard_argument(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--guard METRIC=BUDGET`` flag (``hgc-tune search`` and ``hgc-tune demo``)."""
    parser.add_argument(
        "--guard",
        dest="guard",
        action="append",
        type=_guard,
        default=None,
        metavar="METRIC=BUDGET",
        help="another constraint with its own budget, repeatable: prompt (the model's prompt adherence: the "
        "background read back on shapes, a proxy; the CLIP score with --clip), ssim, psnr, latent_rel_error "
        "(fidelity to the full-compute picture), background, clip; `none`: the --metric alone (default: "
        "prompt=0.015 when the model has a prompt metric, else the prompt is unguarded)",
    )


def guards_from_args(args: argparse.Namespace) -> tuple[tuple[str, float], ...] | None:
    """The ``SearchConfig.guards`` of parsed ``--guard`` flags (``None``: none given, the default guards)."""
    from hgc_tune.errors import SearchError

    guards = args.guard
    if guards is None:
        return None
    if None in guards and len(guards) > 1:
        raise SearchError(f"--guard {_NO_GUARDS} cannot be combined with other --guard flags.")
    return tuple(g for g in guards if g is not None)


def guard_argv(guards: tuple[tuple[str, float], ...] | None) -> list[str]:
    """The ``--guard`` flags that :func:`guards_from_args` turns back into ``guards``."""
    if guards is None:
        return []
    flags = [a for name, budget in guards for a in ("--guard", f"{name}={budget!r}")]
    return flags or ["--guard", _NO_GUARDS]


def add_search_options(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :data:`FLAGS` entry (with the command line's defaults and checks) to ``parser``."""
    add_budget_argument(parser, default=None, help="largest fidelity loss, in (0, 1)")
    parser.add_argument(
        "--metric", default=None, help="fidelity metric (default: the condition type's task metric)"
    )
    add_guard_argument(parser)
    parser.add_argument(
        "--confidence",
        type=confidence("--confidence"),
        default=0.95,
        help="one-sided confidence with which every constraint's upper bound holds together; a policy is "
        "within budget when every bound is; with k constraints each bound is taken at 1 - (1 - c)/k "
        "(Bonferroni) (0 = point estimates; default: 0.95)",
    )
    add_trials_argument(parser, default=50, help="trials in the study in total (default: 50)")
    parser.add_argument(
        "--timeout",
        type=seconds("--timeout"),
        default=None,
        help="also stop starting trials after S seconds (default: none; the result then depends on the "
        "machine's speed)",
    )
    parser.add_argument("--storage", default=None, help="Optuna storage URL or journal:PATH (see above)")
    parser.add_argument(
        "--storage-timeout",
        type=seconds("--storage-timeout"),
        default=10.0,
        help="seconds to wait for the storage's database server to connect and answer (default: 10)",
    )
    parser.add_argument(
        "--study-name", default=None, help="study name (default: model-condition-metric-budget)"
    )
    add_seed_argument(parser, help="sampler seed (default: 0)")
    parser.add_argument(
        "--peers",
        default=None,
        help=f"comma-separated peer schedules to enqueue first, or `{_NO_PEERS}` (default: DeepCache N=3,5, "
        "T-GATE, ControlNet window, scaled to the step count)",
    )
    add_steps_argument(parser, default=None, help="expected step count (refuse other profiles)")
    parser.add_argument(
        "--heartbeat",
        type=int_in("--heartbeat", 1, 86400),
        default=30,
        help="seconds between trial heartbeats (stale after twice that)",
    )
    parser.add_argument(
        "--validation-tries",
        type=int_in("--validation-tries", 1, MAX_COUNT),
        default=3,
        help="plausible policies tried on the validation split (those within budget by their calibration "
        "point estimates first, cheapest first) before giving up "
        "(default: 3)",
    )
    parser.add_argument("--no-early-rejection", dest="early_rejection", action="store_false")
    parser.add_argument(
        "--no-guidance-window",
        dest="search_guidance",
        action="store_false",
        help="keep classifier-free guidance at every step: take the guidance window out of the search space, "
        "so the MACs saved come from caching only (the default peers then leave out T-GATE with truncated "
        "CFG; naming such a peer in --peers is refused)",
    )
    add_samples_per_call_argument(
        parser,
        default=None,
        help="samples generated per pipeline call in trials, validation and test (default: the profile's, "
        "so an all-compute trial reproduces its references bit for bit; the chosen policy is the same for "
        "the same seed and batch size)",
    )
    # Internal: the index of a worker started by --workers (offsets the sampler's seed).
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~hgc_tune.search.SearchConfig` of parsed arguments (checked on construction)."""
    from hgc_tune.search import SearchConfig

    values = {field: getattr(args, _dest(field)) for field in FLAGS}
    values["guards"] = guards_from_args(args)
    peers = values["peers"]
    if peers is not None:
        names = peers.strip()
        values["peers"] = (
            () if names.lower() == _NO_PEERS else tuple(p.strip() for p in names.split(",") if p)
        )
    return SearchConfig(**values)


def config_argv(config: Any) -> list[str]:
    """The arguments that :func:`config_from_args` turns back into ``config``.

    Raises:
        SearchError: If ``config`` sets a field that has no flag (it would be lost on the way).
    """
    from dataclasses import fields

    from hgc_tune.errors import SearchError

    unflagged = [
        f.name for f in fields(config) if f.name not in FLAGS and getattr(config, f.name) != f.default
    ]
    if unflagged:
        raise SearchError(
            f"these search settings have no command-line flag and would be lost in a worker process: "
            f"{', '.join(unflagged)}; leave them at their defaults, or call search_policy in Python."
        )
    argv: list[str] = []
    for field, flag in FLAGS.items():
        value = getattr(config, field)
        if field in _NEGATED:
            argv += [] if value else [flag]
        elif field == "worker_index":
            argv += [flag, str(value)] if value else []
        elif field == "guards":
            argv += guard_argv(value)
        elif field == "peers" and value is not None:
            argv += [flag, ",".join(value) if value else _NO_PEERS]
        elif value is not None:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv
