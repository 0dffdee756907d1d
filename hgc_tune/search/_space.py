"""The search space: Optuna parameters, named after the policy fields they set, and the policy they build.

Parameters (only the ones that apply are suggested; the rest are conditional):

=============================  ===========================================================================
``blocks.schedule``            ``full`` (no block caching), ``interval`` (DeepCache-style uniform refresh),
                               ``threshold`` (Block Caching: each deep block computes when its accumulated
                               profiled change ``mean_rel_l1`` since its last computed step exceeds δ) or
                               ``phased`` (U-Net and ControlNet deep blocks each refresh every ``early``
                               steps before the switch step and every ``late`` steps from it on)
``blocks.branch``              skip-branch depth ``b``: U-Net ``down_blocks.(b+1)…``, ``mid_block``,
                               ``up_blocks.0…(L-2-b)`` and ControlNet ``down_blocks.(b+1)…``, ``mid_block``
                               are the "deep" blocks that may reuse (DeepCache's branch)
``blocks.interval``            refresh interval ``N`` of every deep block (steps ``0, N, 2N, …``)
``blocks.unet.threshold``      δ of the U-Net deep blocks (log scale, bounds from the profile)
``blocks.controlnet.threshold``  δ of the ControlNet deep blocks
``blocks.switch``              ``phased``: the first step of the late phase (it always computes)
``blocks.unet.early``          ``phased``: refresh interval of the U-Net deep blocks before the switch
``blocks.unet.late``           ``phased``: … from the switch on (so "dense early, sparse late" is 1 then 4)
``blocks.controlnet.early``    ``phased``: the ControlNet deep blocks' own intervals
``blocks.controlnet.late``
``attention.schedule``         ``full``, ``gate`` (T-GATE: every ``attn2`` computes for steps ``< g`` and
                               reuses from ``g`` on), ``threshold`` (per ``attn2``, accumulated drift of its
                               attention map ``mean_map_rel_l1`` against δ, turned into reuse windows) or
                               ``phased`` (every ``attn2`` refreshes every ``early`` steps before the switch
                               step and every ``late`` steps from it on)
``attention.gate_step``        ``g``
``attention.threshold``        δ of the cross-attention drift
``attention.switch``           ``phased``: the first step of the late phase
``attention.early``            ``phased``: refresh interval before the switch
``attention.late``             ``phased``: refresh interval from the switch on
``controlnet.steps``           ``k``: the ControlNet computes at steps ``0…k-1`` (``k = S``: always)
``controlnet.mode``            after the window: ``reuse`` the last residuals or ``drop`` them
``controlnet.nets.<i>.steps``  with several ControlNets (``MultiControlNetModel``) each has its own window,
``controlnet.nets.<i>.mode``   and its deep blocks their own ``blocks.controlnet.nets.<i>.threshold``,
                               ``….early`` and ``….late`` (in place of the ``blocks.controlnet.…`` ones)
``guidance.cfg_until``         full CFG before this step, conditional branch only from it on (``S``: off)
=============================  ===========================================================================

Block Caching: Wimbauer et al., https://arxiv.org/abs/2312.03209; DeepCache: Ma et al.,
https://arxiv.org/abs/2312.00858; T-GATE: Zhang et al., https://arxiv.org/abs/2404.02747.
The peers these papers describe are points of this space (:meth:`PolicySpace.peer_params`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from hgc_tune.errors import PolicyError, SearchError
from hgc_tune.models._blocks import deep_block_keys, is_attention_key, is_whole_model_key, max_branch
from hgc_tune.policy import (
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    PolicyTarget,
    Provenance,
    ReuseWindow,
    peer_policy,
)
from hgc_tune.policy._peers import peer_params

if TYPE_CHECKING:
    from typing import TypeAlias

    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import Trial

    from hgc_tune.profile import Profile

    # The distributions a space's parameters have.
    Distribution: TypeAlias = CategoricalDistribution | IntDistribution | FloatDistribution

__all__ = [
    "ATTENTION_SCHEDULES",
    "BLOCK_SCHEDULES",
    "FULL_COMPUTE",
    "PolicySpace",
    "default_peer_names",
    "is_full_compute",
    "phased_compute_steps",
    "policy_key",
    "threshold_compute_steps",
    "windows_from_compute_steps",
]

BLOCK_SCHEDULES: tuple[str, ...] = ("full", "interval", "threshold", "phased")
ATTENTION_SCHEDULES: tuple[str, ...] = ("full", "gate", "threshold", "phased")
CONTROLNET_MODES: tuple[str, ...] = ("reuse", "drop")
# The name of the no-caching point, enqueued first as the anchor of the Pareto front.
FULL_COMPUTE = "full-compute"


def threshold_compute_steps(change: Sequence[float], delta: float) -> tuple[int, ...]:
    """Block Caching's schedule: compute when the change accumulated since the last computed step exceeds δ.

    ``change[s]`` is the profiled relative change of the module's output from step ``s-1`` to ``s``
    (``change[0]`` is ignored). Reusing the output of step ``c`` at step ``s`` costs roughly
    ``sum(change[c+1 .. s])``; the module computes at the first step where that sum exceeds ``delta`` and
    the sum starts again from zero (Wimbauer et al., https://arxiv.org/abs/2312.03209).

    Args:
        change: Per-step change, length ``S``; NaN counts as 0.
        delta: The threshold δ >= 0.

    Returns:
        The sorted compute steps; always holds step 0.

    Example:
        >>> threshold_compute_steps([0.0, 0.5, 0.2, 0.2, 0.6], 0.35)
        (0, 1, 3, 4)
    """
    steps = [0]
    accumulated = 0.0
    for s in range(1, len(change)):
        value = float(change[s])
        accumulated += 0.0 if math.isnan(value) else value
        if accumulated > delta:
            steps.append(s)
            accumulated = 0.0
    return tuple(steps)


def phased_compute_steps(num_steps: int, switch: int, early: int, late: int) -> tuple[int, ...]:
    """A two-phase refresh schedule: every ``early`` steps before ``switch``, every ``late`` steps from it.

    The late phase starts with a computed step at ``switch``, so each phase is a uniform schedule of its own
    (``early = late = N`` with ``switch`` a multiple of ``N`` is DeepCache's uniform interval ``N``).

    Example:
        >>> phased_compute_steps(20, 8, 1, 4)  # dense early, sparse late
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16)
    """
    if not (1 <= switch <= num_steps and early >= 1 and late >= 1):
        raise SearchError(
            f"a phased schedule needs 1 <= switch <= num_steps and intervals >= 1, but got "
            f"num_steps={num_steps}, switch={switch}, early={early}, late={late}."
        )
    return tuple(sorted({*range(0, switch, early), *range(switch, num_steps, late)}))


def windows_from_compute_steps(steps: Iterable[int], num_steps: int) -> tuple[ReuseWindow, ...]:
    """The reuse windows whose compute set is ``steps`` (which must hold 0).

    Example:
        >>> windows_from_compute_steps([0, 1, 4], 6)
        (ReuseWindow(start=1, end=4), ReuseWindow(start=4, end=6))
    """
    ordered = sorted(set(steps))
    if not ordered or ordered[0] != 0:
        raise SearchError(f"compute steps must include step 0, but got {ordered}.")
    windows = []
    for start, end in zip(ordered, [*ordered[1:], num_steps]):
        if end - start > 1:
            windows.append(ReuseWindow(start, end))
    return tuple(windows)


def default_peer_names(num_steps: int, *, cfg: bool = True, controlnet: bool = True) -> tuple[str, ...]:
    """The peer schedules enqueued by default, scaled to ``num_steps``.

    DeepCache with ``N = 3`` and ``N = 5`` on the shallowest branch, T-GATE gated at half the steps (with and
    without truncated CFG), and the ControlNet window of the first half of the steps with the ControlNet
    dropped afterwards. For 20 steps this is :data:`hgc_tune.policy._peers.DEFAULT_PEERS`.

    Example:
        >>> default_peer_names(20)
        ('deepcache-n3-b0', 'deepcache-n5-b0', 'tgate-g10', 'tgate-g10-cfg', 'cnwin-k10-drop')
    """
    half = max(1, num_steps // 2)
    names = ["deepcache-n3-b0", "deepcache-n5-b0", f"tgate-g{half}"]
    if cfg:
        names.append(f"tgate-g{half}-cfg")
    if controlnet:
        names.append(f"cnwin-k{half}-drop")
    return tuple(names)


def is_full_compute(policy: Policy) -> bool:
    """Whether ``policy`` computes every module at every step with full CFG."""
    every = frozenset(range(policy.num_steps))
    sets = policy.compute_sets()
    return all(steps == every for steps in sets.values()) and all(
        policy.cfg_branches(s, True) == 2 for s in range(policy.num_steps)
    )


def policy_key(policy: Policy) -> str:
    """A digest of what a policy computes (compute sets, ControlNet mode, CFG branches), not its name.

    Two policies with the same key produce the same outputs, so a trial can reuse the other's result.
    """
    every = frozenset(range(policy.num_steps))
    sets = {k: sorted(v) for k, v in sorted(policy.compute_sets().items()) if v != every}
    modes = {k: w.mode for k, w in policy.controlnet_windows.items() if k in sets}
    # One ControlNet keeps the key's original form, so stored studies keep their keys.
    mode: Any = modes.get("controlnet") if set(modes) <= {"controlnet"} else modes
    data = {
        "steps": policy.num_steps,
        "sets": sets,
        "controlnet_mode": mode,
        "cfg": [policy.cfg_branches(s, True) for s in range(policy.num_steps)],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


def _curve(values: Iterable[float]) -> tuple[float, ...]:
    out = []
    for v in values:
        v = float(v)
        out.append(0.0 if math.isnan(v) or v < 0 else v)
    return tuple(out)


def _threshold_bounds(curves: Iterable[Sequence[float]]) -> tuple[float, float]:
    """δ range of a group: below the smallest single-step change every step computes; above the largest
    total change only step 0 does. Anything outside adds no new schedules."""
    curves = [c[1:] for c in curves]
    positive = [v for c in curves for v in c if v > 0]
    if not positive:
        return 1e-6, 1.0
    low = min(positive) * 0.999
    high = max(sum(c) for c in curves) * 1.001
    if not high > low:
        high = 2.0 * low
    return float(low), float(high)


@dataclass(frozen=True)
class PolicySpace:
    """The search space of one pipeline and profile, and the map from parameters to a :class:`Policy`.

    Build it with :meth:`from_profile`; :meth:`suggest` asks an Optuna trial for parameters, :meth:`build`
    turns parameters into a policy, :meth:`peer_params` gives the parameters of a named peer schedule.

    Attributes:
        target: The policy target (pipeline, steps, condition type).
        module_keys: The pipeline's cacheable module keys (blocks, ``controlnet``, ``attn2`` modules).
        block_change: Per block key, the profiled change per step (``mean_rel_l1``), length ``S``.
        attention_change: Per ``attn2`` key, the profiled drift per step (``mean_map_rel_l1`` by default).
        cfg: Whether generation uses classifier-free guidance (enables ``guidance.cfg_until``).
        guidance: Whether the guidance window is searched at all.
    """

    target: PolicyTarget
    module_keys: tuple[str, ...]
    block_change: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    attention_change: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    cfg: bool = True
    guidance: bool = True

    def __post_init__(self) -> None:
        s = self.target.num_steps
        if s < 2:
            raise SearchError(
                f"a policy search needs at least 2 denoising steps, but the target has num_steps={s}."
            )
        object.__setattr__(self, "module_keys", tuple(self.module_keys))
        for name in ("block_change", "attention_change"):
            curves = {k: _curve(v) for k, v in getattr(self, name).items()}
            for key, curve in curves.items():
                if len(curve) != s:
                    raise SearchError(f"{name}[{key!r}] must have {s} steps, but has {len(curve)}.")
            object.__setattr__(self, name, MappingProxyType(curves))
        missing = [k for k in self.deep_candidates if k not in self.block_change]
        missing += [k for k in self.attention_keys if k not in self.attention_change]
        if missing:
            raise SearchError(f"the profile has no change statistics for {missing[:4]}; profile again.")

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        target: PolicyTarget,
        *,
        guidance: bool = True,
        attention_stat: str = "map_rel_l1",
    ) -> PolicySpace:
        """The space of a profiled pipeline: its module keys and change curves.

        Args:
            profile: A :class:`hgc_tune.profile.Profile`.
            target: The policy target (``target.num_steps`` must equal the profile's steps).
            guidance: Search the guidance window too (only when the profile ran with CFG).
            attention_stat: ``map_rel_l1``, ``out_rel_l1`` or ``js`` (the ``mean_`` aggregate is read).
        """
        block_keys = [k for k in profile.block_keys if not is_whole_model_key(k)]
        attention_keys = list(profile.attention_keys)
        cfg = bool(profile.meta.get("cfg", profile.guidance_scale > 1.0))
        return cls(
            target=target,
            module_keys=(*profile.block_keys, *attention_keys),
            block_change={k: tuple(np.asarray(profile.stat("mean_rel_l1", k)).tolist()) for k in block_keys},
            attention_change={
                k: tuple(np.asarray(profile.stat(f"mean_{attention_stat}", k)).tolist())
                for k in attention_keys
            },
            cfg=cfg,
            guidance=guidance and cfg,
        )

    # -- structure ---------------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.target.num_steps

    @property
    def has_controlnet(self) -> bool:
        return bool(self.controlnet_keys)

    @property
    def controlnet_keys(self) -> list[str]:
        """The keys of the whole ControlNets: ``controlnet``, or ``controlnet.nets.<i>`` for several. Each
        has its own window parameters, ``<key>.steps`` and ``<key>.mode``."""
        return [k for k in self.module_keys if is_whole_model_key(k)]

    def block_group(self, key: str) -> str:
        """The group whose parameters schedule deep block ``key``: ``unet`` or its whole ControlNet's key."""
        owners = [c for c in self.controlnet_keys if key.startswith(c + ".")]
        return max(owners, key=len) if owners else key.split(".", 1)[0]

    @property
    def block_groups(self) -> list[str]:
        """``unet``, then each ControlNet that has deep blocks."""
        groups = {self.block_group(k) for k in self.deep_candidates}
        return ["unet", *(c for c in self.controlnet_keys if c in groups)]

    @property
    def attention_keys(self) -> list[str]:
        classes = self.target.component_classes
        return [k for k in self.module_keys if is_attention_key(k, classes)]

    @property
    def max_branch(self) -> int:
        """The deepest skip branch: ``min(#down, #up) - 1`` of the U-Net."""
        deepest = max_branch(self.module_keys, self.target.unet_class)
        if deepest < 0:
            raise SearchError("the pipeline's U-Net has no down and up blocks among its module keys.")
        return deepest

    @property
    def deep_candidates(self) -> list[str]:
        """Every block that is deep for some branch."""
        return deep_block_keys(self.module_keys, 0, self.target.component_classes)

    def threshold_bounds(self, group: str) -> tuple[float, float]:
        """``(low, high)`` of the δ of ``group`` (``unet``, a ControlNet's key or ``attention``)."""
        if group == "attention":
            return _threshold_bounds(self.attention_change[k] for k in self.attention_keys)
        return _threshold_bounds(
            self.block_change[k] for k in self.deep_candidates if self.block_group(k) == group
        )

    def distributions(self) -> dict[str, Distribution]:
        """Every parameter this space may suggest, with its Optuna distribution."""
        # optuna here and below, not at the top: the search command's argument checks import
        # hgc_tune.search (its SearchConfig) and must stay fast.
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        s = self.num_steps
        out: dict[str, Distribution] = {
            "blocks.schedule": CategoricalDistribution(BLOCK_SCHEDULES),
            "blocks.branch": IntDistribution(0, self.max_branch),
            "blocks.interval": IntDistribution(2, s),
        }
        groups = self.block_groups
        for group in groups:
            out[f"blocks.{group}.threshold"] = FloatDistribution(*self.threshold_bounds(group), log=True)
        out["blocks.switch"] = IntDistribution(1, s - 1)
        for group in groups:
            out[f"blocks.{group}.early"] = IntDistribution(1, s)
            out[f"blocks.{group}.late"] = IntDistribution(1, s)
        if self.attention_keys:
            out["attention.schedule"] = CategoricalDistribution(ATTENTION_SCHEDULES)
            out["attention.gate_step"] = IntDistribution(1, s - 1)
            out["attention.threshold"] = FloatDistribution(*self.threshold_bounds("attention"), log=True)
            out["attention.switch"] = IntDistribution(1, s - 1)
            out["attention.early"] = IntDistribution(1, s)
            out["attention.late"] = IntDistribution(1, s)
        for key in self.controlnet_keys:
            out[f"{key}.steps"] = IntDistribution(0, s)
            out[f"{key}.mode"] = CategoricalDistribution(CONTROLNET_MODES)
        if self.guidance:
            out["guidance.cfg_until"] = IntDistribution(1, s)
        return out

    # -- parameters -> policy ------------------------------------------------------------------------------
    def suggest(self, trial: Trial) -> dict[str, Any]:
        """Ask ``trial`` (an ``optuna.Trial``) for the parameters that apply and return them."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        dists = self.distributions()
        params: dict[str, Any] = {}

        def ask(name: str) -> Any:
            d = dists[name]
            if isinstance(d, CategoricalDistribution):
                value = trial.suggest_categorical(name, d.choices)
            elif isinstance(d, IntDistribution):
                value = trial.suggest_int(name, d.low, d.high)
            else:
                value = trial.suggest_float(name, d.low, d.high, log=d.log)
            params[name] = value
            return value

        schedule = ask("blocks.schedule")
        if schedule != "full":
            ask("blocks.branch")
            if schedule == "interval":
                ask("blocks.interval")
            elif schedule == "threshold":
                for group in self.block_groups:
                    ask(f"blocks.{group}.threshold")
            else:
                ask("blocks.switch")
                for group in self.block_groups:
                    ask(f"blocks.{group}.early")
                    ask(f"blocks.{group}.late")
        if "attention.schedule" in dists:
            schedule = ask("attention.schedule")
            if schedule == "gate":
                ask("attention.gate_step")
            elif schedule == "threshold":
                ask("attention.threshold")
            elif schedule == "phased":
                for name in ("attention.switch", "attention.early", "attention.late"):
                    ask(name)
        for key in self.controlnet_keys:
            if ask(f"{key}.steps") < self.num_steps:
                ask(f"{key}.mode")
        if "guidance.cfg_until" in dists:
            ask("guidance.cfg_until")
        return params

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`SearchError` if a parameter is unknown or outside its distribution."""
        from optuna.distributions import CategoricalDistribution

        dists = self.distributions()
        for name, value in params.items():
            if name not in dists:
                raise SearchError(f"`{name}` is not a parameter of this search space ({sorted(dists)}).")
            d = dists[name]
            ok = value in d.choices if isinstance(d, CategoricalDistribution) else d.low <= value <= d.high
            if not ok:
                raise SearchError(f"parameter {name}={value!r} lies outside its distribution {d}.")

    def build(
        self, params: Mapping[str, Any], *, name: str = "policy", provenance: Provenance | None = None
    ) -> Policy:
        """The policy the parameters describe (absent parameters mean "no caching" for their part)."""
        s = self.num_steps
        blocks: dict[str, tuple[int, ...]] = {}
        schedule = params.get("blocks.schedule", "full")
        if schedule not in BLOCK_SCHEDULES:
            raise SearchError(
                f"`blocks.schedule` must be one of {list(BLOCK_SCHEDULES)}, but got {schedule!r}."
            )
        if schedule != "full":
            branch = int(params["blocks.branch"])
            deep = deep_block_keys(self.module_keys, branch, self.target.component_classes)
            if schedule == "interval":
                refresh = tuple(range(0, s, int(params["blocks.interval"])))
                blocks = {k: refresh for k in deep} if len(refresh) < s else {}
            elif schedule == "phased":
                switch = int(params["blocks.switch"])
                for key in deep:
                    group = self.block_group(key)
                    steps = phased_compute_steps(
                        s, switch, int(params[f"blocks.{group}.early"]), int(params[f"blocks.{group}.late"])
                    )
                    if len(steps) < s:
                        blocks[key] = steps
            else:
                for key in deep:
                    delta = float(params[f"blocks.{self.block_group(key)}.threshold"])
                    steps = threshold_compute_steps(self.block_change[key], delta)
                    if len(steps) < s:
                        blocks[key] = steps
        attention: dict[str, tuple[ReuseWindow, ...]] = {}
        schedule = params.get("attention.schedule", "full")
        if schedule not in ATTENTION_SCHEDULES:
            raise SearchError(
                f"`attention.schedule` must be one of {list(ATTENTION_SCHEDULES)}, but got {schedule!r}."
            )
        if schedule == "gate":
            gate = int(params["attention.gate_step"])
            if gate < s:
                attention = {k: (ReuseWindow(gate - 1, s),) for k in self.attention_keys}
        elif schedule == "phased":
            steps = phased_compute_steps(
                s,
                int(params["attention.switch"]),
                int(params["attention.early"]),
                int(params["attention.late"]),
            )
            windows = windows_from_compute_steps(steps, s)
            attention = {k: windows for k in self.attention_keys} if windows else {}
        elif schedule == "threshold":
            delta = float(params["attention.threshold"])
            for key in self.attention_keys:
                windows = windows_from_compute_steps(
                    threshold_compute_steps(self.attention_change[key], delta), s
                )
                if windows:
                    attention[key] = windows
        controlnet_windows: dict[str, ControlNetWindow] = {}
        for key in self.controlnet_keys:
            k = int(params.get(f"{key}.steps", s))
            if k < s:
                mode = params[f"{key}.mode"]
                # A reused ControlNet needs one computed step to reuse; k = 0 means "as early as possible".
                k = max(k, 1) if mode == "reuse" else k
                if k < s:
                    controlnet_windows[key] = ControlNetWindow(tuple(range(k)), mode)
        controlnet = controlnet_windows.pop("controlnet", None)
        cfg_until = int(params.get("guidance.cfg_until", s))
        guidance = GuidanceWindow(cfg_until) if cfg_until < s else None
        return Policy(
            target=self.target,
            blocks=blocks,
            attention=attention,
            controlnet=controlnet,
            controlnets=controlnet_windows,
            guidance=guidance,
            name=name,
            provenance=provenance or Provenance(source="search"),
        )

    # -- peers -----------------------------------------------------------------------------------------
    def peer_params(self, name: str) -> dict[str, Any]:
        """The parameters of a named peer schedule: every part at "no caching", then the peer's own
        parameters (:func:`hgc_tune.policy._peers.peer_params`).

        Names: ``full-compute``, ``deepcache-n3-b0``, ``tgate-g10[-cfg]``, ``cnwin-k10-drop``; :meth:`build`
        of the parameters computes exactly what the peer generator's policy computes.

        Raises:
            SearchError: An unknown name, or a peer this space cannot express (e.g. truncated CFG when the
                guidance window is not searched).
        """
        s = self.num_steps
        params: dict[str, Any] = {"blocks.schedule": "full"}
        if self.attention_keys:
            params["attention.schedule"] = "full"
        for key in self.controlnet_keys:
            params[f"{key}.steps"] = s
        if self.guidance:
            params["guidance.cfg_until"] = s
        if name == FULL_COMPUTE:
            return params
        try:
            peer_policy(name, self.target, self.module_keys)
        except PolicyError as e:
            raise SearchError(f"peer {name!r} does not fit this pipeline: {e}") from e
        peer = peer_params(name, s)
        if "guidance.cfg_until" in peer and not self.guidance:
            raise SearchError(
                f"peer {name!r} truncates CFG, but this search does not search the guidance window "
                "(no CFG in the profile, or search_guidance=False)."
            )
        params.update(self._per_controlnet(peer))
        self.check_params(params)
        return params

    def _per_controlnet(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Parameters named for one ControlNet (``controlnet.steps``, ``blocks.controlnet.late``) set for each
        ControlNet of a several-ControlNet space (``controlnet.nets.0.steps``, …)."""
        if self.controlnet_keys == ["controlnet"] or not self.controlnet_keys:
            return dict(params)
        out: dict[str, Any] = {}
        for name, value in params.items():
            if name.startswith("controlnet."):
                out.update({f"{key}.{name[len('controlnet.') :]}": value for key in self.controlnet_keys})
            elif name.startswith("blocks.controlnet."):
                rest = name[len("blocks.controlnet.") :]
                out.update({f"blocks.{key}.{rest}": value for key in self.controlnet_keys})
            else:
                out[name] = value
        return out
