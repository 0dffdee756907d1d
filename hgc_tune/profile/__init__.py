"""The profiler: per-step similarity of every cacheable module and cross-attention drift, measured on
full-compute generation, with the MAC table and the reference outputs a policy search needs.

``profile_pipeline(pipe, samples)`` returns a :class:`Profile`; ``Profile.save(folder)`` writes
``profile.json`` + ``profile.safetensors`` and ``Profile.load(folder)`` reads them back (refusing truncated or
modified files with :class:`~hgc_tune.errors.ProfileError`). ``load_profiled_pipeline(profile)`` loads the
pipeline a profile was made with and checks its fingerprint and weights digest, for everything that reuses
the profile's references.
"""

from __future__ import annotations

from hgc_tune.profile._artifact import Profile
from hgc_tune.profile._pipeline import load_profiled_pipeline
from hgc_tune.profile._profiler import profile_pipeline

__all__ = ["Profile", "load_profiled_pipeline", "profile_pipeline"]
