"""Offline model presets: the real architectures built from configuration, nothing downloaded.

- ``tiny``: a seeded, random, very small U-Net/ControlNet/VAE/CLIP with SD1.5's block layout (three
  cross-attention down blocks and one plain, mid block, one plain and three cross-attention up blocks),
  so every module key that exists for SD1.5 exists for ``tiny`` too. For tests.
- ``sd15``: the SD1.5 U-Net, VAE and CLIP-L text encoder configurations with a ControlNet made by
  ``ControlNetModel.from_unet``; random weights (images are noise). For MAC counting and timing, which do
  not depend on weights.
- ``shapes``: the embedded default, loaded from the weights shipped in ``hgc_tune/models/weights/shapes``
  (found by :mod:`hgc_tune.models._shapes`; the repository's ``training/shapes/`` trains them).
- ``sdxl``: the SDXL base 1.0 U-Net (``stabilityai/stable-diffusion-xl-base-1.0`` ``unet/config.json``),
  its VAE, its two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG with projection) and a ControlNet made by
  ``ControlNetModel.from_unet``, as the public SDXL ControlNets are; random weights, for MACs and timing. The
  U-Net alone has 2.6 B parameters: build it on the meta device when only shapes matter
  (:func:`build_shape_only_components`).
- ``tiny-sdxl``: a seeded, random, very small pipeline with SDXL's structure (``text_time`` addition
  embedding, two text encoders, three down blocks of which the first has no attention, transformer depth
  above one in the deeper blocks), 64 px. For tests.

Every preset has a ControlNet; the SDXL presets are ``StableDiffusionXLControlNetPipeline`` components (see
:data:`PIPELINE_CLASSES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hgc_tune.models._tokenizer import build_offline_tokenizer

__all__ = [
    "PIPELINE_CLASSES",
    "PRESETS",
    "PresetInfo",
    "SDXL_UNET_CONFIG",
    "build_preset_components",
    "build_shape_only_components",
]

# SD1.5's scheduler configuration (v1-5 model_index/scheduler_config.json), shared by every preset.
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}


@dataclass(frozen=True)
class PresetInfo:
    """What a preset is and what it is good for."""

    name: str
    description: str
    resolution: int
    random_weights: bool


PRESETS: dict[str, PresetInfo] = {
    "tiny": PresetInfo("tiny", "random tiny SD1.5-shaped pipeline, for tests", 64, True),
    "sd15": PresetInfo(
        "sd15", "SD1.5 + ControlNet architecture with random weights (MACs, timing)", 512, True
    ),
    "shapes": PresetInfo("shapes", "the embedded default, trained on the shapes benchmark", 64, False),
    "sdxl": PresetInfo(
        "sdxl", "SDXL base + ControlNet architecture with random weights (MACs, timing)", 1024, True
    ),
    "tiny-sdxl": PresetInfo("tiny-sdxl", "random tiny SDXL-shaped pipeline, for tests", 64, True),
}

# The diffusers pipeline class each preset's components are assembled into (default: SD1.5's).
PIPELINE_CLASSES: dict[str, str] = {
    "sdxl": "StableDiffusionXLControlNetPipeline",
    "tiny-sdxl": "StableDiffusionXLControlNetPipeline",
}

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that differ from diffusers' defaults).
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "use_linear_projection": True,
    "norm_num_groups": 32,
}


def _text_encoder(
    tokenizer,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    vocab: int,
    *,
    act: str = "quick_gelu",
    projection_dim: int | None = None,
):
    """A CLIP text tower; with ``projection_dim``, the ``CLIPTextModelWithProjection`` SDXL's second
    encoder is (its pooled, projected output feeds the U-Net's ``text_time`` embedding)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection_dim or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection_dim else CLIPTextModel)(config)


def _sd_vae(sample_size: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    # vae/config.json of SD1.5 and of SDXL (the same architecture; SDXL's scales latents differently)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


def _tiny_controlnet(unet, seed: int):
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed + 1)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    torch.manual_seed(seed + 2)
    # Re-initialise the ControlNet's zero convolutions (the conditioning embedding's output included) so the
    # random preset's condition image reaches its output.
    zero_convs = [
        controlnet.controlnet_cond_embedding.conv_out,
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
    ]
    for conv in zero_convs:
        torch.nn.init.normal_(conv.weight, std=0.05)
    return controlnet


def _sd15_controlnet(unet, seed: int):
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    return ControlNetModel.from_unet(unet)


def _tiny_components(seed: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tokenizer = build_offline_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    controlnet = _tiny_controlnet(unet, seed)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    torch.manual_seed(seed + 4)
    text_encoder = _text_encoder(
        tokenizer, hidden=32, layers=2, heads=4, intermediate=64, vocab=len(tokenizer)
    )
    return {
        "unet": unet,
        "controlnet": controlnet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def _sd15_components(seed: int) -> dict[str, Any]:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    tokenizer = build_offline_tokenizer()
    torch.manual_seed(seed)
    # runwayml/stable-diffusion-v1-5 unet/config.json
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    controlnet = ControlNetModel.from_unet(unet)
    vae = _sd_vae(sample_size=512, scaling_factor=0.18215)
    # CLIP ViT-L/14 text tower, with the real vocabulary size so the embedding table has its real shape.
    text_encoder = _text_encoder(tokenizer, hidden=768, layers=12, heads=12, intermediate=3072, vocab=49408)
    return {
        "unet": unet,
        "controlnet": controlnet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def _tiny_sdxl_components(seed: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tokenizer = build_offline_tokenizer()
    # Two text encoders of width 16 each: their penultimate hidden states are concatenated into the
    # 32-wide cross-attention context; the second's pooled projection (16) and six time ids embedded at 8
    # each make the 64 inputs of the text_time embedding (SDXL: 1280 + 6 * 256 = 2816).
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
        use_linear_projection=True,
        norm_num_groups=8,
    )
    controlnet = _tiny_controlnet(unet, seed)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,
    )
    torch.manual_seed(seed + 4)
    text_encoder = _text_encoder(
        tokenizer, hidden=16, layers=2, heads=2, intermediate=32, vocab=len(tokenizer)
    )
    torch.manual_seed(seed + 5)
    text_encoder_2 = _text_encoder(
        tokenizer,
        hidden=16,
        layers=2,
        heads=2,
        intermediate=32,
        vocab=len(tokenizer),
        act="gelu",
        projection_dim=16,
    )
    return {
        "unet": unet,
        "controlnet": controlnet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": build_offline_tokenizer(),
    }


def _sdxl_components(seed: int) -> dict[str, Any]:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    tokenizer = build_offline_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    # What diffusers' train_controlnet_sdxl.py does (and so the public SDXL ControlNets, e.g.
    # diffusers/controlnet-canny-sdxl-1.0): the ControlNet copies the U-Net's encoder, full depth.
    controlnet = ControlNetModel.from_unet(unet)
    vae = _sd_vae(sample_size=1024, scaling_factor=0.13025)
    # text_encoder/config.json (CLIP ViT-L/14) and text_encoder_2/config.json (OpenCLIP ViT-bigG/14, with
    # its projection) of SDXL base, with the real vocabulary size so the embedding tables have their shapes.
    text_encoder = _text_encoder(tokenizer, hidden=768, layers=12, heads=12, intermediate=3072, vocab=49408)
    text_encoder_2 = _text_encoder(
        tokenizer,
        hidden=1280,
        layers=32,
        heads=20,
        intermediate=5120,
        vocab=49408,
        act="gelu",
        projection_dim=1280,
    )
    return {
        "unet": unet,
        "controlnet": controlnet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": build_offline_tokenizer(),
    }


_EXTRA_CONTROLNETS = {"tiny": _tiny_controlnet, "sd15": _sd15_controlnet, "tiny-sdxl": _tiny_controlnet}
_BUILDERS = {
    "tiny": _tiny_components,
    "sd15": _sd15_components,
    "tiny-sdxl": _tiny_sdxl_components,
    "sdxl": _sdxl_components,
}


def build_preset_components(name: str, seed: int = 0, controlnets: int = 1) -> dict[str, Any]:
    """Build the model components of a random-weight preset (``tiny``, ``sd15``, ``tiny-sdxl``, ``sdxl``).

    Built on the current default device (``with torch.device("meta"):`` builds the structure alone).
    With ``controlnets > 1`` (``tiny``, ``sd15``, ``tiny-sdxl``) the ``controlnet`` component is a list of
    that many ControlNets, the first the single-ControlNet preset's and each further one seeded on (diffusers
    makes a ``MultiControlNetModel`` of a list).
    """
    components = _BUILDERS[name](seed)
    if controlnets > 1:
        extra = _EXTRA_CONTROLNETS.get(name)
        if extra is None:
            raise ValueError(f"the {name!r} preset builds one ControlNet, but controlnets={controlnets}.")
        components["controlnet"] = [
            components["controlnet"],
            *(extra(components["unet"], seed + 100 * k) for k in range(1, controlnets)),
        ]
    return components


def _shape_only(module, dtype) -> None:
    """Give every meta parameter and buffer of ``module`` real but storage-free values, in place.

    Parameters become zeros that are stride-0 views of one scalar (a 2.6 B-parameter U-Net takes no memory);
    buffers are small and get materialised (``position_ids``: the positions the text encoders index with).
    """
    import torch

    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                value = torch.zeros((), dtype=dtype).expand(param.shape)
                sub._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
        for name, buffer in list(sub._buffers.items()):
            if buffer is None:
                continue
            if name == "position_ids":
                value = torch.arange(buffer.shape[-1]).expand(buffer.shape).to(buffer.dtype)
            else:
                value = torch.zeros(
                    buffer.shape, dtype=buffer.dtype if not buffer.is_floating_point() else dtype
                )
            sub._buffers[name] = value


def build_shape_only_components(name: str, dtype: Any = None, controlnets: int = 1) -> dict[str, Any]:
    """The components of a random-weight preset with zero weights that take no memory, on the CPU.

    Built on the meta device, then every parameter is made a stride-0 zero view of one scalar: the modules
    run (slowly as ever, but in a few megabytes beyond their activations) and compute zeros. For what
    depends on shapes only: MAC counting and fingerprints. Not for generation or timing.

    Args:
        name: A random-weight preset (``tiny``, ``sd15``, ``tiny-sdxl``, ``sdxl``).
        dtype: The parameters' ``torch.dtype`` (default ``torch.float32``).
        controlnets: How many ControlNets (see :func:`build_preset_components`).
    """
    import torch

    with torch.device("meta"):
        components = build_preset_components(name, controlnets=controlnets)
    for component in components.values():
        for module in (
            component if isinstance(component, list) else [component]
        ):  # a list: several ControlNets
            if isinstance(module, torch.nn.Module):
                _shape_only(module, dtype or torch.float32)
    return components
