"""A structural fingerprint of a pipeline's U-Net and ControlNet, and a digest of their weights.

Two pipelines with the same fingerprint have the same module tree and shapes, so a policy (module keys
and compute steps) made on one fits the other. Weights do not enter the fingerprint; they enter
:func:`weights_digest`, which tells apart outputs (profile references, held-out references, search trials)
that only the same weights reproduce.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = [
    "controlnet_fingerprints",
    "model_fingerprint",
    "model_structure",
    "module_weights_digest",
    "weights_digest",
]

# Values sampled per tensor by weights_digest: enough to tell checkpoints apart, cheap for SD1.5's 1.2 B.
_DIGEST_SAMPLES = 1024


def _structural_config(model) -> dict[str, Any]:
    config = dict(model.config)
    return {k: v for k, v in sorted(config.items()) if not k.startswith("_")}


def _model_structure(model) -> dict[str, Any]:
    nets = getattr(model, "nets", None)
    if nets is not None:
        # A MultiControlNetModel has no config of its own: it is its ControlNets, in order.
        return {"class": type(model).__name__, "nets": [_model_structure(net) for net in nets]}
    return {"class": type(model).__name__, "config": _structural_config(model)}


def _digest(structure: dict[str, Any]) -> str:
    blob = json.dumps(structure, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_structure(pipe) -> dict[str, Any]:
    """Class names and structural configs of the pipeline's U-Net and ControlNet (for several ControlNets,
    each one's under ``nets``)."""
    out: dict[str, Any] = {"pipeline": type(pipe).__name__}
    for component in ("unet", "controlnet"):
        model = getattr(pipe, component, None)
        if model is not None:
            out[component] = _model_structure(model)
    return out


def controlnet_fingerprints(pipe) -> list[tuple[str, str]]:
    """``(class name, 16-hex-digit structural fingerprint)`` of each ControlNet of the pipeline, in order:
    one for a single ControlNet, one per net of a ``MultiControlNetModel``, none without a ControlNet."""
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is None:
        return []
    nets = getattr(controlnet, "nets", None)
    models = list(nets) if nets is not None else [controlnet]
    return [(type(m).__name__, _digest(_model_structure(m))) for m in models]


def model_fingerprint(pipe) -> str:
    """A 16-hex-digit hash of :func:`model_structure`."""
    return _digest(model_structure(pipe))


def _update_digest(digest: Any, prefix: str, model: Any) -> None:
    import torch

    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // _DIGEST_SAMPLES)][:_DIGEST_SAMPLES]
        header = f"{prefix}.{name}:{tensor.dtype}:{tuple(tensor.shape)};"
        digest.update(header.encode())
        digest.update(sample.to("cpu", torch.float32).numpy().tobytes())


def weights_digest(pipe) -> str:
    """A 16-hex-digit digest of the U-Net's and ControlNet's weights (and their dtype).

    It identifies a checkpoint, it does not verify one: it hashes every tensor's name, dtype and shape and
    up to 1024 of its values taken at an even stride, so any retraining or other checkpoint changes it, while
    computing it moves a few megabytes at most off the device (once per profile or search, never per step).
    """
    digest = hashlib.sha256()
    for component in ("unet", "controlnet"):
        model = getattr(pipe, component, None)
        if model is not None:
            _update_digest(digest, component, model)
    return digest.hexdigest()[:16]


def module_weights_digest(module) -> str:
    """A 16-hex-digit digest of one ``torch.nn.Module``'s weights, sampled as :func:`weights_digest` samples
    them (e.g. the CLIP model that scores prompt adherence)."""
    digest = hashlib.sha256()
    _update_digest(digest, type(module).__name__, module)
    return digest.hexdigest()[:16]
