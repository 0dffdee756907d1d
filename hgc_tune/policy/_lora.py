"""The LoRA adapters a pipeline carries, as a policy's provenance records them, and the warning when a
policy tuned with other adapters (or none) is applied.

A LoRA changes every output a policy's fidelity was measured on, but not the module tree or the shapes: a
policy tuned without it still fits and runs. So a mismatch warns (once per pipeline, policy and adapters)
rather than refuses. Adapters are read from the pipeline's modules (peft's tuner layers), so an adapter
loaded by hand (``pipe.load_lora_weights``) counts as much as one loaded with ``--lora``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from hgc_tune.models._lora import lora_adapters
from hgc_tune.policy._model import LoraSpec

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.policy._model import Policy

__all__ = ["LoraMismatchWarning", "check_policy_lora", "describe_loras", "pipeline_loras"]

_WARNED_ATTR = "_hgc_lora_warned"


class LoraMismatchWarning(UserWarning):
    """A policy applied to a pipeline whose LoRA adapters differ from those it was tuned with."""


def pipeline_loras(pipe: ControlNetPipeline) -> tuple[LoraSpec, ...]:
    """The LoRA adapters active on ``pipe`` (U-Net, ControlNet, text encoders), by adapter name.

    Each gets a digest of its own low-rank weights (with the adapter's name left out, so the same file loaded
    under another name has the same digest) and the scale it is set to. Empty without peft or adapters.

    Example:
        >>> from hgc_tune.models import load_pipeline
        >>> pipeline_loras(load_pipeline("tiny"))
        ()
    """
    return tuple(LoraSpec(name, digest, scale) for name, digest, scale in lora_adapters(pipe))


def describe_loras(loras: tuple[LoraSpec, ...]) -> str:
    """``no LoRA``, or each adapter with its digest and scale."""
    return ", ".join(a.describe() for a in loras) if loras else "no LoRA"


def _same(a: tuple[LoraSpec, ...], b: tuple[LoraSpec, ...]) -> bool:
    # Adapter names are labels: the weights and the scale are what the outputs depend on.
    key = lambda loras: sorted((x.digest, round(x.scale, 6)) for x in loras)  # noqa: E731
    return key(a) == key(b)


def check_policy_lora(pipe: ControlNetPipeline, policy: Policy) -> str | None:
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
