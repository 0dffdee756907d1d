"""The per-module MAC table of a pipeline and the MACs of a whole generation derived from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from hgc_tune.errors import HgcTuneError
from hgc_tune.macs._count import CONVENTIONS, affected_conventions
from hgc_tune.models._blocks import COMPONENTS, block_containers, forward_order

__all__ = ["MacTable", "DENOISERS", "GENERATION_PARTS", "PAPER_INCLUDES", "TABLE_FORMAT"]

TABLE_FORMAT = "hgc-tune/mac-table"
_TABLE_VERSION = 1

# Components run once per denoising step (per CFG branch, per image), in execution order.
DENOISERS: tuple[str, ...] = COMPONENTS
# generation_macs() part name -> MAC table keys, for the parts run once per generation (SDXL encodes each
# prompt with two text encoders).
_ONCE_PARTS: dict[str, tuple[str, ...]] = {
    "text_encoder": ("text_encoder", "text_encoder_2"),
    "vae_decoder": ("vae.decoder",),
}
GENERATION_PARTS: tuple[str, ...] = (*DENOISERS, *_ONCE_PARTS)
# The parts whose sum is `total`. Measured on the sd15 preset at 512², 20 steps, CFG, paper convention:
# U-Net + ControlNet (40 forwards each) give 18.223T, the HGC paper's 18.22T (arXiv 2511.11031); adding the
# two text encodings (+0.013T) would make it 18.24T and the VAE decode (+1.242T) 19.48T. Those parts are
# reported beside the total.
PAPER_INCLUDES: tuple[str, ...] = DENOISERS


def _forward_rank(order: tuple[str, ...], child: str) -> tuple[int, str]:
    return (order.index(child), "") if child in order else (len(order), child)


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HgcTuneError(f"{where} must be a non-negative integer, but got {value!r}.")
    return value


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise HgcTuneError(
            f"`convention` must be one of {list(CONVENTIONS)}, but got convention={convention!r}."
        )


@dataclass(frozen=True)
class MacTable:
    """MACs of one forward of each module of a pipeline, for one image, in both conventions.

    Conventions (one multiply-accumulate = 1): ``paper`` is fvcore's default count, which skips
    ``scaled_dot_product_attention`` (the HGC paper's 18.22T for SD1.5 + ControlNet, 512², 20 steps, CFG);
    ``complete`` adds the attention products QKᵀ and AV. Operators fvcore had no handle for are in neither
    count; ``unsupported_ops`` records them (:meth:`skipped_ops` sums them and names the conventions they
    leave short).

    Attributes:
        model: What was counted: a preset name (``sd15``, ``tiny``) or a path.
        height: Image height in pixels.
        width: Image width in pixels.
        per_image: Module key -> ``{"paper": int, "complete": int}``: MACs of ONE forward of that module for
            ONE image (batch 1, one CFG branch). Keys: ``unet`` and ``controlnet`` and every submodule of each
            (``unet.down_blocks.1``, ``controlnet.controlnet_cond_embedding``, ...), and the parts run once
            per generation: ``text_encoder`` (one prompt) and ``vae.decoder`` (one decode, post_quant_conv
            included), with their submodules. Nested keys are included in their parents.
        unsupported_ops: Module key -> fvcore operator name (``aten::…``) -> how often one forward of that
            module for one image ran it without fvcore counting it; only modules that ran any. Nested keys
            are included in their parents, as in ``per_image``. Tables written before hgc-tune recorded
            them read as ``{}``.
    """

    model: str
    height: int
    width: int
    per_image: Mapping[str, Mapping[str, int]]
    unsupported_ops: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str):
            raise HgcTuneError(f"`model` must be a string, but got model={self.model!r}.")
        for field in ("height", "width"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise HgcTuneError(f"`{field}` must be a positive integer, but got {field}={value!r}.")
        if not isinstance(self.per_image, Mapping):
            raise HgcTuneError(f"`per_image` must be a mapping, but got {type(self.per_image).__name__}.")
        for key in self.per_image:
            if not isinstance(key, str) or not key:
                raise HgcTuneError(f"per_image keys must be non-empty strings, but got {key!r}.")
        frozen: dict[str, Mapping[str, int]] = {}
        for key in sorted(self.per_image):
            entry = self.per_image[key]
            if not isinstance(entry, Mapping) or set(entry) != set(CONVENTIONS):
                raise HgcTuneError(
                    f"per_image[{key!r}] must map exactly {list(CONVENTIONS)} to MACs, but got {entry!r}."
                )
            paper = _count(entry["paper"], f"per_image[{key!r}]['paper']")
            complete = _count(entry["complete"], f"per_image[{key!r}]['complete']")
            if complete < paper:
                raise HgcTuneError(
                    f"per_image[{key!r}]: the complete count adds to the paper count, so it must be >= "
                    f"{paper}, but got complete={complete}."
                )
            frozen[key] = MappingProxyType({"paper": paper, "complete": complete})
        object.__setattr__(self, "per_image", MappingProxyType(frozen))
        if not isinstance(self.unsupported_ops, Mapping):
            raise HgcTuneError(
                f"`unsupported_ops` must be a mapping, but got {type(self.unsupported_ops).__name__}."
            )
        skipped: dict[str, Mapping[str, int]] = {}
        for key in sorted(self.unsupported_ops, key=str):
            ops = self.unsupported_ops[key]
            if not isinstance(key, str) or not key or not isinstance(ops, Mapping) or not ops:
                raise HgcTuneError(
                    "unsupported_ops must map module keys to non-empty {operator: count} mappings, but got "
                    f"{key!r}: {ops!r}."
                )
            counts = {}
            for op in sorted(ops, key=str):
                if not isinstance(op, str) or not op:
                    raise HgcTuneError(
                        f"unsupported_ops[{key!r}] keys must be operator names, but got {op!r}."
                    )
                counts[op] = _count(ops[op], f"unsupported_ops[{key!r}][{op!r}]")
            skipped[key] = MappingProxyType(counts)
        object.__setattr__(self, "unsupported_ops", MappingProxyType(skipped))

    def macs(self, key: str, convention: str = "paper") -> int:
        """MACs of one forward of module ``key`` for one image.

        Raises:
            HgcTuneError: ``key`` is not in the table, or ``convention`` is not one of :data:`CONVENTIONS`.
        """
        _check_convention(convention)
        if key not in self.per_image:
            components = sorted({k.split(".")[0] for k in self.per_image})
            raise HgcTuneError(
                f"`key` must be a module key of the MAC table of {self.model or 'this pipeline'!r} "
                f"(components: {components}), but got key={key!r}."
            )
        return self.per_image[key][convention]

    def _value(self, key: str, convention: str) -> int:
        entry = self.per_image.get(key)
        return 0 if entry is None else entry[convention]

    def block_keys(self, component: str) -> list[str]:
        """The keys that break ``component`` down by block, in forward order, without overlap.

        Every top-level child of the component, with ``down_blocks``/``up_blocks`` replaced by their numbered
        blocks. Whatever the component computes outside them is its ``<component>.other`` remainder in
        :meth:`generation_macs`.
        """
        prefix = f"{component}."
        children = [k for k in self.per_image if k.startswith(prefix) and "." not in k[len(prefix) :]]
        # the table names no model classes: the registered layouts' orders merged (each model's children
        # sort as in its own layout)
        order = forward_order()
        children.sort(key=lambda k: _forward_rank(order, k[len(prefix) :]))
        keys: list[str] = []
        for child in children:
            # containers of numbered blocks are broken down into them, as the module layouts name blocks
            if child[len(prefix) :] in block_containers():
                numbered = [
                    k for k in self.per_image if k.startswith(f"{child}.") and k[len(child) + 1 :].isdigit()
                ]
                keys += sorted(numbered, key=lambda k: int(k[len(child) + 1 :]))
            else:
                keys.append(child)
        return keys

    def generation_macs(
        self, steps: int, cfg: bool = True, convention: str = "paper", batch: int = 1
    ) -> dict[str, Any]:
        """MACs of a whole generation at full compute.

        The U-Net and the ControlNet run once per step per CFG branch per image (``steps × (2 if cfg else 1)
        × batch`` forwards each); the text encoder encodes each image's prompt and, with CFG, its negative
        prompt (``(2 if cfg else 1) × batch`` sequences; SDXL's ``text_encoder_2`` counts in the
        ``text_encoder`` part); the VAE decodes each image once.

        ``total`` is the sum of the parts named in ``includes``: the U-Net and the ControlNet (the HGC
        paper's 18.22T for SD1.5 + ControlNet, 512², 20 steps, CFG counts exactly these — measured, see
        :data:`PAPER_INCLUDES`). ``text_encoder`` and ``vae_decoder`` are reported beside it and
        ``total_with_all`` adds them.

        Args:
            steps: Number of denoising steps.
            cfg: Whether classifier-free guidance doubles the denoiser batch.
            convention: ``paper`` or ``complete``.
            batch: Images per generation.

        Returns:
            ``{"convention", "includes", "total", "total_with_all", "unet", "controlnet", "text_encoder",
            "vae_decoder", "blocks"}``: ``blocks`` maps block keys (``unet.down_blocks.1``,
            ``controlnet.controlnet_cond_embedding``, ``unet.other``, ...) to MACs and its entries sum exactly
            to ``total``.

        Example:
            >>> table = MacTable("toy", 64, 64, {"unet": {"paper": 10, "complete": 12}})
            >>> table.generation_macs(steps=20)["total"]
            400
        """
        for name, value in (("steps", steps), ("batch", batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HgcTuneError(f"`{name}` must be a positive integer, but got {name}={value!r}.")
        if not isinstance(cfg, bool):
            raise HgcTuneError(f"`cfg` must be a bool, but got cfg={cfg!r}.")
        _check_convention(convention)
        if "unet" not in self.per_image:
            raise HgcTuneError(
                f"the MAC table of {self.model!r} has no 'unet' entry to count a generation from."
            )
        branches = 2 if cfg else 1
        per_step = steps * branches * batch
        multiplier = {
            "unet": per_step,
            "controlnet": per_step,
            "text_encoder": branches * batch,
            "vae_decoder": batch,
        }
        parts: dict[str, int] = {}
        for part in GENERATION_PARTS:
            keys = _ONCE_PARTS.get(part, (part,))
            parts[part] = multiplier[part] * sum(self._value(key, convention) for key in keys)
        blocks: dict[str, int] = {}
        for component in DENOISERS:
            if component not in self.per_image:
                continue
            block_keys = self.block_keys(component)
            for key in block_keys:
                blocks[key] = per_step * self.per_image[key][convention]
            inside = sum(self.per_image[key][convention] for key in block_keys)
            blocks[f"{component}.other"] = per_step * (self.per_image[component][convention] - inside)
        return {
            "convention": convention,
            "includes": list(PAPER_INCLUDES),
            "total": sum(parts[p] for p in PAPER_INCLUDES),
            "total_with_all": sum(parts.values()),
            **parts,
            "blocks": blocks,
        }

    def skipped_ops(self) -> dict[str, dict[str, Any]]:
        """The operators fvcore skipped, over the whole table: what a count is missing, and where.

        Counted over the outermost recorded modules only (a nested key is already in its parent's count).

        Returns:
            Operator -> ``{"count": int, "modules": [outermost module keys that ran it], "conventions":
            [the conventions that miss it]}``: a skipped attention product (SDPA, baddbmm) is missing from
            ``complete`` only, any other operator from both. ``{}`` when fvcore counted (or knew to be free)
            everything.

        Example:
            >>> table = MacTable("toy", 8, 8, {}, unsupported_ops={"unet": {"aten::cumprod": 2}})
            >>> table.skipped_ops()
            {'aten::cumprod': {'count': 2, 'modules': ['unet'], 'conventions': ['paper', 'complete']}}
        """
        outermost = [
            key
            for key in self.unsupported_ops
            if not any(
                ".".join(key.split(".")[:i]) in self.unsupported_ops for i in range(1, key.count(".") + 1)
            )
        ]
        summary: dict[str, dict[str, Any]] = {}
        for key in outermost:
            for op, n in self.unsupported_ops[key].items():
                entry = summary.setdefault(
                    op, {"count": 0, "modules": [], "conventions": list(affected_conventions(op))}
                )
                entry["count"] += n
                entry["modules"].append(key)
        return {op: summary[op] for op in sorted(summary)}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_json`` reads it back)."""
        return {
            "format": TABLE_FORMAT,
            "version": _TABLE_VERSION,
            "model": self.model,
            "height": self.height,
            "width": self.width,
            "conventions": list(CONVENTIONS),
            "per_image": {k: dict(v) for k, v in sorted(self.per_image.items())},
            "unsupported_ops": {k: dict(v) for k, v in sorted(self.unsupported_ops.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MacTable:
        """Read a table written by :meth:`to_json`; unknown or missing fields are errors.

        ``unsupported_ops`` is optional: tables written before hgc-tune recorded it have none.
        """
        expected = {"format", "version", "model", "height", "width", "conventions", "per_image"}
        fields = set(data) if isinstance(data, Mapping) else set()
        if not isinstance(data, Mapping) or fields - {"unsupported_ops"} != expected:
            found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise HgcTuneError(
                f"a MAC table must have exactly the fields {sorted(expected)} (and optionally "
                f"'unsupported_ops'), but got {found}."
            )
        if data["format"] != TABLE_FORMAT or data["version"] != _TABLE_VERSION:
            raise HgcTuneError(
                f"a MAC table must have format={TABLE_FORMAT!r} and version={_TABLE_VERSION}, but got "
                f"format={data['format']!r}, version={data['version']!r}."
            )
        if list(data["conventions"]) != list(CONVENTIONS):
            raise HgcTuneError(
                f"`conventions` must be {list(CONVENTIONS)}, but got conventions={data['conventions']!r}."
            )
        return cls(
            model=data["model"],
            height=data["height"],
            width=data["width"],
            per_image=data["per_image"],
            unsupported_ops=data.get("unsupported_ops", {}),
        )
