"""CLIP score: how well each generated image agrees with its prompt, a per-sample proxy for prompt adherence.

ControlNet++ (arXiv 2404.07987) reports the CLIP score of its outputs beside the task metric, computed with
torchmetrics' ``CLIPScore``: ``100 · cos(E_image, E_text)`` of a ``transformers`` CLIP model's projected
embeddings. Here it is kept per sample, ``100 · max(cos, 0)`` for each image–prompt pair (the clamp of
CLIPScore, Hessel et al. arXiv 2104.08718, applied to each pair rather than to the mean; real CLIP models put
matching pairs far above 0, so the two agree there), so that the paired confidence bound of a loss applies.

The model is a ``transformers.CLIPModel`` with its ``CLIPProcessor`` (tokenizer + image processor), loaded
from a local directory or a hub id by :func:`load_clip_scorer`; ``openai/clip-vit-large-patch14`` is the
recommended one. torch and transformers are imported when a model is loaded, not with this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from hgc_tune.errors import FidelityError, ModelLoadError, ModelNotFoundError
from hgc_tune.fidelity._metrics import as_uint8_image

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel, CLIPProcessor, CLIPTextConfig

    from hgc_tune._typing import ArrayInput

__all__ = ["RECOMMENDED_CLIP", "ClipScorer", "clip_score", "clip_scores", "load_clip_scorer"]

RECOMMENDED_CLIP = "openai/clip-vit-large-patch14"
"""The CLIP checkpoint to score prompt adherence with (CLIP ViT-L/14, whose text encoder SD1.5 uses).

ControlNet++'s released evaluation script loads ``openai/clip-vit-base-patch16``: pass that one to compare
with its tables.
"""

_DTYPES = ("fp32", "fp16", "bf16")
_EPS = 1e-12  # torch.nn.functional.normalize's default: a zero embedding scores 0 instead of NaN
# what huggingface_hub accepts as a repo id: "name" or "owner/name"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def clip_scores(image_embeds: ArrayInput, text_embeds: ArrayInput) -> np.ndarray:
    """``100 · max(cos(image_i, text_i), 0)`` for each row pair of two ``n×d`` embedding arrays.

    Args:
        image_embeds: the image embeddings (CLIP's projected image features), one row per sample.
        text_embeds: the prompt embeddings of the same samples, same order.

    Returns:
        ``n`` float64 scores in ``[0, 100]``.

    Raises:
        FidelityError: the arrays are not two ``n×d`` arrays of the same shape, or hold non-finite values.

    Example:
        >>> clip_scores([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]], [[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
        array([100.,  60.,   0.])
    """
    a = np.asarray(image_embeds, dtype=np.float64)
    b = np.asarray(text_embeds, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise FidelityError(
            "`image_embeds` and `text_embeds` must be n×d arrays of the same shape, but got shapes "
            f"{a.shape} and {b.shape}."
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise FidelityError("`image_embeds` and `text_embeds` must be finite.")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), _EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), _EPS)
    return 100.0 * np.maximum(np.sum(a * b, axis=1), 0.0)


def clip_score(image_embed: ArrayInput, text_embed: ArrayInput) -> float:
    """The CLIP score ``100 · max(cos(image, text), 0)`` of one image embedding and one prompt embedding.

    Example:
        >>> clip_score([0.6, 0.8], [1.0, 0.0])
        60.0
    """
    a = np.asarray(image_embed, dtype=np.float64).reshape(1, -1)
    b = np.asarray(text_embed, dtype=np.float64).reshape(1, -1)
    return float(clip_scores(a, b)[0])


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _features(out: Any) -> torch.Tensor:
    # transformers < 5 returns the projected embeddings; 5 returns an output whose pooler_output they are
    return out if hasattr(out, "dim") else out.pooler_output


class ClipScorer:
    """Scores image–prompt pairs with a ``transformers`` CLIP model: one CLIP score per pair.

    Prompts are tokenized with the model's own tokenizer, padded to the text encoder's positions and cut to
    them (CLIP reads 77 tokens; a longer prompt is scored by its first 77); images go through the model's
    image processor (resize, centre crop, normalise). Scores are computed in batches, without gradients, in
    eval mode: the same inputs give the same scores.

    Args:
        model: a ``transformers.CLIPModel`` (anything with ``get_image_features`` and
            ``get_text_features``).
        processor: its ``CLIPProcessor`` (a ``tokenizer`` and an ``image_processor``).
        device: where the model runs.
        batch_size: images (and prompts) per forward pass.
        source: where the model came from (a path or hub id), for provenance.

    Raises:
        FidelityError: ``batch_size`` is not a positive integer, or the model or processor lacks what
            scoring needs.

    Example:
        >>> scorer = load_clip_scorer("checkpoints/clip-vit-large-patch14")  # doctest: +SKIP
        >>> scorer(images, ["a red circle on wood", "a blue square on sand"])  # doctest: +SKIP
        array([27.31, 25.88])
    """

    def __init__(
        self,
        model: CLIPModel,
        processor: CLIPProcessor,
        *,
        device: str = "cpu",
        batch_size: int = 16,
        source: str = "",
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FidelityError(
                f"`batch_size` must be a positive integer, but got batch_size={batch_size!r}."
            )
        missing = [m for m in ("get_image_features", "get_text_features") if not hasattr(model, m)]
        missing += [a for a in ("tokenizer", "image_processor") if getattr(processor, a, None) is None]
        if missing:
            raise FidelityError(
                f"ClipScorer needs a CLIPModel and its CLIPProcessor, but got {type(model).__name__} and "
                f"{type(processor).__name__} without {', '.join(missing)}."
            )
        # the casts only help the type checker, which misreads transformers' wrapped `to`
        cast("torch.nn.Module", model).to(device).eval()
        self.model = model
        self.processor = processor
        self.device = device
        self.batch_size = batch_size
        self.source = source
        self._digest: str | None = None
        self._max_tokens = int(cast("CLIPTextConfig", model.config.text_config).max_position_embeddings)

    @property
    def digest(self) -> str:
        """A 16-hex-digit digest of the CLIP model's weights (computed once): it tells apart two CLIP models
        given by the same path or id, so a search scores prompts with the model its profile did."""
        if self._digest is None:
            from hgc_tune.models._fingerprint import module_weights_digest

            self._digest = module_weights_digest(self.model)
        return self._digest

    def embed_images(self, images: Sequence[ArrayInput]) -> np.ndarray:
        """The projected CLIP embeddings of ``images`` (``H×W×3`` uint8 or ``[0, 1]`` float, PIL images),
        ``n×d`` float64, not normalised."""
        import torch

        arrays = [as_uint8_image(img, name=f"images[{i}]") for i, img in enumerate(images)]
        out = []
        for part in _batches(len(arrays), self.batch_size):
            pixels = self.processor.image_processor(images=arrays[part], return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                feats = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
            out.append(_features(feats).float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def embed_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """The projected CLIP embeddings of ``prompts``, ``n×d`` float64, not normalised.

        Raises:
            FidelityError: a prompt is not a string.
        """
        import torch

        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if bad:
            raise FidelityError(
                f"`prompts` must be strings, but prompts[{bad[0]}]={prompts[bad[0]]!r} is "
                f"{type(prompts[bad[0]]).__name__}."
            )
        out = []
        for part in _batches(len(prompts), self.batch_size):
            tokens = self.processor.tokenizer(
                list(prompts[part]),
                padding="max_length",
                truncation=True,
                max_length=self._max_tokens,
                return_tensors="pt",
            )
            with torch.inference_mode():
                feats = self.model.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                )
            out.append(_features(feats).float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def __call__(self, images: Sequence[ArrayInput], prompts: Sequence[str]) -> np.ndarray:
        """The CLIP score of each image with the prompt at the same position.

        Args:
            images: the generated images, one per sample.
            prompts: the prompt each image was generated from, same order.

        Returns:
            ``len(images)`` float64 scores in ``[0, 100]`` (higher: the image agrees more with its prompt).

        Raises:
            FidelityError: ``images`` and ``prompts`` differ in length, a prompt is not a string, or an
                image is not an image.
        """
        if len(images) != len(prompts):
            raise FidelityError(
                f"`images` and `prompts` must have one entry per sample, but got len(images)={len(images)} "
                f"and len(prompts)={len(prompts)}."
            )
        if len(images) == 0:
            return np.zeros(0, dtype=np.float64)
        text = self.embed_prompts(prompts)
        return clip_scores(self.embed_images(images), text)

    def __repr__(self) -> str:
        return f"ClipScorer(source={self.source!r}, device={self.device!r}, batch_size={self.batch_size})"


def _listing(path: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return "nothing (the directory is empty)"
    return ", ".join(names[:12]) + (f", … ({len(names)} entries)" if len(names) > 12 else "")


def _check_local_clip_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"CLIP path={str(path)!r} is a file; pass the CLIP model's directory.")
    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError(
            f"CLIP path={str(path)!r} is not a transformers model directory: it has no config.json "
            f"(found: {_listing(path)})."
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as e:
        raise ModelLoadError(
            f"CLIP path={str(path)!r} has a config.json that is not a JSON object: {e}"
        ) from e
    if model_type != "clip":
        raise ModelLoadError(
            f"CLIP path={str(path)!r} holds a model_type={model_type!r} model, not a CLIP model "
            f"(model_type 'clip'); pass a CLIPModel directory, such as a local copy of {RECOMMENDED_CLIP}."
        )


def _torch_dtype(dtype: str) -> torch.dtype:
    import torch

    if dtype not in _DTYPES:
        raise FidelityError(f"`dtype` must be one of {list(_DTYPES)}, but got dtype={dtype!r}.")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def load_clip_scorer(
    path_or_id: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    batch_size: int = 16,
    local_files_only: bool = False,
) -> ClipScorer:
    """Load a ``transformers`` CLIP model and its processor as a :class:`ClipScorer`.

    A path that exists is read as a local model directory (what ``model.save_pretrained(d)`` and
    ``processor.save_pretrained(d)`` write, or ``huggingface-cli download ID --local-dir d``) and nothing is
    downloaded. Anything else of the form ``name`` or ``owner/name`` is a hub id: it loads from the Hugging
    Face cache, downloading when ``local_files_only`` is false and the hub can be reached.

    Args:
        path_or_id: a local CLIP model directory, or a hub id such as ``openai/clip-vit-large-patch14``.
        device: where the model runs.
        dtype: ``fp32``, ``fp16`` or ``bf16``.
        batch_size: images (and prompts) per forward pass.
        local_files_only: for a hub id, use only the local cache (never download).

    Raises:
        ModelNotFoundError: a path that does not exist, or a hub id that is neither cached nor downloadable.
        ModelLoadError: a path that is not a CLIP model directory (the message lists what it holds), or
            one whose weights or processor cannot be loaded.
        FidelityError: a ``dtype`` or ``batch_size`` that is not allowed.

    Example:
        >>> scorer = load_clip_scorer(RECOMMENDED_CLIP, device="cuda", dtype="fp16")  # doctest: +SKIP
        >>> scorer(images, prompts)  # one score per image–prompt pair  # doctest: +SKIP
    """
    torch_dtype = _torch_dtype(dtype)
    source = str(path_or_id)
    path = Path(source).expanduser()
    local = path.exists()
    if local:
        _check_local_clip_dir(path)
        source = str(path)
    elif isinstance(path_or_id, Path) or source.startswith((".", "~", "/")) or not _HUB_ID.match(source):
        raise ModelNotFoundError(f"CLIP path={source!r} does not exist.")

    from transformers import AutoConfig, CLIPModel, CLIPProcessor

    offline = local or local_files_only
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as e:
        if local:
            raise ModelLoadError(f"cannot read the CLIP config of path={source!r}: {e}") from e
        raise ModelNotFoundError(
            f"CLIP {source!r} is not a local directory, and as a hub id it is not in the Hugging Face cache"
            f"{'' if local_files_only else ' and could not be downloaded'}; download it where there is "
            f"internet (`huggingface-cli download {source} --local-dir DIR`) and pass the local path DIR."
        ) from e
    if config.model_type != "clip":
        raise ModelLoadError(
            f"CLIP {source!r} is a model_type={config.model_type!r} model, not a CLIP model "
            f"(model_type 'clip'); pass a CLIPModel such as {RECOMMENDED_CLIP}."
        )
    try:
        # cast after loading: the keyword for a load dtype changed name between transformers 4 and 5
        model = CLIPModel.from_pretrained(source, local_files_only=offline)
        cast("torch.nn.Module", model).to(torch_dtype)
    except (OSError, ValueError) as e:
        found = f" (found: {_listing(path)})" if local else ""
        raise ModelLoadError(f"cannot load the CLIP weights of {source!r}{found}: {e}") from e
    try:
        processor = CLIPProcessor.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError, TypeError) as e:
        found = f" (found: {_listing(path)})" if local else ""
        raise ModelLoadError(
            f"cannot load the CLIP processor (tokenizer and image processor) of {source!r}{found}: {e}"
        ) from e
    return ClipScorer(model, processor, device=device, batch_size=batch_size, source=source)
