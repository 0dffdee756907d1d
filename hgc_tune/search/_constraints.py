"""What a search guards: the task metric and the guards (prompt adherence, fidelity to the full-compute
picture), each with its own budget, and the scorers that measure them on one split.

A policy is within budget only when every constraint's upper bound is. The ``k`` bounds share the search's
confidence ``c`` by Bonferroni, each taken at ``1 − (1 − c)/k``, so that all of them hold together with
confidence at least ``c`` (:func:`~hgc_tune.fidelity._confidence.bonferroni_level`).

Guards are named by metric (``ssim``, ``psnr``, ``latent_rel_error``, ``background``, ``clip``) or as
``prompt``: the model's prompt-adherence metric, which is the CLIP score when a CLIP model is given
(``SearchConfig.clip``) and the background reader ``background`` on the shapes model (a proxy: it reads the
background the prompt names back from the picture). ``SearchConfig.guards=None`` (the default) guards prompt
adherence at :data:`DEFAULT_PROMPT_BUDGET` when the model has a prompt metric; without one (a real checkpoint
without ``--clip``) only the task metric is guarded and the result records the prompt as unguarded. SSIM and
PSNR to the full-compute picture are measured on every policy's outputs either way and reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hgc_tune.errors import FidelityError, SearchError
from hgc_tune.fidelity._confidence import bonferroni_level
from hgc_tune.fidelity._evaluate import TaskEvaluator
from hgc_tune.fidelity._prompt import PromptEvaluator
from hgc_tune.fidelity._registry import METRICS, PROMPT_METRICS, Metric, lookup_metric
from hgc_tune.fidelity._scorer import ConstraintScorer, FidelityScorer

if TYPE_CHECKING:
    from hgc_tune.fidelity._clip import ClipScorer
    from hgc_tune.generation import GeneratedOutput
    from hgc_tune.search._config import SearchConfig

__all__ = [
    "DEFAULT_PROMPT_BUDGET",
    "GUARD_NAMES",
    "PROMPT",
    "REPORTED_METRICS",
    "Constraint",
    "ConstraintPlan",
    "plan_constraints",
    "prompt_metric_name",
]

PROMPT = "prompt"
"""The guard name that stands for the model's prompt-adherence metric (``clip`` or ``background``)."""

DEFAULT_PROMPT_BUDGET = 0.015
"""The prompt-adherence budget of the default guard (1.5 %, as the task metric's usual budget)."""

REPORTED_METRICS: tuple[str, ...] = ("ssim", "psnr")
"""Fidelity to the full-compute picture, measured on every policy's outputs and reported beside it."""

# What may be guarded: prompt adherence and the reference metrics. A task metric is the search's own metric
# (`--metric`, `--budget`); another condition type's task metric cannot score these outputs.
GUARD_NAMES: tuple[str, ...] = (
    PROMPT,
    *sorted(PROMPT_METRICS),
    *sorted(n for n, m in METRICS.items() if m.kind == "reference"),
)

# The shapes model's prompts name a background that no condition carries; the background reader reads it back.
_SHAPES_MODELS = frozenset({"shapes"})


def prompt_metric_name(model_name: str | None, clip: str | None) -> str | None:
    """The prompt-adherence metric a model gets: ``clip`` with a CLIP model, ``background`` for the shapes
    model, else ``None`` (the prompt is unguarded)."""
    if clip is not None:
        return "clip"
    if model_name in _SHAPES_MODELS:
        return "background"
    return None


@dataclass(frozen=True)
class Constraint:
    """One constraint of a search: a metric whose loss must stay within ``budget``.

    Attributes:
        metric: The metric (task, prompt or reference).
        budget: Its loss budget (``Metric.loss`` units: relative, or points for ``background``).
    """

    metric: Metric
    budget: float

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric.name,
            "kind": self.metric.kind,
            "loss_mode": self.metric.loss_mode,
            "budget": float(self.budget),
        }


@dataclass(frozen=True)
class ConstraintPlan:
    """The constraints of a search (the task metric first) and how they share the confidence.

    Attributes:
        constraints: The task metric's constraint, then the guards in the order given.
        confidence: The confidence with which every bound holds together (``0``: point estimates).
        prompt_metric: The prompt-adherence metric guarded, ``None`` when the prompt is unguarded.
        reported: Reference metrics measured beside the constraints (those that are not constraints).
    """

    constraints: tuple[Constraint, ...]
    confidence: float
    prompt_metric: str | None
    reported: tuple[str, ...] = REPORTED_METRICS

    @property
    def k(self) -> int:
        """The number of constraints."""
        return len(self.constraints)

    @property
    def level(self) -> float:
        """The confidence level of each bound (Bonferroni)."""
        return bonferroni_level(self.confidence, self.k)

    @property
    def budgets(self) -> tuple[float, ...]:
        return tuple(c.budget for c in self.constraints)

    @property
    def guards(self) -> tuple[Constraint, ...]:
        """The constraints besides the task metric's."""
        return self.constraints[1:]

    def to_json(self) -> dict[str, Any]:
        """The plan as the policy's provenance and the Pareto file record it (without measurements)."""
        return {
            "confidence": float(self.confidence),
            "k": self.k,
            "level": float(self.level),
            "sharing": "bonferroni",
            "prompt": self.prompt_metric,
            "items": [c.to_json() for c in self.constraints],
        }

    def signature(self) -> list[list[Any]]:
        """What a resumed study must have been made with: ``[[metric, budget], …]``."""
        return [[c.metric.name, float(c.budget)] for c in self.constraints]

    def scorer(
        self,
        condition_type: str | None,
        references: Sequence[GeneratedOutput],
        conditions: Sequence[Any],
        prompts: Sequence[str],
        clip: ClipScorer | None = None,
    ) -> ConstraintScorer:
        """A scorer of every constraint (and the reported metrics) against ``references``.

        Raises:
            SearchError: A metric cannot score these samples (a task metric that scores 0 at full compute,
                prompts that name no shapes background for ``background``, …).
        """

        def one(metric: Metric) -> FidelityScorer:
            try:
                if metric.kind == "prompt":
                    return FidelityScorer(PromptEvaluator(metric, clip), references, prompts)
                return FidelityScorer(TaskEvaluator(condition_type, metric), references, conditions)
            except FidelityError as e:
                raise SearchError(f"the constraint on {metric.name!r} cannot score these samples: {e}") from e

        return ConstraintScorer(
            [one(c.metric) for c in self.constraints],
            self.budgets,
            reported=[one(METRICS[name]) for name in self.reported],
        )


def plan_constraints(config: SearchConfig, metric: Metric, model_name: str | None) -> ConstraintPlan:
    """The constraints of a search: ``metric`` at ``config.budget``, then the guards.

    Raises:
        SearchError: A ``prompt`` (or ``clip``) guard without a prompt metric for the model, or a guard on
            the search's own metric.
    """
    prompt = prompt_metric_name(model_name, config.clip)
    guards = config.guards
    if guards is None:
        guards = ((PROMPT, DEFAULT_PROMPT_BUDGET),) if prompt is not None else ()
    constraints = [Constraint(metric, config.budget)]
    guarded_prompt = None
    for name, budget in guards:
        if name == PROMPT:
            if prompt is None:
                raise SearchError(
                    f"`--guard {name}={budget:g}`: model {model_name!r} has no prompt-adherence metric; pass "
                    "--clip PATH (a transformers CLIP model, e.g. openai/clip-vit-large-patch14) to guard it "
                    "by CLIP score."
                )
            name = prompt
        if name == "clip" and config.clip is None:
            raise SearchError(f"`--guard clip={budget:g}` needs a CLIP model: pass --clip PATH.")
        guarded = lookup_metric(name)
        if guarded.name == metric.name or any(c.metric.name == guarded.name for c in constraints):
            raise SearchError(
                f"`--guard {name}={budget:g}`: metric {guarded.name!r} is already a constraint of this "
                "search (each metric has one budget)."
            )
        if guarded.kind == "prompt":
            guarded_prompt = guarded.name
        constraints.append(Constraint(guarded, float(budget)))
    names = {c.metric.name for c in constraints}
    return ConstraintPlan(
        constraints=tuple(constraints),
        confidence=config.confidence,
        prompt_metric=guarded_prompt,
        reported=tuple(n for n in REPORTED_METRICS if n not in names),
    )
