"""The profile artifact: a folder with ``profile.json`` (metadata) and ``profile.safetensors`` (tensors).

Tensors are named ``"{stat}/{module_key}"`` with ``stat = "{mean|std}_{metric}"`` (float32 ``[steps]``), plus
``reference/latents`` (float32 ``[N, 4, h, w]``), ``reference/images`` and ``reference/conditions`` (uint8
``[N, H, W, 3]``). ``profile.json`` records the sha256 of the tensor file, so a truncated or modified file is
refused on load. Nothing is pickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from hgc_tune._atomic import atomic_write_files, created_folder, remove_stale_temporaries
from hgc_tune._json import load_json_file
from hgc_tune.errors import ProfileError
from hgc_tune.macs import MacTable
from hgc_tune.profile._observer import ATTENTION_METRICS, BLOCK_METRICS

__all__ = [
    "AGGREGATES",
    "ATTENTION_STATS",
    "BLOCK_STATS",
    "FORMAT",
    "META_FILE",
    "Profile",
    "SCHEMA_VERSION",
    "TENSOR_FILE",
    "stat_name",
]

FORMAT = "hgc-tune-profile"
SCHEMA_VERSION = 1
META_FILE = "profile.json"
TENSOR_FILE = "profile.safetensors"
# Earlier versions wrote both files into a temporary folder of this prefix (carrying no process id).
_LEGACY_TMP_PREFIX = ".profile-tmp-"
AGGREGATES: tuple[str, ...] = ("mean", "std")
_TASKS: tuple[str, ...] = ("text2img", "img2img", "inpaint")
# The largest `samples_per_call` a profile may record (a sanity bound on a hand-edited file).
MAX_SAMPLES_PER_CALL = 4096

REFERENCE_LATENTS = "reference/latents"
REFERENCE_IMAGES = "reference/images"
REFERENCE_CONDITIONS = "reference/conditions"
# img2img and inpainting profiles also hold the init images, inpainting profiles the masks (uint8 [N, H, W],
# 255 = repainted), both at the generation resolution: the search repeats the references from them.
REFERENCE_INIT_IMAGES = "reference/init_images"
REFERENCE_MASKS = "reference/masks"


def stat_name(aggregate: str, metric: str) -> str:
    """The statistic name of an aggregate over samples of a per-step metric, e.g. ``mean_cos``."""
    return f"{aggregate}_{metric}"


BLOCK_STATS: tuple[str, ...] = tuple(stat_name(a, m) for m in BLOCK_METRICS for a in AGGREGATES)
ATTENTION_STATS: tuple[str, ...] = tuple(stat_name(a, m) for m in ATTENTION_METRICS for a in AGGREGATES)

# Metadata fields every profile carries (the loader refuses a profile.json without them).
_REQUIRED_META: tuple[str, ...] = (
    "format",
    "schema_version",
    "hgc_tune_version",
    "model",
    "dataset",
    "condition_type",
    "steps",
    "scheduler",
    "resolution",
    "guidance_scale",
    "seeds",
    "prompts",
    "negative_prompts",
    "statistics",
    "block_keys",
    "attention_keys",
    "mac_table",
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Profile:
    """A profile of a pipeline on a set of samples: per-step statistics of every cacheable module, the MAC
    table and the full-compute reference outputs.

    Build one with :func:`~hgc_tune.profile.profile_pipeline`, or :meth:`load` a saved one.

    Args:
        meta: The metadata (see ``profile.json``).
        tensors: Every tensor by name (see the module docstring).

    Raises:
        ProfileError: If the metadata or the tensors violate the format.
    """

    def __init__(self, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        self._meta = copy.deepcopy(meta)
        self._tensors = dict(tensors)
        _validate(self._meta, self._tensors, where="profile")

    # -- metadata ---------------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata (what ``profile.json`` holds)."""
        return copy.deepcopy(self._meta)

    @property
    def model_name(self) -> str:
        return self._meta["model"]["name"]

    @property
    def fingerprint(self) -> str:
        """The structural fingerprint of the profiled pipeline (``hgc_tune.models.model_fingerprint``)."""
        return self._meta["model"]["fingerprint"]

    @property
    def weights_digest(self) -> str | None:
        """The profiled weights (``hgc_tune.models._fingerprint.weights_digest``); ``None`` for profiles made
        before hgc-tune recorded it."""
        return self._meta["model"].get("weights_digest")

    @property
    def condition_type(self) -> str:
        return self._meta["condition_type"]

    @property
    def num_steps(self) -> int:
        """Number of denoising steps ``S`` the samples ran (img2img and inpainting with ``strength < 1`` run
        fewer than ``num_inference_steps``); every statistic has shape ``[S]``."""
        return int(self._meta["steps"])

    @property
    def task(self) -> str:
        """``text2img``, ``img2img`` or ``inpaint`` (profiles without the field are text2img)."""
        return str(self._meta.get("task", "text2img"))

    @property
    def strength(self) -> float | None:
        """The img2img or inpainting ``strength`` the samples ran at; ``None`` for text2img."""
        value = self._meta.get("strength")
        return None if value is None else float(value)

    @property
    def samples_per_call(self) -> int:
        """How many samples one pipeline call generated (the references' batching; a profile made before
        batched generation: 1)."""
        return int(self._meta.get("samples_per_call", 1))

    @property
    def num_inference_steps(self) -> int:
        """The ``num_inference_steps`` the pipeline was called with; more than :attr:`num_steps` when
        ``strength < 1`` skipped timesteps (img2img, inpainting)."""
        return int(self._meta.get("num_inference_steps", self._meta["steps"]))

    @property
    def num_samples(self) -> int:
        return len(self._meta["seeds"])

    @property
    def guidance_scale(self) -> float:
        return float(self._meta["guidance_scale"])

    @property
    def resolution(self) -> tuple[int, int]:
        """``(height, width)`` of the generated images."""
        return int(self._meta["resolution"]["height"]), int(self._meta["resolution"]["width"])

    @property
    def seeds(self) -> list[int]:
        return list(self._meta["seeds"])

    @property
    def prompts(self) -> list[str]:
        return list(self._meta["prompts"])

    @property
    def negative_prompts(self) -> list[str | None]:
        return list(self._meta["negative_prompts"])

    @property
    def block_keys(self) -> list[str]:
        """Module keys of the profiled blocks (``controlnet`` = the whole ControlNet), in execution order."""
        return list(self._meta["block_keys"])

    @property
    def attention_keys(self) -> list[str]:
        """Module keys of the profiled cross-attention (``attn2``) modules."""
        return list(self._meta["attention_keys"])

    @property
    def mac_table(self) -> MacTable:
        """The per-module MAC table (:class:`hgc_tune.macs.MacTable`)."""
        return MacTable.from_json(self._meta["mac_table"])

    # -- tensors ----------------------------------------------------------------------------------------
    def stat_names(self, key: str) -> tuple[str, ...]:
        """The statistics recorded for module ``key``."""
        if key in self._meta["block_keys"]:
            return BLOCK_STATS
        if key in self._meta["attention_keys"]:
            return ATTENTION_STATS
        raise ProfileError(
            f"`key` must be a profiled module key (see Profile.block_keys and Profile.attention_keys), "
            f"but got key={key!r}."
        )

    def stat(self, name: str, key: str) -> np.ndarray:
        """One statistic of one module over the steps: float32 ``[steps]`` (NaN at step 0).

        Args:
            name: ``mean_`` or ``std_`` followed by a metric: ``cos``, ``rel_l1`` (blocks and ``controlnet``);
                ``js``, ``map_rel_l1``, ``out_rel_l1`` (cross-attention).
            key: A module key from :attr:`block_keys` or :attr:`attention_keys`.
        """
        names = self.stat_names(key)
        if name not in names:
            raise ProfileError(
                f"`name` must be one of {list(names)} for module {key!r}, but got name={name!r}."
            )
        return self._tensors[f"{name}/{key}"].copy()

    def stat_matrix(self, name: str, keys: list[str] | None = None) -> np.ndarray:
        """A statistic for several modules, float32 ``[len(keys), steps]`` (rows in ``keys`` order).

        ``keys`` defaults to every module that records ``name``.
        """
        if keys is None:
            keys = [k for k in [*self.block_keys, *self.attention_keys] if name in self.stat_names(k)]
        if not keys:
            return np.zeros((0, self.num_steps), dtype=np.float32)
        return np.stack([self.stat(name, k) for k in keys])

    @property
    def reference_latents(self) -> np.ndarray:
        """Final full-compute latents, float32 ``[N, 4, h, w]`` (before the VAE's scaling)."""
        return self._tensors[REFERENCE_LATENTS].copy()

    @property
    def reference_images(self) -> np.ndarray:
        """Full-compute images, uint8 ``[N, H, W, 3]``, as ``pipe(..., output_type="np")`` × 255, rounded."""
        return self._tensors[REFERENCE_IMAGES].copy()

    @property
    def condition_images(self) -> np.ndarray:
        """The condition images, uint8 ``[N, H, W, 3]`` at the generation resolution (``[N, k, H, W, 3]``
        with k ControlNets)."""
        return self._tensors[REFERENCE_CONDITIONS].copy()

    @property
    def init_images(self) -> np.ndarray | None:
        """The init images of an img2img or inpainting profile, uint8 ``[N, H, W, 3]``; else ``None``."""
        array = self._tensors.get(REFERENCE_INIT_IMAGES)
        return None if array is None else array.copy()

    @property
    def masks(self) -> np.ndarray | None:
        """The masks of an inpainting profile, uint8 ``[N, H, W]`` (255: repainted); else ``None``."""
        array = self._tensors.get(REFERENCE_MASKS)
        return None if array is None else array.copy()

    def tensors(self) -> dict[str, np.ndarray]:
        """Copies of every tensor by name (what ``profile.safetensors`` holds)."""
        return {name: array.copy() for name, array in self._tensors.items()}

    # -- files ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``profile.json`` and ``profile.safetensors`` into the folder ``path`` (created if needed).

        Both files are written, flushed, and only then replace the old ones, the tensors before the metadata
        (:func:`hgc_tune._atomic.atomic_write_files`): a failed save (a full disk) leaves the old profile as
        it was, and no folder it created; a reader sees the old profile, the new one, or (after a crash
        between the two replaces) a sha256 mismatch, never a silent mix. Temporary files a killed earlier
        save left in ``path`` are removed first. Other files in ``path`` are left alone; an existing profile
        is replaced.

        Returns:
            The folder.
        """
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise ProfileError(f"`path` must be a folder, but got path={str(folder)!r}, which is a file.")
        blob = save_tensors(
            {name: np.ascontiguousarray(array) for name, array in self._tensors.items()},
            metadata={"format": FORMAT, "schema_version": str(SCHEMA_VERSION)},
        )
        recorded = {"name": TENSOR_FILE, "sha256": _sha256(blob), "bytes": len(blob)}
        meta = {**self._meta, "tensor_file": recorded}
        text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False).encode("utf-8") + b"\n"
        # A folder this save creates is removed again when the save fails.
        with created_folder(folder):
            remove_stale_temporaries(folder, legacy_prefixes=(_LEGACY_TMP_PREFIX,))
            atomic_write_files(
                {
                    folder / TENSOR_FILE: lambda p: p.write_bytes(blob),
                    folder / META_FILE: lambda p: p.write_bytes(text),
                }
            )
        self._meta = meta
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Load a profile folder (or its ``profile.json``).

        Raises:
            ProfileError: If a file is missing, ``profile.json`` is not valid JSON or has another format or
                schema version, the tensor file's sha256 differs from the recorded one (truncated or
                modified), the tensor file does not parse, or a tensor is missing or has the wrong shape.
        """
        given = Path(path)
        folder = given.parent if given.name == META_FILE else given
        meta_path, tensor_path = folder / META_FILE, folder / TENSOR_FILE
        for file in (meta_path, tensor_path):
            if file.exists() and not file.is_file():  # a folder, FIFO or device: never opened
                raise ProfileError(
                    f"cannot read profile file {str(file)!r}: it must be a regular file; profile again."
                )
            if not file.is_file():
                raise ProfileError(
                    f"no profile at {str(folder)!r}: {file.name} is missing; run `hgc-tune profile --out "
                    f"{folder}` first."
                )
        # What a killed save left is removed by any later look at the folder, not only by the next save.
        remove_stale_temporaries(folder, legacy_prefixes=(_LEGACY_TMP_PREFIX,))
        meta = load_json_file(meta_path, what="profile metadata", error=ProfileError)
        if not isinstance(meta, dict):
            raise ProfileError(
                f"{str(meta_path)!r} must hold a JSON object, but holds a {type(meta).__name__}."
            )
        _check_header(meta, str(meta_path))
        missing = [field for field in _REQUIRED_META if field not in meta]
        if missing:
            raise ProfileError(f"{str(meta_path)!r}: metadata misses the fields {missing}; profile again.")
        # Before the tensor file is read: nothing is sized by a field of the wrong type.
        _check_field_types(meta, str(meta_path))
        recorded = meta.get("tensor_file", {})
        if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
            raise ProfileError(f"{str(meta_path)!r} must record `tensor_file.sha256`; profile it again.")
        blob = tensor_path.read_bytes()
        digest = _sha256(blob)
        if digest != recorded["sha256"]:
            raise ProfileError(
                f"{str(tensor_path)!r} does not match its recorded sha256 (recorded "
                f"{recorded['sha256'][:16]}…, file {digest[:16]}…; {len(blob)} bytes, recorded "
                f"{recorded.get('bytes')}): it was truncated or modified. Profile again."
            )
        try:
            tensors = load_tensors(blob)
        except Exception as e:  # safetensors raises its own error types and plain ones for bad headers
            raise ProfileError(f"{str(tensor_path)!r} is not a valid safetensors file: {e}") from e
        profile = cls.__new__(cls)
        profile._meta, profile._tensors = meta, dict(tensors)
        _validate(meta, profile._tensors, where=str(folder))
        return profile

    def __repr__(self) -> str:
        return (
            f"Profile(model={self.model_name!r}, condition={self.condition_type!r}, "
            f"steps={self.num_steps}, samples={self.num_samples}, blocks={len(self.block_keys)}, "
            f"attentions={len(self.attention_keys)})"
        )


# The most denoising steps a profile may declare (as a policy: diffusers' 1000 training timesteps).
MAX_STEPS = 1000
# The largest image side a profile may declare (its reference images are [N, H, W, 3]).
MAX_SIDE = 8192
# The most ControlNets (condition images per sample) a profile may declare.
MAX_CONDITIONS = 16


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_list_of(value: Any, *kinds: type) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, kinds) and not isinstance(v, bool) or (v is None and type(None) in kinds) for v in value
    )


def _check_field_types(meta: dict[str, Any], where: str) -> None:
    """Refuse a metadata field of the wrong type or size, before anything is sized by it: one line naming
    the field, its value and what it must be."""
    model = meta["model"]
    rules: list[tuple[str, Any, bool, str]] = [
        ("steps", meta["steps"], _is_int(meta["steps"], 1, MAX_STEPS), f"an integer in [1, {MAX_STEPS}]"),
        ("seeds", meta["seeds"], _is_list_of(meta["seeds"], int), "a list of integers"),
        ("prompts", meta["prompts"], _is_list_of(meta["prompts"], str), "a list of strings"),
        (
            "negative_prompts",
            meta["negative_prompts"],
            _is_list_of(meta["negative_prompts"], str, type(None)),
            "a list of strings or nulls",
        ),
        ("block_keys", meta["block_keys"], _is_list_of(meta["block_keys"], str), "a list of module keys"),
        (
            "attention_keys",
            meta["attention_keys"],
            _is_list_of(meta["attention_keys"], str),
            "a list of module keys",
        ),
        (
            "model",
            model,
            isinstance(model, dict)
            and isinstance(model.get("name"), str)
            and isinstance(model.get("fingerprint"), str),
            "an object with the string fields `name` and `fingerprint`",
        ),
        ("dataset", meta["dataset"], isinstance(meta["dataset"], dict), "an object"),
        ("condition_type", meta["condition_type"], isinstance(meta["condition_type"], str), "a string"),
        ("scheduler", meta["scheduler"], isinstance(meta["scheduler"], str), "a string"),
        ("guidance_scale", meta["guidance_scale"], _is_number(meta["guidance_scale"]), "a finite number"),
        ("statistics", meta["statistics"], isinstance(meta["statistics"], dict), "an object"),
        ("mac_table", meta["mac_table"], isinstance(meta["mac_table"], dict), "an object"),
    ]
    resolution = meta["resolution"]
    rules.append(
        (
            "resolution",
            resolution,
            isinstance(resolution, dict)
            and all(_is_int(resolution.get(side), 1, MAX_SIDE) for side in ("height", "width")),
            f"an object with integer `height` and `width` in [1, {MAX_SIDE}]",
        )
    )
    if "task" in meta:
        rules.append(("task", meta["task"], meta["task"] in _TASKS, f"one of {list(_TASKS)}"))
    if "conditions_per_sample" in meta:
        value = meta["conditions_per_sample"]
        rules.append(
            (
                "conditions_per_sample",
                value,
                _is_int(value, 1, MAX_CONDITIONS),
                f"an integer in [1, {MAX_CONDITIONS}]",
            )
        )
    if meta.get("strength") is not None:
        value = meta["strength"]
        rules.append(("strength", value, _is_number(value) and 0 < value <= 1, "null or a number in (0, 1]"))
    if "num_inference_steps" in meta:
        value = meta["num_inference_steps"]
        rules.append(
            ("num_inference_steps", value, _is_int(value, 1, MAX_STEPS), f"an integer in [1, {MAX_STEPS}]")
        )
    if "samples_per_call" in meta:  # absent in a profile made before batched generation: 1
        value = meta["samples_per_call"]
        rules.append(
            (
                "samples_per_call",
                value,
                _is_int(value, 1, MAX_SAMPLES_PER_CALL),
                f"an integer in [1, {MAX_SAMPLES_PER_CALL}]",
            )
        )
    for field, value, fits, expected in rules:
        if not fits:
            raise ProfileError(f"{where}: `{field}` must be {expected}, but got {field}={_short(value)}.")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_header(meta: dict[str, Any], where: str) -> None:
    if meta.get("format") != FORMAT:
        raise ProfileError(f"{where}: `format` must be {FORMAT!r}, but got format={meta.get('format')!r}.")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ProfileError(
            f"{where}: `schema_version` must be {SCHEMA_VERSION} (this hgc-tune's profile format), but got "
            f"schema_version={version!r}; profile again with this version."
        )


def _expected_tensors(meta: dict[str, Any]) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
    steps, n = int(meta["steps"]), len(meta["seeds"])
    h, w = int(meta["resolution"]["height"]), int(meta["resolution"]["width"])
    expected: dict[str, tuple[tuple[int | None, ...], np.dtype]] = {}
    for keys, stats in ((meta["block_keys"], BLOCK_STATS), (meta["attention_keys"], ATTENTION_STATS)):
        for key in keys:
            for name in stats:
                expected[f"{name}/{key}"] = ((steps,), np.dtype(np.float32))
    # The latent size depends on the VAE, so only its batch and rank are fixed.
    expected[REFERENCE_LATENTS] = ((n, None, None, None), np.dtype(np.float32))
    expected[REFERENCE_IMAGES] = ((n, h, w, 3), np.dtype(np.uint8))
    # Several ControlNets: one condition image each, ``[N, k, H, W, 3]``.
    nets = int(meta.get("conditions_per_sample", 1))
    expected[REFERENCE_CONDITIONS] = ((n, nets, h, w, 3) if nets > 1 else (n, h, w, 3), np.dtype(np.uint8))
    task = meta.get("task", "text2img")
    if task in ("img2img", "inpaint"):
        expected[REFERENCE_INIT_IMAGES] = ((n, h, w, 3), np.dtype(np.uint8))
    if task == "inpaint":
        expected[REFERENCE_MASKS] = ((n, h, w), np.dtype(np.uint8))
    return expected


def _validate(meta: dict[str, Any], tensors: dict[str, np.ndarray], *, where: str) -> None:
    _check_header(meta, where)
    missing = [field for field in _REQUIRED_META if field not in meta]
    if missing:
        raise ProfileError(f"{where}: metadata misses the fields {missing}; profile again.")
    _check_field_types(meta, where)
    n = len(meta["seeds"])
    for field in ("prompts", "negative_prompts"):
        if len(meta[field]) != n:
            raise ProfileError(
                f"{where}: `{field}` must have one entry per seed ({n}), but has {len(meta[field])}."
            )
    expected = _expected_tensors(meta)
    absent = [name for name in expected if name not in tensors]
    if absent:
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise ProfileError(f"{where}: the tensor file misses {absent[:5]}{more}; profile again.")
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise ProfileError(f"{where}: the tensor file holds unexpected tensors {unknown[:5]}; profile again.")
    for name, (shape, dtype) in expected.items():
        array = tensors[name]
        fits = len(array.shape) == len(shape) and all(
            e is None or e == g for e, g in zip(shape, array.shape, strict=True)
        )
        if not fits or array.dtype != dtype:
            want = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
            raise ProfileError(
                f"{where}: tensor {name!r} must be {dtype} {want}, but is {array.dtype} {list(array.shape)}."
            )
