"""Analytic MACs of a whole generation under a policy: a per-module MAC table × compute sets.

At step ``s`` each denoiser (U-Net, ControlNet) computes ``b(s) = policy.cfg_branches(s, cfg)`` CFG branches
of ``batch`` images. Its cost is its full cost minus the cost of every cached module skipped at ``s``,
counting only the outermost skipped module of a nest (a skipped block's skipped ``attn2`` is not subtracted
twice; a computed block's skipped ``attn2`` is). The whole ControlNet outside its window costs nothing,
whether its residuals are reused or dropped. The text encoder and VAE decoder cost what
``table.generation_macs`` says, under any policy: caching does not touch them. Totals are
``generation_macs``' totals less what the policy saves, so full compute reproduces them exactly.

:func:`mac_savings_by_mechanism` splits what a policy saves among its mechanisms, from the same walk, so
its parts add up to ``full - policy`` exactly.

The table is anything with the :class:`MacTableLike` interface (``hgc_tune.macs.MacTable``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from hgc_tune.errors import PolicyError
from hgc_tune.policy._model import Policy, PolicyTarget, Provenance

__all__ = [
    "MAC_CONVENTIONS",
    "MECHANISMS",
    "MECHANISM_LABELS",
    "MacSavings",
    "MacTableLike",
    "mac_savings_by_mechanism",
    "policy_macs",
    "policy_step_macs",
    "macs_provenance",
    "full_compute_policy",
]

# Kept here rather than imported from hgc_tune.macs, which imports torch: policy MACs need none.
MAC_CONVENTIONS: tuple[str, ...] = ("paper", "complete")
# The components that run once per denoising step, and that a policy can make cheaper.
_DENOISERS: tuple[str, ...] = ("controlnet", "unet")
# generation_macs() parts run once per generation, whatever the policy.
_ONCE_PARTS: tuple[str, ...] = ("text_encoder", "vae_decoder")
# The mechanisms a policy saves MACs with, in the order skipped MACs are attributed to them (see
# :func:`mac_savings_by_mechanism`).
MECHANISMS: tuple[str, ...] = (
    "guidance_window",
    "controlnet_window",
    "controlnet_blocks",
    "unet_blocks",
    "cross_attention",
)
# Mechanism -> its name in tables and figures, in the order skipped MACs are attributed.
MECHANISM_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "guidance_window": "guidance window",
        "controlnet_window": "ControlNet window",
        "controlnet_blocks": "ControlNet blocks",
        "unet_blocks": "U-Net blocks",
        "cross_attention": "cross-attention reuse",
    }
)


class MacTableLike(Protocol):
    """What :func:`policy_macs` needs of a MAC table."""

    def macs(self, key: str, convention: str) -> int:
        """MACs of one forward of module ``key`` for one image and one CFG branch."""
        ...

    def generation_macs(self, steps: int, cfg: bool, convention: str, batch: int) -> dict[str, Any]:
        """MACs of a whole full-compute generation; has at least ``"total"`` (see :func:`policy_macs`)."""
        ...


def _check_args(cfg: bool, batch: int, convention: str) -> None:
    if convention not in MAC_CONVENTIONS:
        raise PolicyError(
            f"`convention` must be one of {list(MAC_CONVENTIONS)}, but got convention={convention!r}."
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise PolicyError(f"`batch` must be a positive integer, but got batch={batch!r}.")
    if not isinstance(cfg, bool):
        raise PolicyError(f"`cfg` must be a bool, but got cfg={cfg!r}.")


def _outermost(keys: list[str]) -> list[str]:
    """The keys not nested inside another key of the list (``a.b`` is inside ``a``)."""
    chosen = set(keys)
    return [k for k in keys if not any(k.startswith(a + ".") for a in chosen if a != k)]


def _component(key: str) -> str:
    return key.split(".", 1)[0]


def _included(gen: Mapping[str, Any]) -> list[str]:
    """The denoisers whose MACs ``generation_macs``' total counts (both when it does not say)."""
    return [d for d in gen.get("includes", _DENOISERS) if d in _DENOISERS]


def _skipped(policy: Policy, table: MacTableLike, convention: str) -> tuple[dict[str, int], list[list[str]]]:
    """The walk both MAC functions share: the per-image cost of each denoiser and cached module, and per step
    the modules skipped there, outermost of each nest only (what is skipped inside them is not counted again).
    """
    sets = policy.compute_sets()
    cost = {key: table.macs(key, convention) for key in (*_DENOISERS, *sets)}
    skipped = [
        _outermost(sorted(k for k, steps in sets.items() if s not in steps)) for s in range(policy.num_steps)
    ]
    return cost, skipped


def policy_step_macs(
    policy: Policy, table: MacTableLike, *, cfg: bool = True, batch: int = 1, convention: str = "paper"
) -> list[dict[str, int]]:
    """Per-step MACs of each denoiser under ``policy``.

    Args:
        policy: The policy.
        table: The per-module MAC table of the pipeline the policy targets.
        cfg: Whether the generation uses classifier-free guidance (two branches per step).
        batch: Images per prompt batch.
        convention: ``paper`` or ``complete`` (see :data:`MAC_CONVENTIONS`).

    Returns:
        One ``{"unet": …, "controlnet": …}`` per step.
    """
    _check_args(cfg, batch, convention)
    cost, skipped = _skipped(policy, table, convention)
    out = []
    for s, keys in enumerate(skipped):
        per_image = {d: cost[d] for d in _DENOISERS}
        for key in keys:
            per_image[_component(key)] -= cost[key]
        n = policy.cfg_branches(s, cfg) * batch
        out.append({d: n * v for d, v in per_image.items()})
    return out


def policy_macs(
    policy: Policy, table: MacTableLike, *, cfg: bool = True, batch: int = 1, convention: str = "paper"
) -> dict[str, float]:
    """Analytic MACs of one generation under ``policy`` against full compute.

    ``full`` is ``table.generation_macs(...)["total"]`` (for :class:`hgc_tune.macs.MacTable`: the U-Net and
    the ControlNet, as the HGC paper counts); ``policy`` is the same total less what the policy saves in the
    denoisers it includes (``generation_macs``' ``includes``; both denoisers when it does not say). So an
    all-compute policy has ``policy == full``. Parts that run once per generation and that no policy changes
    (``text_encoder``, ``vae_decoder``) are copied beside the total, and ``*_with_all`` totals add them when
    ``generation_macs`` reports ``total_with_all``.

    Args:
        policy: The policy.
        table: The per-module MAC table of the pipeline the policy targets (``hgc_tune.macs.MacTable``).
        cfg: Whether the generation uses classifier-free guidance.
        batch: Images per generation.
        convention: ``paper`` (fvcore's count, no attention matmuls) or ``complete``.

    Returns:
        A flat ``dict`` of numbers: ``full``, ``policy``, ``reduction`` (``1 - policy/full``), ``ratio``
        (``full/policy``), ``full.unet``, ``policy.unet``, ``full.controlnet``, ``policy.controlnet``, and
        where ``generation_macs`` has them ``text_encoder``, ``vae_decoder``, ``full_with_all``,
        ``policy_with_all``.

    Raises:
        PolicyError: Bad ``cfg``/``batch``/``convention``, or a table whose generation MACs disagree with
            its per-module MACs.

    Example:
        >>> from hgc_tune.macs import count_pipeline_macs
        >>> from hgc_tune.models import load_pipeline
        >>> from hgc_tune.policy import load_policy
        >>> table = count_pipeline_macs(load_pipeline("tiny"), height=64, width=64, model_name="tiny")
        >>> policy = load_policy("policies/tiny-deepcache-n3-b0.json").select()
        >>> f"{policy_macs(policy, table)['reduction']:.0%} fewer MACs"
        '35% fewer MACs'
    """
    steps = policy_step_macs(policy, table, cfg=cfg, batch=batch, convention=convention)
    per_step = policy.num_steps * (2 if cfg else 1) * batch
    full_parts = {d: per_step * table.macs(d, convention) for d in _DENOISERS}
    policy_parts = {d: sum(step[d] for step in steps) for d in _DENOISERS}
    gen = table.generation_macs(policy.num_steps, cfg=cfg, convention=convention, batch=batch)
    for d in _DENOISERS:
        if d in gen and gen[d] != full_parts[d]:
            raise PolicyError(
                f"the MAC table is inconsistent: generation_macs gives {d}={gen[d]} for {policy.num_steps} "
                f"steps (cfg={cfg}, batch={batch}), but {per_step} forwards of {table.macs(d, convention)} "
                f"MACs make {full_parts[d]}."
            )
    includes = _included(gen)
    saved_in_total = sum(full_parts[d] - policy_parts[d] for d in includes)
    saved = sum(full_parts[d] - policy_parts[d] for d in _DENOISERS)
    full = gen["total"]
    total = full - saved_in_total
    out: dict[str, float] = {
        "full": full,
        "policy": total,
        "reduction": 1.0 - total / full if full else 0.0,
        "ratio": full / total if total else float("inf"),
    }
    for d in sorted(_DENOISERS, reverse=True):
        out[f"full.{d}"] = full_parts[d]
        out[f"policy.{d}"] = policy_parts[d]
    for part in _ONCE_PARTS:
        if part in gen:
            out[part] = gen[part]
    if "total_with_all" in gen:
        out["full_with_all"] = gen["total_with_all"]
        out["policy_with_all"] = gen["total_with_all"] - saved
    return out


@dataclass(frozen=True)
class MacSavings:
    """What a policy saves against full compute, split among its mechanisms (see
    :func:`mac_savings_by_mechanism`). ``sum(parts.values()) == full - policy``, exactly.

    Attributes:
        convention: ``paper`` or ``complete``.
        full: MACs of the generation at full compute (:func:`policy_macs`' ``full``).
        policy: MACs under the policy (:func:`policy_macs`' ``policy``).
        parts: Mechanism -> MACs it saves, for every name of :data:`MECHANISMS`, in that order.
        controlnet_windows: Whole ControlNet's key (``controlnet``, ``controlnet.nets.1``) -> MACs its window
            saves; they add up to ``parts["controlnet_window"]``. Only the ControlNets the policy windows.
    """

    convention: str
    full: int
    policy: int
    parts: Mapping[str, int]
    controlnet_windows: Mapping[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", MappingProxyType({m: self.parts[m] for m in MECHANISMS}))
        object.__setattr__(self, "controlnet_windows", MappingProxyType(dict(self.controlnet_windows)))

    @property
    def saved(self) -> int:
        """MACs the policy saves in all: ``full - policy``."""
        return self.full - self.policy

    def reduction(self) -> dict[str, float]:
        """Mechanism -> its share of the full MACs (points of the reduction), and ``total``: the reduction."""
        share = {m: v / self.full if self.full else 0.0 for m, v in self.parts.items()}
        return {**share, "total": self.saved / self.full if self.full else 0.0}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``convention``, ``order`` (:data:`MECHANISMS`), ``full``, ``policy``, ``saved``,
        ``macs`` (mechanism -> MACs), ``reduction`` (mechanism -> share of ``full``, and ``total``) and
        ``controlnet_windows``."""
        return {
            "convention": self.convention,
            "order": list(MECHANISMS),
            "full": self.full,
            "policy": self.policy,
            "saved": self.saved,
            "macs": dict(self.parts),
            "reduction": self.reduction(),
            "controlnet_windows": dict(self.controlnet_windows),
        }


def mac_savings_by_mechanism(
    policy: Policy, table: MacTableLike, *, cfg: bool = True, batch: int = 1, convention: str = "paper"
) -> MacSavings:
    """Split what ``policy`` saves among its mechanisms, each skipped MAC attributed to exactly one.

    The MACs are those of :func:`policy_macs` (the denoisers its total includes), from the same walk over the
    compute sets. A MAC that several mechanisms would skip goes to the first of them in this order
    (:data:`MECHANISMS`):

    1. ``guidance_window``: at a step past ``guidance.cfg_until`` the unconditional half computes nothing;
       all it would have computed at full compute counts here, including what the other mechanisms would
       also skip at that step.
    2. ``controlnet_window``: a whole ControlNet outside its window (reused or dropped), per ControlNet in
       ``controlnet_windows``, its blocks and cross-attention included.
    3. ``controlnet_blocks``: cached ControlNet blocks, their cross-attention included.
    4. ``unet_blocks``: cached U-Net blocks, their cross-attention included.
    5. ``cross_attention``: reused ``attn2`` modules (U-Net and ControlNet) whose block computes.

    Blocks inside blocks count once, for the outermost skipped one. Each part is what the policy saves
    beyond the policy made of the mechanisms before it, so the parts add up to ``full - policy`` and a
    policy with one mechanism has it all in that part. Separate runs (each mechanism alone against full
    compute) count the steps two mechanisms share twice, so they do not add up.

    Args:
        policy: The policy.
        table: The per-module MAC table of the pipeline the policy targets (``hgc_tune.macs.MacTable``).
        cfg: Whether the generation uses classifier-free guidance (without, the guidance window saves 0).
        batch: Images per generation.
        convention: ``paper`` or ``complete``.

    Returns:
        A :class:`MacSavings`.

    Raises:
        PolicyError: As :func:`policy_macs`.

    Example:
        >>> from hgc_tune.macs import count_pipeline_macs
        >>> from hgc_tune.models import load_pipeline
        >>> from hgc_tune.policy import load_policy
        >>> table = count_pipeline_macs(load_pipeline("tiny"), height=64, width=64, model_name="tiny")
        >>> policy = load_policy("policies/tiny-tgate-g10-cfg.json").select()
        >>> split = mac_savings_by_mechanism(policy, table).reduction()
        >>> f"{split['guidance_window']:.1%} + {split['cross_attention']:.1%} = {split['total']:.1%}"
        '25.0% + 1.2% = 26.2%'
    """
    totals = policy_macs(policy, table, cfg=cfg, batch=batch, convention=convention)
    cost, skipped = _skipped(policy, table, convention)
    includes = _included(table.generation_macs(policy.num_steps, cfg=cfg, convention=convention, batch=batch))
    mechanism = {key: f"{_component(key)}_blocks" for key in policy.blocks}
    mechanism.update(dict.fromkeys(policy.attention, "cross_attention"))
    mechanism.update(dict.fromkeys(policy.controlnet_windows, "controlnet_window"))
    parts = dict.fromkeys(MECHANISMS, 0)
    windows = dict.fromkeys(policy.controlnet_windows, 0)
    every_branch = (2 if cfg else 1) * batch
    for s, keys in enumerate(skipped):
        n = policy.cfg_branches(s, cfg) * batch
        parts["guidance_window"] += (every_branch - n) * sum(cost[d] for d in includes)
        for key in keys:
            if _component(key) in includes:
                parts[mechanism[key]] += n * cost[key]
                if key in windows:
                    windows[key] += n * cost[key]
    return MacSavings(
        convention=convention,
        full=int(totals["full"]),
        policy=int(totals["policy"]),
        parts=parts,
        controlnet_windows=windows,
    )


def macs_provenance(
    policy: Policy, table: MacTableLike, *, cfg: bool = True, batch: int = 1
) -> dict[str, dict[str, float]]:
    """:func:`policy_macs` in both conventions, in the shape of ``Provenance.macs``."""
    return {
        conv: policy_macs(policy, table, cfg=cfg, batch=batch, convention=conv) for conv in MAC_CONVENTIONS
    }


def full_compute_policy(target: PolicyTarget, *, name: str = "full-compute") -> Policy:
    """The policy that caches nothing: every module computes at every step, CFG throughout."""
    return Policy(target=target, name=name, provenance=Provenance(source="full-compute"))
