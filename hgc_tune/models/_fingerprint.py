"""A structural fingerprint of a pipeline's U-Net and ControlNet.

Two pipelines with the same fingerprint have the same module tree and shapes, so a policy (module keys
and compute steps) or a profile made on one fits the other. Weights do not enter the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["model_fingerprint", "model_structure"]


def _structural_config(model) -> dict[str, Any]:
    config = dict(model.config)
    return {k: v for k, v in sorted(config.items()) if not k.startswith("_")}


def model_structure(pipe) -> dict[str, Any]:
    """Class names and structural configs of the pipeline's U-Net and ControlNet."""
    out: dict[str, Any] = {"pipeline": type(pipe).__name__}
    for component in ("unet", "controlnet"):
        model = getattr(pipe, component, None)
        if model is not None:
            out[component] = {"class": type(model).__name__, "config": _structural_config(model)}
    return out


def model_fingerprint(pipe) -> str:
    """A 16-hex-digit hash of :func:`model_structure`."""
    blob = json.dumps(model_structure(pipe), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
