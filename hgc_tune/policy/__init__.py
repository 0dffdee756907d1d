"""Caching policies: the model, the strict JSON file format, policy MACs and peer schedules."""

from __future__ import annotations

from hgc_tune.policy._model import (
    CONTROLNET_MODES,
    SCHEMA_VERSION,
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    PolicyFile,
    PolicyTarget,
    Provenance,
    ReuseWindow,
)

__all__ = [
    "CONTROLNET_MODES",
    "SCHEMA_VERSION",
    "ControlNetWindow",
    "GuidanceWindow",
    "Policy",
    "PolicyFile",
    "PolicyTarget",
    "Provenance",
    "ReuseWindow",
]
