"""Known hand-set caching schedules ("peers") expressed as policies, for comparison with searched ones.

Each generator takes the policy target and the pipeline's cacheable module keys (for example
``hgc_tune.models._blocks.cacheable_module_keys(pipe)``, or the keys saved in a profile), so no pipeline has
to be loaded to make a peer policy. Peers are named by a short string that encodes their parameters
(``deepcache-n3-b0``, ``tgate-g10``, ``tgate-g10-cfg``, ``cnwin-k10-drop``); :func:`peer_policy` parses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hgc_tune.errors import PolicyError
from hgc_tune.models._blocks import deep_block_keys, is_attention_key, is_whole_model_key, max_branch
from hgc_tune.policy._model import (
    CONTROLNET_MODES,
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    PolicyTarget,
    Provenance,
    ReuseWindow,
)

__all__ = [
    "PeerSpec",
    "PEERS",
    "DEFAULT_PEERS",
    "deepcache_policy",
    "tgate_policy",
    "controlnet_window_policy",
    "peer_policy",
    "peer_params",
]


def _positive_int(value: int, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bounds = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise PolicyError(f"`{name}` must be an integer {bounds}, but got {name}={value!r}.")
    return value


def _peer_provenance(name: str) -> Provenance:
    return Provenance(source=f"peer:{name}")


def deepcache_policy(
    target: PolicyTarget, module_keys: Iterable[str], interval: int, branch: int, *, name: str | None = None
) -> Policy:
    """A DeepCache-style uniform schedule (Ma et al., https://arxiv.org/abs/2312.00858).

    Every ``interval`` steps (0, N, 2N, …) the whole network computes. On the other steps only the shallow
    branch runs: ``down_blocks.0..branch`` and ``up_blocks.(L-1-branch)..(L-1)`` compute, and every deeper
    block (``down_blocks.(branch+1)…``, ``mid_block``, ``up_blocks.0..(L-2-branch)``) returns its output of
    the last refresh. In diffusers' ``UNet2DConditionModel`` the shallow up block consumes the output of the
    deeper up block next to it, so reusing that block's output is exactly DeepCache's cached high-level
    feature. The ControlNet (down blocks and mid block only) gets the same treatment: its blocks deeper than
    ``branch`` reuse. ``branch=0`` is the shallowest branch, DeepCache's most aggressive setting.

    Args:
        target: The pipeline the policy is for.
        module_keys: The pipeline's cacheable module keys.
        interval: Refresh interval ``N >= 1`` (1 = full compute).
        branch: Skip branch ``b`` in ``[0, L-1]`` with ``L`` the U-Net's number of down blocks.
        name: Policy name; ``deepcache-n<N>-b<b>`` by default.

    Returns:
        A policy with ``blocks`` entries only.

    Example:
        >>> keys = ["unet.down_blocks.0", "unet.down_blocks.1", "unet.mid_block", "unet.up_blocks.0",
        ...         "unet.up_blocks.1"]
        >>> t = PolicyTarget("P", "UNet2DConditionModel", "ControlNetModel", "0123456789abcdef", 6, "DDIM")
        >>> dict(deepcache_policy(t, keys, 3, 0).blocks)
        {'unet.down_blocks.1': (0, 3), 'unet.mid_block': (0, 3), 'unet.up_blocks.0': (0, 3)}
    """
    keys = list(module_keys)
    interval = _positive_int(interval, "interval")
    deepest = max_branch(keys, target.unet_class)
    if deepest < 0:
        raise PolicyError("deepcache_policy needs the U-Net's down and up blocks, but module_keys has none.")
    branch = _positive_int(branch, "branch", minimum=0, maximum=deepest)
    refresh = tuple(range(0, target.num_steps, interval))
    deep = deep_block_keys(keys, branch, target.component_classes)
    name = name or f"deepcache-n{interval}-b{branch}"
    # Interval 1 refreshes at every step: nothing is cached, so no entries.
    blocks = {} if len(refresh) == target.num_steps else {key: refresh for key in deep}
    return Policy(target=target, blocks=blocks, name=name, provenance=_peer_provenance(name))


def tgate_policy(
    target: PolicyTarget,
    module_keys: Iterable[str],
    gate_step: int,
    truncate_cfg: bool = False,
    *,
    name: str | None = None,
) -> Policy:
    """A T-GATE-like schedule (Zhang et al., https://arxiv.org/abs/2404.02747): cross-attention gated.

    T-GATE computes cross-attention for the first ``gate_step`` steps, caches its output at the last of
    them (step ``gate_step - 1``, 0-based) and reuses it from step ``gate_step`` on; the reference
    implementation also stops CFG from the gate step. Here every ``attn2`` module (U-Net and ControlNet)
    gets the reuse window ``[gate_step - 1, num_steps)``: it computes at steps ``0 … gate_step - 1`` and
    reuses its output from step ``gate_step`` on. One difference: T-GATE caches the average of the
    unconditional and conditional halves, whereas our executor reuses each half's own output (with
    ``truncate_cfg`` only the conditional half is used after the gate, so the difference vanishes there).

    Args:
        target: The pipeline the policy is for.
        module_keys: The pipeline's cacheable module keys.
        gate_step: The number of steps with computed cross-attention, in ``[1, num_steps]``.
        truncate_cfg: Also run the conditional branch only from ``gate_step`` on
            (``guidance=GuidanceWindow(gate_step)``).
        name: Policy name; ``tgate-g<k>`` (``-cfg`` with ``truncate_cfg``) by default.
    """
    s = target.num_steps
    gate_step = _positive_int(gate_step, "gate_step", maximum=s)
    classes = target.component_classes
    attn2 = sorted(k for k in module_keys if is_attention_key(k, classes))
    if not attn2:
        raise PolicyError("tgate_policy needs cross-attention (`…attn2`) modules, but module_keys has none.")
    name = name or f"tgate-g{gate_step}" + ("-cfg" if truncate_cfg else "")
    # With gate_step == num_steps nothing is ever reused: no window to write.
    attention = {k: (ReuseWindow(gate_step - 1, s),) for k in attn2} if gate_step < s else {}
    guidance = GuidanceWindow(gate_step) if truncate_cfg else None
    return Policy(
        target=target, attention=attention, guidance=guidance, name=name, provenance=_peer_provenance(name)
    )


def controlnet_window_policy(
    target: PolicyTarget,
    module_keys: Iterable[str],
    first_k: int,
    mode: str = "drop",
    *,
    name: str | None = None,
) -> Policy:
    """Control only in the first ``first_k`` steps; afterwards the ControlNet is dropped or reused.

    ``drop`` is what diffusers' ``control_guidance_end = first_k / num_steps`` means, minus the wasted
    ControlNet forwards diffusers still runs (and multiplies by 0).

    Args:
        target: The pipeline the policy is for.
        module_keys: The pipeline's cacheable module keys (must include ``controlnet``, or with several
            ControlNets ``controlnet.nets.<i>``: each gets the same window).
        first_k: Steps with a computed ControlNet, in ``[0, num_steps]`` (``[1, num_steps]`` for ``reuse``).
        mode: ``drop`` (zero residuals) or ``reuse`` (the residuals of step ``first_k - 1``).
        name: Policy name; ``cnwin-k<k>-<mode>`` by default.
    """
    wholes = [k for k in module_keys if is_whole_model_key(k)]
    if not wholes:
        raise PolicyError(
            "controlnet_window_policy needs a pipeline with a ControlNet (module key `controlnet`)."
        )
    if mode not in CONTROLNET_MODES:
        raise PolicyError(f"`mode` must be one of {list(CONTROLNET_MODES)}, but got mode={mode!r}.")
    first_k = _positive_int(first_k, "first_k", minimum=1 if mode == "reuse" else 0, maximum=target.num_steps)
    name = name or f"cnwin-k{first_k}-{mode}"
    window = ControlNetWindow(tuple(range(first_k)), mode) if first_k < target.num_steps else None
    several = {k: window for k in wholes if k != "controlnet"} if window else {}
    return Policy(
        target=target,
        controlnet=window if "controlnet" in wholes else None,
        controlnets=several,
        name=name,
        provenance=_peer_provenance(name),
    )


@dataclass(frozen=True)
class PeerSpec:
    """A family of peer schedules: its name pattern, how to build one from a parsed name, and the search
    parameters that name (``hgc_tune.search.PolicySpace`` builds the same policy from them)."""

    family: str
    form: str
    pattern: re.Pattern[str]
    build: Callable[[PolicyTarget, list[str], re.Match[str], str], Policy]
    reference: str
    params: Callable[[re.Match[str], int], dict[str, Any]]


def _deepcache_params(m: re.Match[str], num_steps: int) -> dict[str, Any]:
    interval, branch = int(m[1]), int(m[2])
    if interval == 1:
        return {}
    interval = min(interval, num_steps)
    return {"blocks.schedule": "interval", "blocks.branch": branch, "blocks.interval": interval}


def _tgate_params(m: re.Match[str], num_steps: int) -> dict[str, Any]:
    gate = int(m[1])
    if gate >= num_steps:
        return {}
    params: dict[str, Any] = {"attention.schedule": "gate", "attention.gate_step": gate}
    if m[2] is not None:
        params["guidance.cfg_until"] = gate
    return params


def _cnwin_params(m: re.Match[str], num_steps: int) -> dict[str, Any]:
    first_k = int(m[1])
    return {"controlnet.steps": first_k, **({"controlnet.mode": m[2]} if first_k < num_steps else {})}


PEERS: dict[str, PeerSpec] = {
    spec.family: spec
    for spec in (
        PeerSpec(
            "deepcache",
            "deepcache-n<interval>-b<branch>",
            re.compile(r"deepcache-n(\d+)-b(\d+)"),
            lambda t, k, m, name: deepcache_policy(t, k, int(m[1]), int(m[2]), name=name),
            "https://arxiv.org/abs/2312.00858",
            _deepcache_params,
        ),
        PeerSpec(
            "tgate",
            "tgate-g<gate_step>[-cfg]",
            re.compile(r"tgate-g(\d+)(-cfg)?"),
            lambda t, k, m, name: tgate_policy(t, k, int(m[1]), m[2] is not None, name=name),
            "https://arxiv.org/abs/2404.02747",
            _tgate_params,
        ),
        PeerSpec(
            "cnwin",
            "cnwin-k<first_k>-<drop|reuse>",
            re.compile(r"cnwin-k(\d+)-(drop|reuse)"),
            lambda t, k, m, name: controlnet_window_policy(t, k, int(m[1]), m[2], name=name),
            "diffusers control_guidance_end",
            _cnwin_params,
        ),
    )
}

# The peers shipped in ``policies/`` for every preset.
DEFAULT_PEERS: tuple[str, ...] = (
    "deepcache-n3-b0",
    "deepcache-n5-b0",
    "tgate-g10",
    "tgate-g10-cfg",
    "cnwin-k10-drop",
)


def _parse(name: str) -> tuple[PeerSpec, re.Match[str]]:
    for spec in PEERS.values():
        if m := spec.pattern.fullmatch(name):
            return spec, m
    forms = ", ".join(spec.form for spec in PEERS.values())
    raise PolicyError(f"unknown peer policy name {name!r}; known forms: {forms}.")


def peer_policy(name: str, target: PolicyTarget, module_keys: Iterable[str]) -> Policy:
    """Build a peer policy from its name (see :data:`PEERS` for the forms).

    Args:
        name: ``deepcache-n<interval>-b<branch>``, ``tgate-g<gate_step>[-cfg]`` or
            ``cnwin-k<k>-<drop|reuse>``.
        target: The pipeline the policy is for.
        module_keys: The pipeline's cacheable module keys.

    Raises:
        PolicyError: An unknown name form, or parameters that do not fit the target.

    Example:
        >>> t = PolicyTarget("P", "U", "C", "0123456789abcdef", 20, "UniPCMultistepScheduler")
        >>> peer_policy("cnwin-k10-drop", t, ["controlnet"]).controlnet.steps[-1]
        9
    """
    spec, m = _parse(name)
    return spec.build(target, list(module_keys), m, name)


def peer_params(name: str, num_steps: int) -> dict[str, Any]:
    """The search parameters a peer sets (named after the policy fields, as in ``hgc_tune.search``); the
    parameters it leaves out mean "no caching" for their part.

    Raises:
        PolicyError: An unknown name form.

    Example:
        >>> peer_params("tgate-g10-cfg", 20)
        {'attention.schedule': 'gate', 'attention.gate_step': 10, 'guidance.cfg_until': 10}
    """
    spec, m = _parse(name)
    return spec.params(m, num_steps)
