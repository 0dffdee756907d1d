"""Trace the modules of a Stable Diffusion (1.5 or XL) + ControlNet pipeline once each and build its MAC
table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from hgc_tune.errors import HgcTuneError
from hgc_tune.macs._count import trace_module_macs
from hgc_tune.macs._table import MacTable

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

__all__ = ["count_pipeline_macs"]

# SD's CLIP context: prompts are padded to 77 tokens, so the U-Net's cross-attention always sees 77 keys.
_DEFAULT_TEXT_TOKENS = 77
# A timestep from the middle of SD's training range; MACs do not depend on it.
_TIMESTEP = 500


def _text_tokens(pipe: ControlNetPipeline) -> int:
    tokens = getattr(getattr(pipe, "tokenizer", None), "model_max_length", None)
    # Tokenizers without a set limit report a huge sentinel (int(1e30)); fall back to SD's 77.
    if isinstance(tokens, int) and 0 < tokens <= 4096:
        return tokens
    return _DEFAULT_TEXT_TOKENS


def _vae_scale_factor(pipe: ControlNetPipeline) -> int:
    factor = getattr(pipe, "vae_scale_factor", None)
    if isinstance(factor, int) and factor > 0:
        return factor
    return 2 ** (len(pipe.vae.config["block_out_channels"]) - 1)


def _check_size(name: str, value: object, factor: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
        raise HgcTuneError(
            f"`{name}` must be a positive multiple of the VAE scale factor {factor}, "
            f"but got {name}={value!r}."
        )
    return value


# SDXL's micro-conditioning: original size, crop top-left and target size, two numbers each.
_SDXL_TIME_IDS = 6


def _added_cond_shapes(pipe: ControlNetPipeline, model: Any) -> tuple[int, int] | None:
    """``(text_embeds width, number of time ids)`` of a denoiser with SDXL's ``text_time`` addition
    embedding, or ``None`` for one without it (SD1.5).

    The pooled text embedding is the second text encoder's projection; the time ids fill the rest of the
    addition embedding's input, ``addition_time_embed_dim`` each (6 for SDXL base).
    """
    if getattr(model.config, "addition_embed_type", None) != "text_time":
        return None
    inputs = model.add_embedding.linear_1.in_features
    per_id = model.config.addition_time_embed_dim
    encoder = getattr(pipe, "text_encoder_2", None)
    pooled = getattr(getattr(encoder, "config", None), "projection_dim", None)
    if not isinstance(pooled, int) or (inputs - pooled) % per_id or inputs <= pooled:
        pooled = inputs - per_id * _SDXL_TIME_IDS
    return pooled, (inputs - pooled) // per_id


def _added_cond(shapes: tuple[int, int] | None, device, dtype) -> list[torch.Tensor]:
    if shapes is None:
        return []
    pooled, time_ids = shapes
    return [
        torch.zeros((1, pooled), device=device, dtype=dtype),
        # Plausible ids (1024 px, no crop): MACs do not depend on them.
        torch.full((1, time_ids), 1024.0, device=device, dtype=dtype),
    ]


class _UnetCall:
    """``unet(sample, t, text, [text_embeds, time_ids,] *residuals)`` with the real keyword signature."""

    def __init__(self, added: bool) -> None:
        self.added = added

    def __call__(self, unet, sample, timestep, text, *rest):
        added = {"text_embeds": rest[0], "time_ids": rest[1]} if self.added else None
        residuals = rest[2:] if self.added else rest
        down = residuals[:-1] if residuals else None
        mid = residuals[-1] if residuals else None
        return unet(
            sample,
            timestep,
            encoder_hidden_states=text,
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]


class _ControlNetCall:
    """``controlnet(sample, t, text, cond, [text_embeds, time_ids])`` with the real keyword signature."""

    def __init__(self, added: bool) -> None:
        self.added = added

    def __call__(self, controlnet, sample, timestep, text, cond, *rest):
        nets = getattr(controlnet, "nets", None)
        down, mid = controlnet(
            sample,
            timestep,
            encoder_hidden_states=text,
            # Several ControlNets (MultiControlNetModel): one condition image and scale each.
            controlnet_cond=cond if nets is None else [cond] * len(nets),
            conditioning_scale=1.0 if nets is None else [1.0] * len(nets),
            guess_mode=False,
            added_cond_kwargs={"text_embeds": rest[0], "time_ids": rest[1]} if self.added else None,
            return_dict=False,
        )
        return [*down, mid]


def _text_encoder_call(text_encoder, input_ids):
    return text_encoder(input_ids)[0]


def _vae_decode_call(vae, latents):
    return vae.decode(latents, return_dict=False)[0]


def count_pipeline_macs(
    pipe: ControlNetPipeline, *, height: int, width: int, model_name: str = ""
) -> MacTable:
    """Count the MACs of every module a generation runs, for one image, in both conventions.

    Traces the pipeline's real modules once each at batch 1 under ``torch.no_grad()`` (one forward each, on
    the modules' own device and dtype): the ControlNet and the U-Net at latent size ``height //
    vae_scale_factor`` with 77-token text embeddings and a ``controlnet_cond`` image at pixel size (the U-Net
    gets the ControlNet's residuals, as in the pipeline), each text encoder on one 77-token prompt, and the
    VAE decode of one latent. A denoiser with SDXL's ``text_time`` addition embedding also gets its
    ``added_cond_kwargs`` (the pooled text embedding and the time ids), as SDXL's pipelines pass them. The
    pipeline must be unmodified (no policy applied): the trace runs whatever the modules' forwards do.

    Keys of the table: ``unet``, ``controlnet`` and every submodule of each (``unet.down_blocks.1``, ...;
    with several ControlNets ``controlnet.nets.0``, ``controlnet.nets.0.mid_block``, ...),
    ``text_encoder`` (and SDXL's ``text_encoder_2``) and their submodules, ``vae.decoder`` (one decode,
    ``post_quant_conv`` included) and the decoder's submodules. Operators fvcore has no handle for are
    recorded under the same keys in the table's ``unsupported_ops``.

    Args:
        pipe: A diffusers ``StableDiffusionControlNetPipeline`` or ``StableDiffusionXLControlNetPipeline``
            (or any object with ``unet``, ``controlnet`` (may be ``None``), ``text_encoder``, ``vae`` and
            ``vae_scale_factor``; ``text_encoder_2`` is counted when present).
        height: Image height in pixels, a multiple of the VAE scale factor.
        width: Image width in pixels, a multiple of the VAE scale factor.
        model_name: What the table names as its model (a preset name or a path).

    Returns:
        The :class:`MacTable`.

    Example:
        >>> from hgc_tune.models import load_pipeline
        >>> table = count_pipeline_macs(load_pipeline("tiny"), height=64, width=64, model_name="tiny")
        >>> table.generation_macs(steps=20)["total"] > 0
        True
    """
    factor = _vae_scale_factor(pipe)
    _check_size("height", height, factor)
    _check_size("width", width, factor)
    unet = pipe.unet
    controlnet = getattr(pipe, "controlnet", None)
    nets = getattr(controlnet, "nets", [controlnet]) if controlnet is not None else []
    if not all(hasattr(net, "controlnet_cond_embedding") for net in nets):
        raise HgcTuneError(
            f"count_pipeline_macs counts ControlNetModels (one, or several in a MultiControlNetModel), but "
            f"the pipeline's controlnet is a {type(controlnet).__name__} of "
            f"{[type(net).__name__ for net in nets]}."
        )
    device, dtype = unet.device, unet.dtype
    tokens = _text_tokens(pipe)
    latent_shape = (1, unet.config["in_channels"], height // factor, width // factor)
    # Fixed values keep the trace deterministic; MACs depend on shapes only.
    sample = torch.zeros(latent_shape, device=device, dtype=dtype)
    timestep = torch.tensor(_TIMESTEP, device=device)
    text = torch.zeros((1, tokens, unet.config["cross_attention_dim"]), device=device, dtype=dtype)

    per_image: dict[str, dict[str, int]] = {}
    unsupported: dict[str, dict[str, int]] = {}
    residuals: list[torch.Tensor] = []
    if controlnet is not None:
        cond = torch.zeros((1, 3, height, width), device=controlnet.device, dtype=controlnet.dtype)
        # An inpainting U-Net takes 9 channels (latents, mask, masked-image latents); its ControlNet takes
        # the 4 latent channels (diffusers' ControlNet inpainting pipeline); several ControlNets share it.
        control_sample = torch.zeros(
            (1, nets[0].config.in_channels, *latent_shape[2:]),
            device=controlnet.device,
            dtype=controlnet.dtype,
        )
        shapes = _added_cond_shapes(pipe, nets[0])
        trace = trace_module_macs(
            controlnet,
            (
                control_sample,
                timestep.to(controlnet.device),
                text.to(controlnet.device, controlnet.dtype),
                cond,
                *_added_cond(shapes, controlnet.device, controlnet.dtype),
            ),
            name="controlnet",
            call=_ControlNetCall(shapes is not None),
        )
        per_image.update(trace.macs)
        unsupported.update(trace.unsupported)
        residuals = [r.to(device, dtype) for r in trace.outputs]
    shapes = _added_cond_shapes(pipe, unet)
    trace = trace_module_macs(
        unet,
        (sample, timestep, text, *_added_cond(shapes, device, dtype), *residuals),
        name="unet",
        call=_UnetCall(shapes is not None),
    )
    per_image.update(trace.macs)
    unsupported.update(trace.unsupported)

    for name in ("text_encoder", "text_encoder_2"):
        text_encoder = getattr(pipe, name, None)
        if text_encoder is None:
            continue
        input_ids = torch.zeros((1, tokens), dtype=torch.long, device=text_encoder.device)
        trace = trace_module_macs(text_encoder, (input_ids,), name=name, call=_text_encoder_call)
        per_image.update(trace.macs)
        unsupported.update(trace.unsupported)

    vae = getattr(pipe, "vae", None)
    if vae is not None:
        latents = torch.zeros(
            (1, vae.config.latent_channels, height // factor, width // factor),
            device=vae.device,
            dtype=vae.dtype,
        )
        trace = trace_module_macs(vae, (latents,), name="vae", call=_vae_decode_call)
        # The decode's entry is the whole `vae.decode` call (post_quant_conv included); the rest of the VAE
        # (encoder, quant_conv) does not run in a text-to-image generation and is left out.
        for found, into in ((trace.macs, per_image), (trace.unsupported, unsupported)):
            if "vae" in found:
                into["vae.decoder"] = found["vae"]
            into.update({k: v for k, v in found.items() if k.startswith("vae.decoder.")})
    return MacTable(
        model=model_name, height=height, width=width, per_image=per_image, unsupported_ops=unsupported
    )
