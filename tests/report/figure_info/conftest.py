"""A profile stand-in with hand-set statistics, for the figures' data functions (no pipeline, no files)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest


@dataclass
class FakeProfile:
    """What the figures read of a :class:`hgc_tune.profile.Profile`: keys, sizes and per-step statistics.

    ``stats`` maps ``"<name>/<key>"`` (``mean_cos/unet.mid_block``) to the values over the steps.
    """

    block_keys: list[str]
    attention_keys: list[str] = field(default_factory=list)
    stats: dict[str, list[float]] = field(default_factory=dict)
    num_steps: int = 3
    num_samples: int = 2
    condition_type: str | None = "seg"

    def stat(self, name: str, key: str) -> np.ndarray:
        return np.asarray(self.stats[f"{name}/{key}"], dtype=np.float32)

    def stat_matrix(self, name: str, keys: list[str]) -> np.ndarray:
        return np.stack([self.stat(name, k) for k in keys])


@pytest.fixture
def make_profile():
    return FakeProfile
