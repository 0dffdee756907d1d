"""The policy model: frozen dataclasses that say which modules compute at which denoising steps.

Semantics (shared by executor, MAC accounting and search): a cacheable module M has a
compute set ``C_M ⊆ [0, S)`` with ``0 ∈ C_M``. At ``s ∈ C_M`` it runs and its output is stored; at
``s ∉ C_M`` it returns the output stored at its latest computed step, without running.

- ``blocks``: coarse entries, module key (``unet.down_blocks.1``, ``controlnet.mid_block``) -> compute steps.
- ``attention``: fine entries, ``…attn2`` key -> reuse windows ``[start, end)``: the module computes at
  ``start`` and reuses that output for ``start+1 … end-1``. Windows are converted to a compute set.
- ``controlnet``: the steps where the whole ControlNet runs; outside them ``reuse`` (last residuals) or
  ``drop`` (zero residuals, nothing computed).
- ``controlnets``: with several ControlNets (diffusers' ``MultiControlNetModel``), each one's own window, by
  the key of the whole net (``controlnet.nets.0``); their blocks are keyed ``controlnet.nets.0.mid_block``.
  The target then lists every ControlNet (class, structural fingerprint, condition type).
- ``guidance``: CFG runs in full for steps ``< cfg_until``; from ``cfg_until`` on, the U-Net and ControlNet
  run the conditional half only and it stands for both halves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hgc_tune.errors import PolicyFormatError
from hgc_tune.models._blocks import is_attention_key, is_whole_model_key

__all__ = [
    "SCHEMA_VERSION",
    "MAX_NUM_STEPS",
    "CONTROLNET_MODES",
    "ControlNetSpec",
    "PolicyTarget",
    "ReuseWindow",
    "ControlNetWindow",
    "GuidanceWindow",
    "LoraSpec",
    "Provenance",
    "Policy",
    "PolicyFile",
]

# 2: several ControlNets (``target.controlnets``, per-ControlNet ``controlnets`` windows).
# 3: several constraints (``provenance.constraints``: each metric's budget and bounds, the confidence and how
# the k bounds share it) and fidelity to the full-compute picture (``provenance.picture_fidelity``).
# Older files still load, and a file keeps its version when written back.
SCHEMA_VERSION = 3
# The most denoising steps a policy may declare: diffusers' schedulers refuse more inference steps than their
# 1000 training timesteps, and the bound keeps a file that declares 10**9 steps from allocating a compute set
# of that size (the schema states the same maximum).
MAX_NUM_STEPS = 1000
CONTROLNET_MODES: tuple[str, ...] = ("reuse", "drop")


def _steps(values: Iterable[Any], where: str, num_steps: int, *, need_zero: bool) -> tuple[int, ...]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise PolicyFormatError(f"{where}: steps must be integers, but got {v!r}.")
        if not 0 <= v < num_steps:
            raise PolicyFormatError(f"{where}: step {v} is out of range [0, {num_steps}).")
        out.append(v)
    if len(set(out)) != len(out):
        raise PolicyFormatError(f"{where}: steps must be unique, but got {sorted(out)}.")
    if need_zero and 0 not in out:
        raise PolicyFormatError(
            f"{where}: compute steps must include step 0 (nothing is cached before it), "
            f"but got {sorted(out)}."
        )
    return tuple(sorted(out))


@dataclass(frozen=True)
class ControlNetSpec:
    """One ControlNet of the target pipeline: its class, structural fingerprint and condition type."""

    class_name: str
    fingerprint: str
    condition_type: str | None = None

    def describe(self) -> str:
        return f"{self.class_name} {self.fingerprint} ({self.condition_type or 'any condition'})"


@dataclass(frozen=True)
class PolicyTarget:
    """The pipeline a policy was made for.

    ``controlnets`` lists each ControlNet in the order the pipeline runs them (one for a single ControlNet,
    one per net of a ``MultiControlNetModel``); empty where the policy does not record them (version-1
    files: one ControlNet, described by ``controlnet_class`` and ``fingerprint``). With several ControlNets,
    ``condition_type`` is their condition types joined by commas (``seg,depth``).
    """

    pipeline_class: str
    unet_class: str
    controlnet_class: str
    fingerprint: str
    num_steps: int
    scheduler: str
    condition_type: str | None = None
    model: str | None = None
    controlnets: tuple[ControlNetSpec, ...] = ()

    def __post_init__(self) -> None:
        n = self.num_steps
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NUM_STEPS:
            raise PolicyFormatError(
                f"target.num_steps must be an integer in [1, {MAX_NUM_STEPS}], but got {self.num_steps!r}."
            )
        object.__setattr__(self, "controlnets", tuple(self.controlnets))
        types = _condition_types(self.controlnets)
        if types is not None and len(types) > 1 and self.condition_type is not None:
            joined = ",".join(types)
            if self.condition_type != joined:
                raise PolicyFormatError(
                    f"target.condition_type must name the ControlNets' condition types in order, "
                    f"{joined!r}, but got {self.condition_type!r}."
                )

    @property
    def num_controlnets(self) -> int:
        """How many ControlNets the target pipeline runs (1 for a version-1 target with a ControlNet)."""
        if self.controlnets:
            return len(self.controlnets)
        return 1 if self.controlnet_class else 0

    def controlnet_keys(self) -> list[str]:
        """The keys of the whole ControlNets: ``controlnet``, or ``controlnet.nets.<i>`` for several."""
        if self.num_controlnets > 1 or self.controlnet_class == "MultiControlNetModel":
            return [f"controlnet.nets.{i}" for i in range(self.num_controlnets)]
        return ["controlnet"] if self.num_controlnets else []

    @property
    def component_classes(self) -> dict[str, str | None]:
        """Denoiser component -> model class name: the keys of the module layouts the policy is made of."""
        return {"unet": self.unet_class, "controlnet": self.controlnet_class or None}

    def mismatches(self, found: PolicyTarget, *, check_fingerprint: bool = True) -> list[str]:
        """What differs between this target and ``found`` (the target of the pipeline at hand), each as
        ``"field: policy has …, pipeline has …"``; empty if the policy fits.

        Classes and scheduler are compared first; the fingerprint only when the classes agree (for other
        classes it differs anyway and says nothing more). The condition type is compared when both name one
        (``None`` fits any condition). The number of steps is not compared: it is only known per call.
        """
        diffs = []
        if self.num_controlnets != found.num_controlnets:
            diffs.append(f"controlnets: policy is for {_count_nets(self)}, pipeline has {_count_nets(found)}")
        fields = ("pipeline_class", "unet_class", "controlnet_class", "scheduler")
        diffs += [
            f"{name}: policy has {getattr(self, name)!r}, pipeline has {getattr(found, name)!r}"
            for name in fields
            if getattr(self, name) != getattr(found, name)
        ]
        per_net = bool(self.controlnets and found.controlnets) and not diffs
        made_types = _condition_types(self.controlnets)
        found_types = _condition_types(found.controlnets)
        if per_net and made_types is not None and found_types is not None and made_types != found_types:
            if sorted(made_types) == sorted(found_types):
                # The same ControlNets in another order: say the order first, then each net's mismatch.
                diffs.append(
                    f"condition_type: policy is for the ControlNets in the order {','.join(made_types)!r}, "
                    f"pipeline runs them as {','.join(found_types)!r}"
                )
        if per_net:
            for i, (mine, theirs) in enumerate(zip(self.controlnets, found.controlnets)):
                if mine.class_name != theirs.class_name:
                    diffs.append(
                        f"controlnets[{i}].class: policy has {mine.class_name!r}, pipeline has "
                        f"{theirs.class_name!r}"
                    )
                elif check_fingerprint and mine.fingerprint != theirs.fingerprint:
                    diffs.append(
                        f"controlnets[{i}].fingerprint: policy has {mine.fingerprint!r}, pipeline has "
                        f"{theirs.fingerprint!r} (that ControlNet's configuration differs)"
                    )
                made, asked = mine.condition_type, theirs.condition_type
                if made is not None and asked is not None and made != asked:
                    diffs.append(
                        f"controlnets[{i}].condition_type: policy has {made!r}, pipeline has {asked!r}"
                    )
        if not diffs and check_fingerprint and self.fingerprint != found.fingerprint:
            diffs.append(
                f"fingerprint: policy has {self.fingerprint!r}, pipeline has {found.fingerprint!r} "
                "(the U-Net or ControlNet configuration differs: another architecture or checkpoint layout)"
            )
        made_for, asked = self.condition_type, found.condition_type
        if not per_net and made_for is not None and asked is not None and made_for != asked:
            diffs.append(f"condition_type: policy has {made_for!r}, pipeline has {asked!r}")
        return diffs


def _condition_types(controlnets: tuple[ControlNetSpec, ...]) -> list[str] | None:
    """The ControlNets' condition types in order, or ``None`` if one of them names none."""
    types = [c.condition_type for c in controlnets]
    return [t for t in types if t is not None] if None not in types else None


def _count_nets(target: PolicyTarget) -> str:
    n = target.num_controlnets
    noun = "ControlNet" if n == 1 else "ControlNets"
    if target.controlnets:
        return f"{n} {noun} ({', '.join(c.describe() for c in target.controlnets)})"
    return f"{n} {noun} ({target.controlnet_class})" if n else "no ControlNet"


@dataclass(frozen=True)
class ReuseWindow:
    """Steps ``[start, end)``: compute at ``start``, reuse its output up to ``end - 1``."""

    start: int
    end: int

    @property
    def reused_steps(self) -> range:
        return range(self.start + 1, self.end)


@dataclass(frozen=True)
class ControlNetWindow:
    """Where the whole ControlNet runs, and what it does elsewhere (``reuse`` or ``drop``)."""

    steps: tuple[int, ...]
    mode: str = "reuse"


@dataclass(frozen=True)
class GuidanceWindow:
    """Full CFG for steps ``< cfg_until``; conditional half only from ``cfg_until`` on."""

    cfg_until: int


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA adapter active on a pipeline: its adapter name, a 16-hex-digit digest of its weights (the
    adapter's own low-rank matrices, whatever it is named) and its scale."""

    name: str
    digest: str
    scale: float

    def describe(self) -> str:
        return f"LoRA {self.name!r} (digest {self.digest}, scale {self.scale:g})"


@dataclass(frozen=True)
class Provenance:
    """Where a policy came from and what it was measured to do. All fields optional.

    ``fidelity`` holds per-split measurements (``calibration_loss``, ``validation_loss_upper``,
    ``test_loss``, …); ``confidence`` is the one-sided level of the ``…_loss_upper`` bounds in it.
    ``lora``: the LoRA adapters active on the pipeline the policy was tuned on (empty: none).
    ``weights_digest`` and ``guidance_scale``: the weights (``hgc_tune.models._fingerprint.weights_digest``,
    the profile's) and the classifier-free guidance scale the figures were measured at (``None``: not
    recorded, as in files written before these fields existed).
    ``constraints`` (schema version 3): every constraint the policy was searched under, ``{"confidence": c,
    "k": k, "level": 1 − (1 − c)/k, "sharing": "bonferroni", "prompt": metric or None (None: the prompt was
    unguarded), "items": [{"metric", "kind", "loss_mode", "budget", "<split>_loss", "<split>_loss_upper",
    …}, …]}``; ``None``: not recorded (an older file: ``metric`` at ``budget`` was the only one).
    ``picture_fidelity`` (schema version 3): SSIM and PSNR of the policy's pictures to the full-compute ones
    per split (``test_ssim``, ``test_psnr``, …).
    ``prompt``: what guarded the prompt while the policy was tuned (``guarded``, ``metric``, and for a CLIP
    score the CLIP ``model`` and its weights ``digest``; :meth:`hgc_tune.fidelity.PromptMetric.to_json`);
    ``None``: not recorded (files written before it was).
    ``samples_per_call``: how many samples one pipeline call generated in the search that chose it (its
    outputs, and so its measured fidelity, depend on the batching).
    """

    source: str | None = None
    budget: float | None = None
    metric: str | None = None
    confidence: float | None = None
    fidelity: Mapping[str, float] = field(default_factory=dict)
    macs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    study: str | None = None
    trial: int | None = None
    hgc_tune_version: str | None = None
    diffusers_version: str | None = None
    lora: tuple[LoraSpec, ...] = ()
    weights_digest: str | None = None
    guidance_scale: float | None = None
    constraints: Mapping[str, Any] | None = None
    picture_fidelity: Mapping[str, float] = field(default_factory=dict)
    prompt: Mapping[str, Any] | None = None
    samples_per_call: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora", tuple(self.lora))
        if self.prompt is not None:
            object.__setattr__(self, "prompt", dict(self.prompt))


@dataclass(frozen=True)
class Policy:
    """One caching policy for one pipeline and condition type. Validated on construction."""

    target: PolicyTarget
    blocks: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    attention: Mapping[str, tuple[ReuseWindow, ...]] = field(default_factory=dict)
    controlnet: ControlNetWindow | None = None
    guidance: GuidanceWindow | None = None
    provenance: Provenance = field(default_factory=Provenance)
    name: str = "policy"
    controlnets: Mapping[str, ControlNetWindow] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.target.num_steps
        classes = self.target.component_classes
        blocks = {}
        for key, steps in self.blocks.items():
            if is_whole_model_key(key):
                entry = "`controlnet` window" if key == "controlnet" else "`controlnets` windows"
                raise PolicyFormatError(
                    f"blocks[{key!r}]: a whole ControlNet is set by the {entry} entry, not as a block."
                )
            if is_attention_key(key, classes):
                raise PolicyFormatError(f"blocks[{key!r}]: cross-attention modules belong in `attention`.")
            blocks[key] = _steps(steps, f"blocks[{key!r}]", s, need_zero=True)
        attention = {}
        for key, windows in self.attention.items():
            if not is_attention_key(key, classes):
                raise PolicyFormatError(
                    f"attention[{key!r}]: reuse windows are for cross-attention (`…attn2`) modules only."
                )
            ordered = sorted(windows, key=lambda w: (w.start, w.end))
            for w in ordered:
                if not (0 <= w.start < w.end <= s):
                    raise PolicyFormatError(
                        f"attention[{key!r}]: window [{w.start}, {w.end}) must satisfy "
                        f"0 <= start < end <= {s}."
                    )
            for a, b in zip(ordered, ordered[1:]):
                if b.start < a.end:
                    raise PolicyFormatError(
                        f"attention[{key!r}]: windows [{a.start}, {a.end}) and [{b.start}, {b.end}) overlap."
                    )
            attention[key] = tuple(ordered)
        if self.controlnet is not None:
            if self.controlnet.mode not in CONTROLNET_MODES:
                raise PolicyFormatError(
                    f"controlnet.mode must be one of {list(CONTROLNET_MODES)}, "
                    f"but got {self.controlnet.mode!r}."
                )
            steps = _steps(
                self.controlnet.steps, "controlnet.steps", s, need_zero=self.controlnet.mode == "reuse"
            )
            object.__setattr__(self, "controlnet", ControlNetWindow(steps, self.controlnet.mode))
        object.__setattr__(self, "controlnets", MappingProxyType(self._check_controlnets(s)))
        if self.guidance is not None:
            k = self.guidance.cfg_until
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= s:
                raise PolicyFormatError(f"guidance.cfg_until must be an integer in [1, {s}], but got {k!r}.")
        object.__setattr__(self, "blocks", MappingProxyType(dict(sorted(blocks.items()))))
        object.__setattr__(self, "attention", MappingProxyType(dict(sorted(attention.items()))))

    def _check_controlnets(self, s: int) -> dict[str, ControlNetWindow]:
        if not self.controlnets:
            return {}
        keys = self.target.controlnet_keys()
        if self.controlnet is not None:
            raise PolicyFormatError(
                "a policy sets either one `controlnet` window or per-ControlNet `controlnets` windows, "
                "not both."
            )
        if keys == ["controlnet"] or not keys:
            raise PolicyFormatError(
                f"controlnets: per-ControlNet windows need a target with several ControlNets, but the target "
                f"has {self.target.num_controlnets} ({self.target.controlnet_class or 'none'}); use the "
                "`controlnet` window."
            )
        out = {}
        for key, window in self.controlnets.items():
            if key not in keys:
                raise PolicyFormatError(
                    f"controlnets[{key!r}]: the target's ControlNets are {keys}; no window for another key."
                )
            if window.mode not in CONTROLNET_MODES:
                raise PolicyFormatError(
                    f"controlnets[{key!r}].mode must be one of {list(CONTROLNET_MODES)}, "
                    f"but got {window.mode!r}."
                )
            steps = _steps(window.steps, f"controlnets[{key!r}].steps", s, need_zero=window.mode == "reuse")
            out[key] = ControlNetWindow(steps, window.mode)
        return dict(sorted(out.items(), key=lambda kv: keys.index(kv[0])))

    def __reduce__(self) -> tuple:
        # ``blocks``, ``attention`` and ``controlnets`` are read-only views, which cannot be pickled: rebuild
        # (and re-validate) the policy from plain dicts, so copy.deepcopy and pickle work.
        fields = (self.blocks, self.attention)
        return (
            type(self),
            (
                self.target,
                *map(dict, fields),
                self.controlnet,
                self.guidance,
                self.provenance,
                self.name,
                dict(self.controlnets),
            ),
        )

    @property
    def controlnet_windows(self) -> dict[str, ControlNetWindow]:
        """Every ControlNet window by its whole ControlNet's key (``controlnet``, ``controlnet.nets.1``)."""
        if self.controlnet is not None:
            return {"controlnet": self.controlnet}
        return dict(self.controlnets)

    @property
    def num_steps(self) -> int:
        return self.target.num_steps

    def compute_sets(self) -> dict[str, frozenset[int]]:
        """Compute set of every cached module key (blocks, attention, and ``controlnet`` if windowed)."""
        every = frozenset(range(self.num_steps))
        out = {key: frozenset(steps) for key, steps in self.blocks.items()}
        for key, windows in self.attention.items():
            out[key] = every.difference(*(w.reused_steps for w in windows))
        for key, window in self.controlnet_windows.items():
            out[key] = frozenset(window.steps)
        return out

    def cfg_branches(self, step: int, cfg: bool) -> int:
        """How many CFG halves the denoisers compute at ``step`` (2 with full CFG, else 1)."""
        if not cfg:
            return 1
        return 1 if self.guidance is not None and step >= self.guidance.cfg_until else 2


@dataclass(frozen=True)
class PolicyFile:
    """A policy file's content: one policy per condition type (``None`` = any condition)."""

    policies: tuple[Policy, ...]
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.policies:
            raise PolicyFormatError("a policy file must hold at least one policy, but `policies` is empty.")
        if self.schema_version < 3:
            for p in self.policies:
                if p.provenance.constraints is not None or p.provenance.picture_fidelity:
                    raise PolicyFormatError(
                        f"policy {p.name!r} records several constraints or picture fidelity "
                        f"(provenance.constraints, provenance.picture_fidelity), which schema_version "
                        f"{self.schema_version} cannot hold; write it with schema_version 3."
                    )
        if self.schema_version == 1:
            for p in self.policies:
                if p.controlnets or p.target.controlnets:
                    raise PolicyFormatError(
                        f"policy {p.name!r} describes its ControlNets one by one (target.controlnets, "
                        "controlnets), which schema_version 1 cannot hold; write it with schema_version 2."
                    )
        seen: set[str | None] = set()
        for p in self.policies:
            ct = p.target.condition_type
            if ct in seen:
                raise PolicyFormatError(f"two policies in one file for condition_type={ct!r}.")
            seen.add(ct)

    @property
    def condition_types(self) -> list[str | None]:
        return [p.target.condition_type for p in self.policies]

    def select(self, condition_type: str | None = None) -> Policy:
        """The policy for ``condition_type`` (the only one if the file holds one and none is asked)."""
        if condition_type is None:
            if len(self.policies) == 1:
                return self.policies[0]
            raise PolicyFormatError(
                f"this policy file holds policies for condition types {self.condition_types}; "
                "pass condition_type."
            )
        for p in self.policies:
            if p.target.condition_type == condition_type:
                return p
        for p in self.policies:
            if p.target.condition_type is None:
                return p
        raise PolicyFormatError(
            f"no policy for condition_type={condition_type!r} in this file (it has {self.condition_types})."
        )
