"""Model presets (the shipped ``shapes`` weights included), loading of local checkpoints, module layouts and
fingerprints."""

from __future__ import annotations

from hgc_tune.models._blocks import ModuleLayout, module_layout, register_module_layout
from hgc_tune.models._fingerprint import model_fingerprint
from hgc_tune.models._loading import load_pipeline

__all__ = ["ModuleLayout", "load_pipeline", "model_fingerprint", "module_layout", "register_module_layout"]
