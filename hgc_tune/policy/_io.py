"""The policy file format: strict, versioned, deterministic JSON.

Layout (``schema_version`` 1; ``policies/policy.schema.json`` describes the same in JSON Schema)::

    {"schema_version": 1,
     "policies": [{"name": "...",
                   "target": {"pipeline_class", "unet_class", "controlnet_class", "fingerprint",
                              "num_steps", "scheduler", "condition_type", "model"},
                   "blocks": {"unet.down_blocks.1": [0, 3, 6], ...},
                   "attention": {"unet.….attn2": [[start, end], ...], ...},
                   "controlnet": {"steps": [...], "mode": "reuse" | "drop"} | null,
                   "guidance": {"cfg_until": k} | null,
                   "provenance": {"source", "budget", "metric", ["confidence"], "fidelity", "macs", "study",
                                  "trial", "hgc_tune_version", "diffusers_version"}}]}

Reading is strict: an unknown key anywhere, a value of the wrong type, an unsupported ``schema_version``,
duplicate keys, ``NaN``/``Infinity`` or malformed JSON raise :class:`~hgc_tune.errors.PolicyFormatError`
with the location of the problem (``policies[0].target.num_steps``). The semantic rules (steps in range, step
0 computed, windows disjoint) are the policy model's, and its messages are prefixed with the location too.
Loading is plain :mod:`json` parsing: a policy file never executes code. Writing is deterministic (sorted
keys, two-space indent, trailing newline) and atomic (a temporary file in the target's directory, then
:func:`os.replace`), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hgc_tune._atomic import atomic_write_text
from hgc_tune._json import load_json_text
from hgc_tune.errors import PolicyFormatError
from hgc_tune.models._blocks import MODULE_KEY_PATTERN
from hgc_tune.policy._model import (
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
    "SUPPORTED_SCHEMA_VERSIONS",
    "MODULE_KEY_PATTERN",
    "policy_to_json",
    "policy_from_json",
    "dumps_policy",
    "loads_policy",
    "load_policy",
    "save_policy",
    "pareto_path",
]

SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (SCHEMA_VERSION,)
# A policy file of every condition type of an SDXL pipeline is under 1 MB.
MAX_POLICY_BYTES = 16 * 2**20

# Module keys are checked on read and on write, so a typo fails when the file is loaded rather than when it
# is applied.
_MODULE_KEY_RE = re.compile(MODULE_KEY_PATTERN)

_FILE_KEYS = ("schema_version", "policies")
_POLICY_KEYS = ("name", "target", "blocks", "attention", "controlnet", "guidance", "provenance")
_POLICY_REQUIRED = ("name", "target")
_TARGET_KEYS = (
    "pipeline_class",
    "unet_class",
    "controlnet_class",
    "fingerprint",
    "num_steps",
    "scheduler",
    "condition_type",
    "model",
)
_TARGET_REQUIRED = _TARGET_KEYS[:6]
_CONTROLNET_KEYS = ("steps", "mode")
_GUIDANCE_KEYS = ("cfg_until",)
_PROVENANCE_KEYS = (
    "source",
    "budget",
    "metric",
    "confidence",
    "fidelity",
    "macs",
    "study",
    "trial",
    "hgc_tune_version",
    "diffusers_version",
)


# ----------------------------------------------------------------------------------------------- writing


def _check_module_key(key: str, where: str) -> None:
    if not isinstance(key, str) or not _MODULE_KEY_RE.match(key):
        raise PolicyFormatError(
            f"{where}: module key {key!r} must be `unet.<dotted.path>` or `controlnet.<dotted.path>`."
        )


def _finite(value: Any, where: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise PolicyFormatError(f"{where} must be a finite number, but got {value!r}.")
    return value


def _json_number(value: Any, where: str, *, nullable: bool = False) -> int | float | None:
    """A provenance number as a plain int/float (search code may hand over numpy scalars)."""
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PolicyFormatError(f"{where} must be a number, but got {value!r}.")
    return int(value) if isinstance(value, numbers.Integral) else _finite(float(value), where)


def _target_to_json(t: PolicyTarget) -> dict[str, Any]:
    return {
        "pipeline_class": t.pipeline_class,
        "unet_class": t.unet_class,
        "controlnet_class": t.controlnet_class,
        "fingerprint": t.fingerprint,
        "num_steps": t.num_steps,
        "scheduler": t.scheduler,
        "condition_type": t.condition_type,
        "model": t.model,
    }


def _provenance_to_json(p: Provenance, where: str) -> dict[str, Any]:
    out = {
        "source": p.source,
        "budget": _json_number(p.budget, f"{where}.budget", nullable=True),
        "metric": p.metric,
        "fidelity": {str(k): _json_number(v, f"{where}.fidelity[{k!r}]") for k, v in p.fidelity.items()},
        "macs": {
            str(conv): {str(k): _json_number(v, f"{where}.macs[{conv!r}][{k!r}]") for k, v in values.items()}
            for conv, values in p.macs.items()
        },
        "study": p.study,
        "trial": None if p.trial is None else int(_json_number(p.trial, f"{where}.trial")),
        "hgc_tune_version": p.hgc_tune_version,
        "diffusers_version": p.diffusers_version,
    }
    # Written only when set, so files made before the field existed keep their exact bytes.
    if p.confidence is not None:
        out["confidence"] = _json_number(p.confidence, f"{where}.confidence")
    return out


def _policy_to_json(policy: Policy, where: str) -> dict[str, Any]:
    for key in policy.blocks:
        _check_module_key(key, f"{where}.blocks")
    for key in policy.attention:
        _check_module_key(key, f"{where}.attention")
    cn = policy.controlnet
    return {
        "name": policy.name,
        "target": _target_to_json(policy.target),
        "blocks": {key: list(steps) for key, steps in policy.blocks.items()},
        "attention": {key: [[w.start, w.end] for w in ws] for key, ws in policy.attention.items()},
        "controlnet": None if cn is None else {"steps": list(cn.steps), "mode": cn.mode},
        "guidance": None if policy.guidance is None else {"cfg_until": policy.guidance.cfg_until},
        "provenance": _provenance_to_json(policy.provenance, f"{where}.provenance"),
    }


def policy_to_json(policy_or_file: Policy | PolicyFile) -> dict[str, Any]:
    """The JSON form (a plain ``dict``) of a policy file; a single policy is written as a one-policy file.

    Args:
        policy_or_file: A :class:`Policy` or a :class:`PolicyFile`.

    Returns:
        ``{"schema_version": 1, "policies": [...]}`` holding only JSON types.

    Raises:
        PolicyFormatError: A module key that is not ``unet.…``/``controlnet.…``, or a non-finite number
            in the provenance.
    """
    file = _as_file(policy_or_file)
    return {
        "schema_version": file.schema_version,
        "policies": [_policy_to_json(p, f"policies[{i}]") for i, p in enumerate(file.policies)],
    }


def _as_file(policy_or_file: Policy | PolicyFile) -> PolicyFile:
    if isinstance(policy_or_file, PolicyFile):
        return policy_or_file
    if isinstance(policy_or_file, Policy):
        return PolicyFile((policy_or_file,))
    raise PolicyFormatError(
        f"expected a Policy or a PolicyFile, but got {type(policy_or_file).__name__}: {policy_or_file!r}."
    )


def dumps_policy(policy_or_file: Policy | PolicyFile) -> str:
    """The policy file's text: sorted keys, two-space indent, trailing newline. Deterministic.

    Example:
        >>> from hgc_tune.policy import PolicyTarget, full_compute_policy
        >>> t = PolicyTarget("P", "U", "C", "0123456789abcdef", 20, "UniPCMultistepScheduler")
        >>> dumps_policy(full_compute_policy(t)).splitlines()[1]
        '  "policies": ['
    """
    return json.dumps(policy_to_json(policy_or_file), sort_keys=True, indent=2, allow_nan=False) + "\n"


def save_policy(policy_or_file: Policy | PolicyFile, path: str | os.PathLike[str]) -> Path:
    """Write a policy file atomically (temporary file in the same directory, then :func:`os.replace`).

    The parent directory is created if missing. A new file gets mode 0644; an existing file keeps its
    permission bits.

    Args:
        policy_or_file: A :class:`Policy` (written as a one-policy file) or a :class:`PolicyFile`.
        path: Destination, conventionally ``policies/<model>-<condition>.json``.

    Returns:
        The path written.
    """
    return atomic_write_text(path, dumps_policy(policy_or_file))


def pareto_path(out: str | os.PathLike[str]) -> Path:
    """Where the Pareto JSON of a policy goes: ``policies/NAME.json`` -> ``policies/NAME.pareto.json``."""
    out = Path(out)
    stem = out.name[: -len(".json")] if out.name.endswith(".json") else out.name
    return out.with_name(f"{stem}.pareto.json")


# ----------------------------------------------------------------------------------------------- reading


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fail_type(where: str, expected: str, value: Any) -> PolicyFormatError:
    return PolicyFormatError(f"{where} must be {expected}, but got {value!r} ({_type_name(value)}).")


def _object(value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise _fail_type(where, "an object", value)
    for key in value:
        if key not in allowed:
            raise PolicyFormatError(f"{where}: unknown key {key!r} (allowed keys: {', '.join(allowed)}).")
    for key in required:
        if key not in value:
            raise PolicyFormatError(f"{where}: missing required key {key!r}.")
    return value


def _mapping(value: Any, where: str) -> dict:
    """A JSON object used as a map (any keys), as opposed to a record with a fixed set of keys."""
    if not isinstance(value, dict):
        raise _fail_type(where, "an object", value)
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail_type(where, "an integer", value)
    return value


def _str(value: Any, where: str, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise _fail_type(where, "a string or null" if nullable else "a string", value)
    return value


def _number(value: Any, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail_type(where, "a number", value)
    return _finite(value, where)


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise _fail_type(where, "a list", value)
    return value


def _target_from_json(data: Any, where: str) -> PolicyTarget:
    d = _object(data, where, _TARGET_KEYS, _TARGET_REQUIRED)
    kwargs: dict[str, Any] = {
        key: _str(d[key], f"{where}.{key}")
        for key in ("pipeline_class", "unet_class", "controlnet_class", "fingerprint", "scheduler")
    }
    kwargs["num_steps"] = _int(d["num_steps"], f"{where}.num_steps")
    kwargs["condition_type"] = _str(d.get("condition_type"), f"{where}.condition_type", nullable=True)
    kwargs["model"] = _str(d.get("model"), f"{where}.model", nullable=True)
    try:
        return PolicyTarget(**kwargs)
    except PolicyFormatError as e:
        raise PolicyFormatError(f"{where}: {e}") from e


def _provenance_from_json(data: Any, where: str) -> Provenance:
    d = _object(data, where, _PROVENANCE_KEYS)
    fidelity = {
        k: _number(v, f"{where}.fidelity[{k!r}]")
        for k, v in _mapping(d.get("fidelity", {}), f"{where}.fidelity").items()
    }
    macs: dict[str, dict[str, int | float]] = {}
    for conv, values in _mapping(d.get("macs", {}), f"{where}.macs").items():
        at = f"{where}.macs[{conv!r}]"
        macs[conv] = {k: _number(v, f"{at}[{k!r}]") for k, v in _mapping(values, at).items()}
    budget = d.get("budget")
    confidence = d.get("confidence")
    trial = d.get("trial")
    return Provenance(
        source=_str(d.get("source"), f"{where}.source", nullable=True),
        budget=None if budget is None else float(_number(budget, f"{where}.budget")),
        metric=_str(d.get("metric"), f"{where}.metric", nullable=True),
        confidence=None if confidence is None else float(_number(confidence, f"{where}.confidence")),
        fidelity=fidelity,
        macs=macs,
        study=_str(d.get("study"), f"{where}.study", nullable=True),
        trial=None if trial is None else _int(trial, f"{where}.trial"),
        hgc_tune_version=_str(d.get("hgc_tune_version"), f"{where}.hgc_tune_version", nullable=True),
        diffusers_version=_str(d.get("diffusers_version"), f"{where}.diffusers_version", nullable=True),
    )


def _policy_from_json(data: Any, where: str) -> Policy:
    d = _object(data, where, _POLICY_KEYS, _POLICY_REQUIRED)
    name = _str(d["name"], f"{where}.name")
    target = _target_from_json(d["target"], f"{where}.target")

    blocks = {}
    for key, steps in _mapping(d.get("blocks", {}), f"{where}.blocks").items():
        _check_module_key(key, f"{where}.blocks")
        at = f"{where}.blocks[{key!r}]"
        blocks[key] = tuple(_int(s, f"{at}[{j}]") for j, s in enumerate(_list(steps, at)))

    attention = {}
    for key, windows in _mapping(d.get("attention", {}), f"{where}.attention").items():
        _check_module_key(key, f"{where}.attention")
        at = f"{where}.attention[{key!r}]"
        parsed = []
        for j, w in enumerate(_list(windows, at)):
            if not isinstance(w, list) or len(w) != 2:
                raise _fail_type(f"{at}[{j}]", "a window [start, end]", w)
            parsed.append(ReuseWindow(_int(w[0], f"{at}[{j}][0]"), _int(w[1], f"{at}[{j}][1]")))
        attention[key] = tuple(parsed)

    controlnet = None
    if d.get("controlnet") is not None:
        at = f"{where}.controlnet"
        c = _object(d["controlnet"], at, _CONTROLNET_KEYS, _CONTROLNET_KEYS)
        steps = tuple(_int(s, f"{at}.steps[{j}]") for j, s in enumerate(_list(c["steps"], f"{at}.steps")))
        controlnet = ControlNetWindow(steps, _str(c["mode"], f"{at}.mode"))

    guidance = None
    if d.get("guidance") is not None:
        at = f"{where}.guidance"
        g = _object(d["guidance"], at, _GUIDANCE_KEYS, _GUIDANCE_KEYS)
        guidance = GuidanceWindow(_int(g["cfg_until"], f"{at}.cfg_until"))

    provenance = _provenance_from_json(d.get("provenance", {}), f"{where}.provenance")
    try:
        return Policy(
            target=target,
            blocks=blocks,
            attention=attention,
            controlnet=controlnet,
            guidance=guidance,
            provenance=provenance,
            name=name,
        )
    except PolicyFormatError as e:
        raise PolicyFormatError(f"{where}: {e}") from e


def policy_from_json(data: Mapping[str, Any]) -> PolicyFile:
    """Build a :class:`PolicyFile` from its JSON form, checking everything.

    Args:
        data: The parsed JSON (``{"schema_version": 1, "policies": [...]}``).

    Raises:
        PolicyFormatError: Unknown or missing keys, wrong types, an unsupported ``schema_version`` or a
            policy that breaks the model's rules; the message says where (``policies[0].target.num_steps``).
    """
    if not isinstance(data, dict):
        raise _fail_type("policy file", "a JSON object", data)
    if "schema_version" not in data:
        hint = (
            " This looks like a single policy: wrap it as "
            f'{{"schema_version": {SCHEMA_VERSION}, "policies": [<policy>]}}.'
            if "target" in data
            else ""
        )
        raise PolicyFormatError(f"policy file: missing required key 'schema_version'.{hint}")
    version = data["schema_version"]
    if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise PolicyFormatError(
            f"policy file: unsupported schema_version={version!r}; this hgc-tune reads schema versions "
            f"{list(SUPPORTED_SCHEMA_VERSIONS)}."
        )
    _object(data, "policy file", _FILE_KEYS, _FILE_KEYS)
    policies = tuple(
        _policy_from_json(p, f"policies[{i}]") for i, p in enumerate(_list(data["policies"], "policies"))
    )
    try:
        return PolicyFile(policies, schema_version=version)
    except PolicyFormatError as e:
        raise PolicyFormatError(f"policy file: {e}") from e


class _HookError(PolicyFormatError):
    """Raised by the parse hooks; :func:`loads_policy` prefixes the source to its message."""


def _reject_constant(name: str) -> Any:
    raise _HookError(f"{name} is not valid JSON (numbers must be finite).")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # json would silently keep the last one; a policy file must say one thing.
            raise _HookError(f"duplicate key {key!r} in a JSON object.")
        out[key] = value
    return out


def loads_policy(text: str | bytes, *, source: str = "policy file") -> PolicyFile:
    """Parse a policy file's text (see :func:`policy_from_json`).

    Args:
        text: The file's content.
        source: How to name the input in error messages (a path, for :func:`load_policy`).

    Raises:
        PolicyFormatError: Malformed JSON (with line and column) or anything :func:`policy_from_json` rejects.
    """
    try:
        data = load_json_text(
            text,
            what=source,
            error=PolicyFormatError,
            max_bytes=MAX_POLICY_BYTES,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except _HookError as e:
        raise PolicyFormatError(f"{source}: {e}") from e
    try:
        return policy_from_json(data)
    except PolicyFormatError as e:
        if source == "policy file":
            raise
        raise PolicyFormatError(f"{source}: {e}") from e


def load_policy(path: str | os.PathLike[str]) -> PolicyFile:
    """Read and check a policy file. Plain JSON parsing: loading never executes code.

    Args:
        path: A policy JSON file.

    Returns:
        The :class:`PolicyFile`; ``.select(condition_type)`` picks the policy for a condition.

    Raises:
        PolicyFormatError: A missing or unreadable file, or content :func:`loads_policy` rejects.

    Example:
        >>> pf = load_policy("policies/tiny-deepcache-n3-b0.json")
        >>> pf.select().name
        'deepcache-n3-b0'
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            # A policy is a few kB; a larger file is not read into memory at all.
            text = f.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError as e:
        raise PolicyFormatError(f"policy file {str(path)!r} does not exist.") from e
    except OSError as e:
        raise PolicyFormatError(f"policy file {str(path)!r} cannot be read: {e}.") from e
    return loads_policy(text, source=f"policy file {str(path)!r}")
