"""The architecture of the ``shapes`` model: SD1.5's layout, shrunk to 64 x 64 pixel images.

Sizes are chosen so that the base model and the four ControlNets fit in about 36 MB of fp16 safetensors:
a factor-4 VAE (64 px -> 16 x 16 x 4 latents, so the U-Net has four levels 16/8/4/2 like SD1.5's
64/32/16/8), a 2-layer CLIP text encoder of width 64 and a U-Net with SD1.5's block types and two layers per
block (so every module key and heatmap has SD1.5's shape).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

__all__ = [
    "CONDITIONING_EMBEDDING_CHANNELS",
    "IMAGE_SIZE",
    "LATENT_SIZE",
    "TEXT_CONFIG",
    "UNET_CONFIG",
    "VAE_CONFIG",
    "build_controlnet",
    "build_text_encoder",
    "build_unet",
    "build_vae",
]

IMAGE_SIZE = 64
LATENT_SIZE = 16

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    # Three blocks downsample twice: a factor of 4.
    "block_out_channels": (32, 64, 128),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": IMAGE_SIZE,
}

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 64,
}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": LATENT_SIZE,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64, 96, 96),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": TEXT_CONFIG["hidden_size"],
    # diffusers' (historically misnamed) `attention_head_dim` is the number of heads, as in SD1.5's config.
    "attention_head_dim": 4,
    "norm_num_groups": 16,
}

# One entry per resolution: log2(VAE factor) + 1 entries take the 64 px condition to the 16 px latent grid.
CONDITIONING_EMBEDDING_CHANNELS: tuple[int, ...] = (16, 32, 64)


def build_vae():
    """A freshly initialised ``AutoencoderKL`` (seed torch before calling)."""
    return AutoencoderKL(**VAE_CONFIG)


def build_text_encoder(tokenizer):
    """A freshly initialised ``CLIPTextModel`` sized for ``tokenizer`` (seed torch before calling)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIG,
    )
    return CLIPTextModel(config)


def build_unet():
    """A freshly initialised ``UNet2DConditionModel`` (seed torch before calling)."""
    return UNet2DConditionModel(**UNET_CONFIG)


def build_controlnet(unet, embedding_init_std: float = 0.0):
    """A ``ControlNetModel`` whose encoder is a copy of ``unet``'s (standard ControlNet initialisation).

    Args:
        unet: The trained base U-Net.
        embedding_init_std: Standard deviation of a Gaussian initialisation of the conditioning embedding's
            last convolution, which diffusers zero-initialises. The residual ("zero") convolutions stay
            zero, so the base model's output is unchanged at initialisation either way; a small non-zero
            value lets the condition reach the encoder from the first step.
    """
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=CONDITIONING_EMBEDDING_CHANNELS
    )
    if embedding_init_std > 0:
        torch.nn.init.normal_(controlnet.controlnet_cond_embedding.conv_out.weight, std=embedding_init_std)
    return controlnet
