"""Caching policies: the model, the strict JSON file format, policy MACs and peer schedules."""

from __future__ import annotations

from hgc_tune.policy._io import dumps_policy, load_policy, loads_policy, save_policy
from hgc_tune.policy._lora import LoraMismatchWarning, pipeline_loras
from hgc_tune.policy._macs import full_compute_policy, policy_macs
from hgc_tune.policy._model import (
    ControlNetSpec,
    ControlNetWindow,
    GuidanceWindow,
    LoraSpec,
    Policy,
    PolicyFile,
    PolicyTarget,
    Provenance,
    ReuseWindow,
)
from hgc_tune.policy._peers import controlnet_window_policy, deepcache_policy, peer_policy, tgate_policy
from hgc_tune.policy._target import target_for_pipeline

__all__ = [
    "ControlNetSpec",
    "ControlNetWindow",
    "GuidanceWindow",
    "LoraMismatchWarning",
    "LoraSpec",
    "Policy",
    "PolicyFile",
    "PolicyTarget",
    "Provenance",
    "ReuseWindow",
    "controlnet_window_policy",
    "deepcache_policy",
    "dumps_policy",
    "full_compute_policy",
    "load_policy",
    "loads_policy",
    "peer_policy",
    "pipeline_loras",
    "policy_macs",
    "save_policy",
    "target_for_pipeline",
    "tgate_policy",
]
