"""Analytic MACs of a whole generation under a policy: a per-module MAC table × compute sets.

At step ``s`` each denoiser (U-Net, ControlNet) computes ``b(s) = policy.cfg_branches(s, cfg)`` CFG branches
of ``batch`` images. Its cost is its full cost minus the cost of every cached module skipped at ``s``,
counting only the outermost skipped module of a nest (a skipped block's skipped ``attn2`` is not subtracted
twice; a computed block's skipped ``attn2`` is). The whole ControlNet outside its window costs nothing,
whether its residuals are reused or dropped. The text encoder and VAE decoder cost what
``table.generation_macs`` says, under any policy: caching does not touch them. Totals are
``generation_macs``' totals less what the policy saves, so full compute reproduces them exactly.

The table is anything with the :class:`MacTableLike` interface (``hgc_tune.macs.MacTable``).
"""

from __future__ import annotations

from typing import Any, Protocol

from hgc_tune.errors import PolicyError
from hgc_tune.policy._model import Policy, PolicyTarget, Provenance

__all__ = [
    "MAC_CONVENTIONS",
    "MacTableLike",
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
    sets = policy.compute_sets()
    cost = {key: table.macs(key, convention) for key in (*_DENOISERS, *sets)}
    out = []
    for s in range(policy.num_steps):
        per_image = {d: cost[d] for d in _DENOISERS}
        for key in _outermost(sorted(k for k, steps in sets.items() if s not in steps)):
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
    includes = [d for d in gen.get("includes", _DENOISERS) if d in _DENOISERS]
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
