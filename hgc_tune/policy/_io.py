"""The policy file format: strict, versioned, deterministic JSON.

Layout (``schema_version`` 3; the JSON Schema ``policies/policy.schema.json`` states it, and reading
validates against it)::

    {"schema_version": 3,
     "policies": [{"name": "...",
                   "target": {"pipeline_class", "unet_class", "controlnet_class", "fingerprint",
                              "num_steps", "scheduler", "condition_type", "model",
                              ["controlnets": [{"class", "fingerprint", "condition_type"}, ...]]},
                   "blocks": {"unet.down_blocks.1": [0, 3, 6], "controlnet.nets.1.mid_block": [...], ...},
                   "attention": {"unet.….attn2": [[start, end], ...], ...},
                   "controlnet": {"steps": [...], "mode": "reuse" | "drop"} | null,
                   ["controlnets": {"controlnet.nets.0": {"steps": [...], "mode": ...}, ...}],
                   "guidance": {"cfg_until": k} | null,
                   "provenance": {"source", "budget", "metric", ["confidence"], "fidelity", "macs", "study",
                                  "trial", "hgc_tune_version", "diffusers_version",
                                  ["lora": [{"name", "digest", "scale"}, ...]],
                                  ["constraints": {"confidence", "k", "level", "sharing", "prompt",
                                                   "items": [{"metric", "kind", "loss_mode", "budget",
                                                              "<split>_loss", "<split>_loss_upper", ...}]}],
                                  ["picture_fidelity": {"<split>_ssim", "<split>_psnr", ...}],
                                  ["prompt": {"guarded", "metric", "model", "digest"}],
                                  ["weights_digest"], ["guidance_scale"], ["samples_per_call"]}}]}

Version 2 adds several ControlNets (diffusers' ``MultiControlNetModel``): the target lists each ControlNet
(class, structural fingerprint, condition type) and ``controlnets`` holds each one's window. Version-1 files
(no such keys) load as before and are written back as version 1, byte for byte. ``provenance.lora`` (the LoRA
adapters the policy was tuned with) may appear in either version; it is written only when the policy was
tuned with a LoRA, so files without one keep their exact bytes. Version 3 adds several constraints:
``provenance.constraints`` records each constraint's metric, budget and bounds per split, the confidence ``c``
with which they hold together and the number ``k`` of constraints (each bound at ``1 − (1 − c)/k``), and
``provenance.picture_fidelity`` the SSIM and PSNR to the full-compute pictures. Files of versions 1 and 2
load as before (their ``metric`` at ``budget`` was the only constraint) and keep their version when written.
``provenance.prompt`` (what guarded the
prompt during the search: the prompt metric and, for a CLIP score, the CLIP model and its weights digest) is
written when the search recorded it, the same way.
``provenance.weights_digest`` and ``provenance.guidance_scale`` (the weights and the guidance scale a searched
policy's figures were measured at) are optional in every version and written only when recorded: older files
load without them.
``provenance.samples_per_call`` (the batch size the search generated with) is written only when it is not 1.

Reading is strict: the JSON Schema rejects an unknown key anywhere, a value of the wrong type or form and a
malformed module key; the message names the field and its value (``policies[0].target.num_steps must be an
integer, but got '10' (str)``). An unsupported ``schema_version`` is refused before that, naming the value.
What a schema cannot state (steps below ``num_steps``, disjoint windows, windows for the target's
ControlNets only) is the policy model's, and its messages are prefixed with the location too. Duplicate
keys, ``NaN``/``Infinity`` and malformed JSON are refused while parsing. Loading is plain :mod:`json`
parsing: a policy file never executes code. Writing is deterministic (sorted keys, two-space indent,
trailing newline) and atomic (a temporary file in the target's directory, then :func:`os.replace`), so a
reader never sees half a file.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, overload

from hgc_tune._atomic import atomic_write_text
from hgc_tune._files import open_input_file
from hgc_tune._json import load_json_text
from hgc_tune.errors import PolicyFormatError
from hgc_tune.models._blocks import MODULE_KEY_PATTERN
from hgc_tune.policy._model import (
    SCHEMA_VERSION,
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
    "policy_schema",
]

SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2, SCHEMA_VERSION)
# The JSON Schema, next to this module (``policies/policy.schema.json`` links to it).
SCHEMA_FILE = "policy.schema.json"
# A policy file of every condition type of an SDXL pipeline is under 1 MB.
MAX_POLICY_BYTES = 16 * 2**20

# Module keys are checked on read and on write, so a typo fails when the file is loaded rather than when it
# is applied.
_MODULE_KEY_RE = re.compile(MODULE_KEY_PATTERN)

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


@overload
def _json_number(value: Any, where: str, *, nullable: Literal[False] = False) -> int | float: ...


@overload
def _json_number(value: Any, where: str, *, nullable: bool) -> int | float | None: ...


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
        # Written only when recorded (schema_version 2), so version-1 files keep their exact bytes.
        **(
            {
                "controlnets": [
                    {"class": c.class_name, "fingerprint": c.fingerprint, "condition_type": c.condition_type}
                    for c in t.controlnets
                ]
            }
            if t.controlnets
            else {}
        ),
    }


def _provenance_to_json(p: Provenance, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {
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
    if p.samples_per_call != 1:
        out["samples_per_call"] = int(_json_number(p.samples_per_call, f"{where}.samples_per_call"))
    if p.weights_digest is not None:
        out["weights_digest"] = p.weights_digest
    if p.guidance_scale is not None:
        out["guidance_scale"] = _json_number(p.guidance_scale, f"{where}.guidance_scale")
    if p.constraints is not None:
        out["constraints"] = _constraints_to_json(p.constraints, f"{where}.constraints")
    if p.picture_fidelity:
        out["picture_fidelity"] = {
            str(k): _json_number(v, f"{where}.picture_fidelity[{k!r}]") for k, v in p.picture_fidelity.items()
        }
    if p.prompt is not None:
        out["prompt"] = dict(p.prompt)
    if p.lora:
        out["lora"] = [
            {"name": a.name, "digest": a.digest, "scale": _json_number(a.scale, f"{where}.lora[{i}].scale")}
            for i, a in enumerate(p.lora)
        ]
    return out


def _constraints_to_json(c: Mapping[str, Any], where: str) -> dict[str, Any]:
    def plain(value: Any, at: str) -> Any:
        # strings and null stay; numbers become plain (numpy scalars from a search); the rest is the schema's
        if value is None or isinstance(value, str | bool):
            return value
        if isinstance(value, numbers.Real):
            return _json_number(value, at)
        return value

    out = {str(k): plain(v, f"{where}.{k}") for k, v in c.items() if k != "items"}
    out["items"] = [
        {str(k): plain(v, f"{where}.items[{i}].{k}") for k, v in item.items()}
        for i, item in enumerate(c.get("items", ()))
    ]
    return out


def _policy_to_json(policy: Policy, where: str) -> dict[str, Any]:
    for key in policy.blocks:
        _check_module_key(key, f"{where}.blocks")
    for key in policy.attention:
        _check_module_key(key, f"{where}.attention")
    out = {
        "name": policy.name,
        "target": _target_to_json(policy.target),
        "blocks": {key: list(steps) for key, steps in policy.blocks.items()},
        "attention": {key: [[w.start, w.end] for w in ws] for key, ws in policy.attention.items()},
        "controlnet": _window_to_json(policy.controlnet),
        "guidance": None if policy.guidance is None else {"cfg_until": policy.guidance.cfg_until},
        "provenance": _provenance_to_json(policy.provenance, f"{where}.provenance"),
    }
    if policy.controlnets:
        out["controlnets"] = {key: _window_to_json(w) for key, w in policy.controlnets.items()}
    return out


def _window_to_json(window: ControlNetWindow | None) -> dict[str, Any] | None:
    return None if window is None else {"steps": list(window.steps), "mode": window.mode}


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


@functools.lru_cache(maxsize=1)
def policy_schema() -> dict[str, Any]:
    """The policy file's JSON Schema (shipped as ``policies/policy.schema.json``), parsed."""
    return json.loads(resources.files("hgc_tune.policy").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    base = jsonschema.Draft202012Validator
    # JSON Schema counts 4.0 as an integer; a step or a trial number written as 4.0 is a mistake here.
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, type_checker=checker)(policy_schema())


# Objects whose keys are data (module keys, metric names), written as ``blocks['unet.mid_block']``.
_MAPS = frozenset({"blocks", "attention", "controlnets", "fidelity", "macs", "picture_fidelity"})
_TYPE_WORDS = {
    "integer": "an integer",
    "string": "a string",
    "number": "a number",
    "array": "a list",
    "object": "an object",
    "null": "null",
    "boolean": "a boolean",
}


def _location(path: Any) -> str:
    """``["policies", 0, "blocks", "unet.mid_block", 1]`` -> ``policies[0].blocks['unet.mid_block'][1]``."""
    out = ""
    parts = list(path)
    for i, part in enumerate(parts):
        keyed = i > 0 and (parts[i - 1] in _MAPS or (i > 1 and parts[i - 2] == "macs"))
        if isinstance(part, int):
            out += f"[{part}]"
        elif keyed:
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out or "policy file"


def _false_schema_key(data: Any, error: Any) -> list[Any]:
    """The full path of a value a ``false`` schema refused (jsonschema leaves its key off the path)."""
    path = list(error.absolute_path)
    parent = data
    for part in path:
        parent = parent[part]
    if isinstance(parent, dict):
        path += [k for k, v in parent.items() if v is error.instance][:1]
    return path


def _schema_message(error: Any, data: Any) -> str:
    """A jsonschema error as hgc-tune says it: the field's location, what it must be, the value it has."""
    if error.schema is False:
        path = _false_schema_key(data, error)
        where = _location(path)
        if path and path[-1] in ("constraints", "picture_fidelity"):
            version = data.get("schema_version")
            return (
                f"{where} is not allowed with schema_version {version} (several constraints and picture "
                "fidelity need schema_version 3)."
            )
        return f"{where} is not allowed with schema_version 1 (several ControlNets need schema_version 2)."
    where, value = _location(error.absolute_path), error.instance
    rule, expected = error.validator, error.validator_value
    if "propertyNames" in error.absolute_schema_path:
        # The instance is the offending key; the path is the object holding it.
        key = value
        if rule == "not":
            return f"{where}[{key!r}]: cross-attention modules belong in `attention`."
        if expected == MODULE_KEY_PATTERN:
            return f"{where}: module key {key!r} must be `unet.<dotted.path>` or `controlnet.<dotted.path>`."
        if "attn2" in str(expected):
            return f"{where}[{key!r}]: reuse windows are for cross-attention (`…attn2`) modules only."
        return f"{where}: key {key!r} must match {expected!r}."
    if rule == "type":
        kinds = [expected] if isinstance(expected, str) else list(expected)
        return str(_fail_type(where, " or ".join(_TYPE_WORDS.get(k, k) for k in kinds), value))
    if rule == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        extra = [k for k in value if k not in known]
        return f"{where}: unknown key {extra[0]!r} (allowed keys: {', '.join(error.schema['properties'])})."
    if rule == "required":
        missing = [k for k in expected if k not in value]
        return f"{where}: missing required key {missing[0]!r}."
    if rule == "enum":
        return f"{where} must be one of {list(expected)}, but got {value!r}."
    if rule == "contains":
        return f"{where}: compute steps must include step 0 (nothing is cached before it), but got {value}."
    if rule == "uniqueItems":
        return f"{where}: steps must be unique, but got {value}."
    if rule in ("minItems", "items") and "prefixItems" in error.schema:
        return str(_fail_type(where, "a window [start, end]", value))
    if rule == "minItems" and where == "policies":
        return "policy file: a policy file must hold at least one policy, but `policies` is empty."
    if rule == "minItems":
        return f"{where} must hold at least {expected} item(s), but got {value!r}."
    if rule == "minimum":
        return f"{where} must be >= {expected}, but got {value!r}."
    if rule == "maximum":
        return f"{where} must be <= {expected}, but got {value!r}."
    if rule == "exclusiveMaximum":
        return f"{where} must be < {expected}, but got {value!r}."
    return f"{where}: {error.message}."


def _check_schema(data: Any) -> None:
    """Validate ``data`` against the shipped JSON Schema; raise the most specific error as a
    :class:`PolicyFormatError` that names the field and its value."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        raise PolicyFormatError(_schema_message(error, data))


def _finite_numbers(obj: Any, where: str) -> None:
    # JSON has no NaN or infinity (loads_policy refuses them), but a dict built in Python may hold them and
    # JSON Schema cannot say "finite".
    if isinstance(obj, float):
        _finite(obj, where)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _finite_numbers(v, f"{where}[{k!r}]")


def _target_from_json(d: dict[str, Any], where: str) -> PolicyTarget:
    specs = tuple(
        ControlNetSpec(c["class"], c["fingerprint"], c.get("condition_type"))
        for c in d.get("controlnets", ())
    )
    fields: dict[str, Any] = {k: d.get(k) for k in _TARGET_KEYS}
    try:
        return PolicyTarget(**fields, controlnets=specs)
    except PolicyFormatError as e:
        raise PolicyFormatError(f"{where}: {e}") from e


def _provenance_from_json(d: dict[str, Any], where: str) -> Provenance:
    _finite_numbers(d, where)
    number = lambda key: None if d.get(key) is None else float(d[key])  # noqa: E731
    return Provenance(
        source=d.get("source"),
        budget=number("budget"),
        metric=d.get("metric"),
        confidence=number("confidence"),
        fidelity=dict(d.get("fidelity", {})),
        macs={conv: dict(values) for conv, values in d.get("macs", {}).items()},
        study=d.get("study"),
        trial=d.get("trial"),
        hgc_tune_version=d.get("hgc_tune_version"),
        diffusers_version=d.get("diffusers_version"),
        samples_per_call=int(d.get("samples_per_call", 1)),
        lora=tuple(LoraSpec(a["name"], a["digest"], float(a["scale"])) for a in d.get("lora", ())),
        weights_digest=d.get("weights_digest"),
        guidance_scale=number("guidance_scale"),
        constraints=_constraints_from_json(d.get("constraints")),
        picture_fidelity=dict(d.get("picture_fidelity", {})),
        prompt=d.get("prompt"),
    )


def _constraints_from_json(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {**d, "items": [dict(item) for item in d["items"]]}


@overload
def _window(d: dict[str, Any]) -> ControlNetWindow: ...


@overload
def _window(d: None) -> None: ...


def _window(d: dict[str, Any] | None) -> ControlNetWindow | None:
    return None if d is None else ControlNetWindow(tuple(d["steps"]), d["mode"])


def _policy_from_json(d: dict[str, Any], where: str) -> Policy:
    guidance = d.get("guidance")
    try:
        return Policy(
            target=_target_from_json(d["target"], f"{where}.target"),
            blocks={key: tuple(steps) for key, steps in d.get("blocks", {}).items()},
            attention={
                key: tuple(ReuseWindow(*w) for w in windows)
                for key, windows in d.get("attention", {}).items()
            },
            controlnet=_window(d.get("controlnet")),
            controlnets={key: _window(w) for key, w in d.get("controlnets", {}).items()},
            guidance=None if guidance is None else GuidanceWindow(guidance["cfg_until"]),
            provenance=_provenance_from_json(d.get("provenance", {}), f"{where}.provenance"),
            name=d["name"],
        )
    except PolicyFormatError as e:
        if str(e).startswith(where):
            raise
        raise PolicyFormatError(f"{where}: {e}") from e


def policy_from_json(data: Mapping[str, Any]) -> PolicyFile:
    """Build a :class:`PolicyFile` from its JSON form, checking everything.

    The file is validated against the shipped JSON Schema (:func:`policy_schema`; keys, types, step and
    module-key forms), then the policy model checks what a schema cannot state (steps below
    ``target.num_steps``, disjoint windows, windows only for the target's ControlNets, one policy per
    condition type).

    Args:
        data: The parsed JSON (``{"schema_version": 2, "policies": [...]}``; version 1 is read too).

    Raises:
        PolicyFormatError: An unsupported ``schema_version``, anything the schema rejects or a policy that
            breaks the model's rules; the message names the field and its value
            (``policies[0].target.num_steps must be an integer, but got '10' (str)``).
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
    # Checked before the schema: a newer file is reported as newer, not as a pile of unknown keys.
    if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise PolicyFormatError(
            f"policy file: unsupported schema_version={version!r}; this hgc-tune reads schema versions "
            f"{list(SUPPORTED_SCHEMA_VERSIONS)}."
        )
    _check_schema(data)
    policies = tuple(_policy_from_json(p, f"policies[{i}]") for i, p in enumerate(data["policies"]))
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
    # A FIFO or a device is refused at once, a folder by name; nothing blocks.
    with open_input_file(path, what="policy file", error=PolicyFormatError) as f:
        try:
            # A policy is a few kB; a larger file is not read into memory at all.
            text = f.read(MAX_POLICY_BYTES + 1)
        except OSError as e:
            raise PolicyFormatError(f"policy file {str(path)!r} cannot be read: {e}.") from e
    return loads_policy(text, source=f"policy file {str(path)!r}")
