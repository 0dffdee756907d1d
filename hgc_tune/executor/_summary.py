"""What the last pipeline call under a policy did: :class:`CallSummary`, read with ``handle.summary()``.

The counts come from the policy's own hooks, which already decide at every denoiser call whether a module
computes, reuses or (a ControlNet) drops: each adds one Python integer per decision, no device sync. The
MACs come from :class:`~hgc_tune.macs._executed.ModuleRunCounter` (``apply_policy(..., count_macs=True)``)
and a MAC table built, once per resolution, from an unhooked twin of the denoisers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.macs import MacTable

__all__ = ["CallMacs", "CallSummary", "ModuleCounts", "denoiser_mac_table"]


@dataclass(frozen=True)
class ModuleCounts:
    """What one module the policy schedules did in a call, one count per denoiser call that reached it.

    A module inside a block (or ControlNet) that was reused or dropped is not called at that step, so
    ``computed + reused + dropped`` can be below the call's steps.

    Attributes:
        computed: Calls at which it ran.
        reused: Calls at which it returned the output kept from its latest computed step.
        dropped: Calls at which it returned zeros and ran nothing (whole ControlNets only: outside a
            ``drop`` window, or at ``conditioning_scale == 0``).
    """

    computed: int
    reused: int
    dropped: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"computed": self.computed, "reused": self.reused, "dropped": self.dropped}


@dataclass(frozen=True)
class CallMacs:
    """U-Net and ControlNet MACs of one call in one convention: counted while it ran, and the same call at
    full compute (same steps, CFG and batch; every module computing).

    Attributes:
        convention: ``paper`` or ``complete`` (see :class:`~hgc_tune.macs.MacTable`).
        executed: Denoiser (``unet``, ``controlnet``) -> MACs it executed (counted, not computed from the
            policy).
        full: Denoiser -> MACs it would have executed at full compute.
    """

    convention: str
    executed: Mapping[str, int]
    full: Mapping[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "executed", MappingProxyType(dict(self.executed)))
        object.__setattr__(self, "full", MappingProxyType(dict(self.full)))

    @property
    def executed_total(self) -> int:
        return sum(self.executed.values())

    @property
    def full_total(self) -> int:
        return sum(self.full.values())

    @property
    def reduction(self) -> float:
        """``1 - executed / full``: the share of full compute's MACs the policy skipped."""
        full = self.full_total
        return 1.0 - self.executed_total / full if full else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "executed": self.executed_total,
            "full": self.full_total,
            "reduction": self.reduction,
            "executed_by_denoiser": dict(self.executed),
            "full_by_denoiser": dict(self.full),
        }


@dataclass(frozen=True)
class CallSummary:
    """What the calling thread's last pipeline call did under a policy (``handle.summary()``).

    Attributes:
        policy: The policy's name.
        steps: Denoising steps the call ran (U-Net calls).
        cfg_steps: Steps at which the U-Net ran both classifier-free guidance branches.
        cfg_truncated_steps: Steps at which the pipeline asked for CFG but the policy's guidance window ran
            the conditional branch only. Without CFG (``guidance_scale <= 1``) both are 0.
        modules: Module key -> :class:`ModuleCounts`, for every module the policy schedules (its blocks,
            cross-attention modules and each whole ControlNet), in the policy's order.
        macs: Convention (``paper``, ``complete``) -> :class:`CallMacs`; ``None`` unless the policy was
            applied with ``count_macs=True``, or before the first call.
    """

    policy: str
    steps: int
    cfg_steps: int
    cfg_truncated_steps: int
    modules: Mapping[str, ModuleCounts]
    macs: Mapping[str, CallMacs] | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", MappingProxyType(dict(self.modules)))
        if self.macs is not None:
            object.__setattr__(self, "macs", MappingProxyType(dict(self.macs)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``policy``, ``steps``, ``guidance`` (``cfg_steps``, ``cfg_truncated_steps``),
        ``modules`` (key -> counts) and ``macs`` (convention -> executed, full, reduction and both by
        denoiser; ``null`` when not counted)."""
        return {
            "policy": self.policy,
            "steps": self.steps,
            "guidance": {"cfg_steps": self.cfg_steps, "cfg_truncated_steps": self.cfg_truncated_steps},
            "modules": {key: counts.to_dict() for key, counts in self.modules.items()},
            "macs": None if self.macs is None else {c: m.to_dict() for c, m in self.macs.items()},
        }


def denoiser_mac_table(pipe: ControlNetPipeline, latent_size: tuple[int, int]) -> MacTable:
    """The MAC table of ``pipe``'s U-Net and ControlNet at latent size ``latent_size``, traced from unhooked
    twins of them (:func:`~hgc_tune.runtime._registry.unhooked_view`), so the policy applied to ``pipe``
    neither changes the trace nor is changed by it. The text encoders and the VAE are left out: a policy
    does not run them.
    """
    # Imported here: fvcore and the tracer are needed only when MACs are counted.
    from hgc_tune.macs import count_pipeline_macs
    from hgc_tune.runtime._registry import unhooked_view

    factor = pipe.vae_scale_factor
    denoisers = SimpleNamespace(
        unet=unhooked_view(pipe.unet),
        controlnet=unhooked_view(pipe.controlnet),
        vae_scale_factor=factor,
        tokenizer=getattr(pipe, "tokenizer", None),
    )
    height, width = latent_size
    return count_pipeline_macs(denoisers, height=height * factor, width=width * factor)  # type: ignore[arg-type]
