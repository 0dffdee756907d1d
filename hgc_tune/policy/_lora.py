"""The LoRA adapters a pipeline carries, as a policy's provenance records them, and the warning when a
policy tuned with other adapters (or none) is applied.

A LoRA changes every output a policy's fidelity was measured on, but not the module tree or the shapes: a
policy tuned without it still fits and runs. So a mismatch warns (once per pipeline, policy and adapters)
rather than refuses. Adapters are read from the pipeline's modules (peft's tuner layers), so an adapter
loaded by hand (``pipe.load_lora_weights``) counts as much as one loaded with ``--lora``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from typing import TYPE_CHECKING, Any

from hgc_tune.policy._model import LoraSpec

if TYPE_CHECKING:
    from hgc_tune.policy._model import Policy

__all__ = ["LoraMismatchWarning", "check_policy_lora", "describe_loras", "fused_loras", "pipeline_loras"]

# The components whose LoRA layers change a pipeline's outputs (diffusers loads LoRAs into these).
_COMPONENTS: tuple[str, ...] = ("unet", "controlnet", "text_encoder", "text_encoder_2")
_WARNED_ATTR = "_hgc_lora_warned"


class LoraMismatchWarning(UserWarning):
    """A policy applied to a pipeline whose LoRA adapters differ from those it was tuned with."""


def _tuner_layers(pipe: Any):
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # without peft, diffusers loads no LoRA adapters
        return
    for component in _COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None or not hasattr(model, "named_modules"):
            continue
        for name, module in model.named_modules():
            if isinstance(module, BaseTunerLayer):
                yield f"{component}.{name}", module


def _scale(module: Any, adapter: str) -> float:
    """The scale the adapter was set to (``set_adapters``' weight): peft keeps ``alpha / r`` times it."""
    scaling = getattr(module, "scaling", {}).get(adapter)
    alpha, rank = getattr(module, "lora_alpha", {}).get(adapter), getattr(module, "r", {}).get(adapter)
    if scaling is None or not alpha or not rank:
        return 1.0
    base = alpha / math.sqrt(rank) if getattr(module, "use_rslora", {}).get(adapter) else alpha / rank
    return round(float(scaling) / base, 6)


def pipeline_loras(pipe: Any) -> tuple[LoraSpec, ...]:
    """The LoRA adapters active on ``pipe`` (U-Net, ControlNet, text encoders), by adapter name.

    Each gets a digest of its own low-rank weights (with the adapter's name left out, so the same file loaded
    under another name has the same digest) and the scale it is set to. Empty without peft or adapters.

    Example:
        >>> from hgc_tune.models import load_pipeline
        >>> pipeline_loras(load_pipeline("tiny"))
        ()
    """
    import torch

    digests: dict[str, Any] = {}
    scales: dict[str, float] = {}
    for key, module in _tuner_layers(pipe):
        for adapter in getattr(module, "active_adapters", ()):
            digest = digests.setdefault(adapter, hashlib.sha256())
            scales.setdefault(adapter, _scale(module, adapter))
            for pname, param in module.named_parameters():
                parts = pname.split(".")
                if parts[0] == "base_layer" or adapter not in parts:
                    continue
                generic = ".".join("*" if p == adapter else p for p in parts)
                digest.update(f"{key}.{generic}:{tuple(param.shape)};".encode())
                digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return tuple(LoraSpec(name, digests[name].hexdigest()[:16], scales[name]) for name in sorted(digests))


def fused_loras(pipe: Any) -> set[str]:
    """The adapters of ``pipe`` merged into its weights (``fuse_lora``): they add no computation of their
    own, where an unfused adapter runs its low-rank products beside each layer it adapts."""
    return {a for _, module in _tuner_layers(pipe) for a in getattr(module, "merged_adapters", ())}


def describe_loras(loras: tuple[LoraSpec, ...]) -> str:
    """``no LoRA``, or each adapter with its digest and scale."""
    return ", ".join(a.describe() for a in loras) if loras else "no LoRA"


def _same(a: tuple[LoraSpec, ...], b: tuple[LoraSpec, ...]) -> bool:
    # Adapter names are labels: the weights and the scale are what the outputs depend on.
    key = lambda loras: sorted((x.digest, round(x.scale, 6)) for x in loras)  # noqa: E731
    return key(a) == key(b)


def check_policy_lora(pipe: Any, policy: Policy) -> str | None:
    """Warn (:class:`LoraMismatchWarning`, once per pipeline, policy and adapters) if ``policy`` was tuned
    with other LoRA adapters than ``pipe`` carries, or with none while ``pipe`` carries one; return the
    message, or ``None`` if they agree.

    Only a tuned policy is compared: one whose provenance records measured fidelity (a search's policy). A
    peer schedule or an all-compute policy was measured on nothing, so no LoRA can invalidate it.
    """
    if not policy.provenance.fidelity:
        return None
    found = pipeline_loras(pipe)
    made = policy.provenance.lora
    if _same(made, found):
        return None
    message = (
        f"policy {policy.name!r} was tuned with {describe_loras(made)}, but this pipeline carries "
        f"{describe_loras(found)}: the fidelity it records may not hold; profile and search with the same "
        "LoRA (hgc-tune profile/search --lora PATH[:SCALE]) for a policy of this pipeline."
    )
    warned = vars(pipe).setdefault(_WARNED_ATTR, set())
    if message not in warned:
        warned.add(message)
        warnings.warn(message, LoraMismatchWarning, stacklevel=3)
    return message
