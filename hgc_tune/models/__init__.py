"""Model presets (the shipped ``shapes`` weights included), loading of local checkpoints, module layouts and
fingerprints."""

from __future__ import annotations

from hgc_tune.models._blocks import (
    COMPONENTS,
    MODULE_KEY_PATTERN,
    ModuleLayout,
    block_containers,
    block_paths,
    cacheable_module_keys,
    cross_attention_paths,
    deep_block_keys,
    is_attention_key,
    is_whole_model_key,
    max_branch,
    module_groups,
    module_layout,
    register_module_layout,
)
from hgc_tune.models._fingerprint import (
    controlnet_fingerprints,
    model_fingerprint,
    model_structure,
    weights_digest,
)
from hgc_tune.models._loading import DTYPES, SCHEDULERS, check_controlnet_fits, load_pipeline, make_scheduler
from hgc_tune.models._presets import PRESETS, PresetInfo
from hgc_tune.models._shapes import SHAPES_CONDITIONS
from hgc_tune.models._tokenizer import build_offline_tokenizer

__all__ = [
    "COMPONENTS",
    "DTYPES",
    "MODULE_KEY_PATTERN",
    "PRESETS",
    "SCHEDULERS",
    "SHAPES_CONDITIONS",
    "ModuleLayout",
    "PresetInfo",
    "block_containers",
    "block_paths",
    "build_offline_tokenizer",
    "cacheable_module_keys",
    "check_controlnet_fits",
    "controlnet_fingerprints",
    "cross_attention_paths",
    "deep_block_keys",
    "is_attention_key",
    "is_whole_model_key",
    "load_pipeline",
    "make_scheduler",
    "max_branch",
    "model_fingerprint",
    "model_structure",
    "module_groups",
    "module_layout",
    "register_module_layout",
    "weights_digest",
]
