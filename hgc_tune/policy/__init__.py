"""Caching policies: the model, the strict JSON file format, policy MACs and peer schedules."""

from __future__ import annotations

from hgc_tune.policy._io import (
    MODULE_KEY_PATTERN,
    SUPPORTED_SCHEMA_VERSIONS,
    dumps_policy,
    load_policy,
    loads_policy,
    pareto_path,
    policy_from_json,
    policy_to_json,
    save_policy,
)
from hgc_tune.policy._macs import (
    MAC_CONVENTIONS,
    MacTableLike,
    full_compute_policy,
    macs_provenance,
    policy_macs,
    policy_step_macs,
)
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
from hgc_tune.policy._peers import (
    DEFAULT_PEERS,
    PEERS,
    PeerSpec,
    controlnet_window_policy,
    deepcache_policy,
    peer_params,
    peer_policy,
    tgate_policy,
)
from hgc_tune.policy._target import target_for_pipeline

__all__ = [
    "CONTROLNET_MODES",
    "DEFAULT_PEERS",
    "MAC_CONVENTIONS",
    "MODULE_KEY_PATTERN",
    "PEERS",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "ControlNetWindow",
    "GuidanceWindow",
    "MacTableLike",
    "PeerSpec",
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
    "macs_provenance",
    "pareto_path",
    "peer_params",
    "peer_policy",
    "policy_from_json",
    "policy_macs",
    "policy_step_macs",
    "policy_to_json",
    "save_policy",
    "target_for_pipeline",
    "tgate_policy",
]
