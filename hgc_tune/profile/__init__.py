"""The profiler: per-step similarity of every cacheable module and cross-attention drift, measured on
full-compute generation, with the MAC table and the reference outputs a policy search needs.

``profile_pipeline(pipe, samples)`` returns a :class:`Profile`; ``Profile.save(folder)`` writes
``profile.json`` + ``profile.safetensors`` and ``Profile.load(folder)`` reads them back (refusing truncated or
modified files with :class:`~hgc_tune.errors.ProfileError`). ``load_profiled_pipeline(profile)`` loads the
pipeline a profile was made with and checks its fingerprint and weights digest, for everything that reuses
the profile's references.
"""

from __future__ import annotations

from hgc_tune.errors import ProfileError
from hgc_tune.profile._artifact import (
    AGGREGATES,
    ATTENTION_STATS,
    BLOCK_STATS,
    META_FILE,
    SCHEMA_VERSION,
    TENSOR_FILE,
    Profile,
    stat_name,
)
from hgc_tune.profile._metrics import (
    attention_probs,
    cosine_similarity,
    cross_attention_map,
    flat_dot,
    js_divergence,
    js_row_sum,
    l1_distance,
    l1_norm,
    l2_norm,
    relative_l1,
)
from hgc_tune.profile._observer import ATTENTION_METRICS, BLOCK_METRICS, ProfileObserver
from hgc_tune.profile._pipeline import check_profiled_pipeline, load_profiled_pipeline
from hgc_tune.profile._profiler import condition_input, profile_pipeline

__all__ = [
    "condition_input",
    "AGGREGATES",
    "ATTENTION_METRICS",
    "ATTENTION_STATS",
    "BLOCK_METRICS",
    "BLOCK_STATS",
    "META_FILE",
    "SCHEMA_VERSION",
    "TENSOR_FILE",
    "Profile",
    "ProfileError",
    "ProfileObserver",
    "attention_probs",
    "cosine_similarity",
    "cross_attention_map",
    "check_profiled_pipeline",
    "load_profiled_pipeline",
    "flat_dot",
    "js_divergence",
    "js_row_sum",
    "l1_distance",
    "l1_norm",
    "l2_norm",
    "profile_pipeline",
    "relative_l1",
    "stat_name",
]
