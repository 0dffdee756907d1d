"""A policy as a module × step grid of what each module does at each step."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from hgc_tune.errors import ReportError
from hgc_tune.policy import Policy

__all__ = [
    "COMPUTE",
    "COND_ONLY",
    "DROPPED",
    "INSIDE_REUSED",
    "REUSE",
    "STATE_NAMES",
    "PolicyGrid",
    "policy_grid",
]

# Cell states, ordered from "runs in full" to "nothing at all".
COMPUTE = 0
COND_ONLY = 1
REUSE = 2
INSIDE_REUSED = 3
DROPPED = 4
STATE_NAMES: dict[int, str] = {
    COMPUTE: "compute",
    COND_ONLY: "compute (cond half only)",
    REUSE: "reuse",
    INSIDE_REUSED: "inside a reused module",
    DROPPED: "dropped",
}


@dataclass(frozen=True)
class PolicyGrid:
    """What every module does at every step under a policy.

    Attributes:
        keys: Module keys, one per row.
        states: int8 ``[len(keys), num_steps]`` of :data:`COMPUTE`, :data:`COND_ONLY`, :data:`REUSE`,
            :data:`INSIDE_REUSED` or :data:`DROPPED` (names in :data:`STATE_NAMES`).
    """

    keys: tuple[str, ...]
    states: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.states.shape[1])

    def row(self, key: str) -> np.ndarray:
        """The states of module ``key`` over the steps."""
        return self.states[self.keys.index(key)]

    def counts(self) -> dict[str, int]:
        """Number of cells in each state, by state name."""
        return {name: int((self.states == code).sum()) for code, name in STATE_NAMES.items()}


def _ancestors(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def policy_grid(policy: Policy, keys: Iterable[str], *, cfg: bool = True) -> PolicyGrid:
    """Lay a policy out as a module × step grid, following the reuse rule of :mod:`hgc_tune.policy`.

    At step ``s`` a module is ``dropped`` if it belongs to the ControlNet and the ControlNet window drops
    it; ``reuse`` if ``s`` is outside its own compute set (or, for the ControlNet and its blocks, outside a
    ``reuse`` window: the whole ControlNet row is ``reuse`` and its blocks ``inside a reused module``);
    ``inside a reused module`` if an enclosing module (e.g. the block around an ``attn2``) reuses at ``s``,
    so it does not run either; otherwise it computes, on the conditional half only from the guidance
    window's ``cfg_until`` on (when ``cfg``).

    Args:
        policy: The policy.
        keys: The module keys to lay out, one row each (e.g. a profile's block and attention keys).
        cfg: Whether the generation uses classifier-free guidance (without it there is no half to drop).

    Returns:
        The :class:`PolicyGrid`.

    Raises:
        ReportError: If the policy caches a module that is not among ``keys``.

    Example:
        >>> grid = policy_grid(policy, ["unet.mid_block"])  # doctest: +SKIP
        >>> [STATE_NAMES[c] for c in grid.row("unet.mid_block")]  # doctest: +SKIP
        ['compute', 'reuse', 'reuse', 'compute']
    """
    keys = tuple(keys)
    sets = policy.compute_sets()
    unknown = sorted(k for k in sets if k not in keys)
    if unknown:
        raise ReportError(
            f"policy {policy.name!r} caches modules the profile does not have: {unknown[:5]}; profile the "
            "pipeline the policy was made for."
        )
    windows = policy.controlnet_windows
    states = np.zeros((len(keys), policy.num_steps), dtype=np.int8)
    for row, key in enumerate(keys):
        # The window of the whole ControlNet the key belongs to (one of several: ``controlnet.nets.1``).
        owners = [w for w in windows if key == w or key.startswith(w + ".")]
        owner = max(owners, key=len) if owners else None
        window = windows[owner] if owner is not None else None
        for s in range(policy.num_steps):
            if window is not None and s not in window.steps:
                if window.mode == "drop":
                    states[row, s] = DROPPED
                else:
                    states[row, s] = REUSE if key == owner else INSIDE_REUSED
            elif key in sets and s not in sets[key]:
                states[row, s] = REUSE
            elif any(a in sets and s not in sets[a] for a in _ancestors(key)):
                states[row, s] = INSIDE_REUSED
            elif policy.cfg_branches(s, cfg) == 1 and cfg:
                states[row, s] = COND_ONLY
    return PolicyGrid(keys, states)
