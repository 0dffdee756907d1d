"""Offline model presets: the real architectures built from configuration, nothing downloaded.

- ``tiny``: a seeded, random, very small U-Net/ControlNet/VAE/CLIP with SD1.5's block layout (three
  cross-attention down blocks and one plain, mid block, one plain and three cross-attention up blocks),
  so every module key that exists for SD1.5 exists for ``tiny`` too. For tests.
- ``sd15``: the SD1.5 U-Net, VAE and CLIP-L text encoder configurations with a ControlNet made by
  ``ControlNetModel.from_unet``; random weights (images are noise). For MAC counting and timing, which do
  not depend on weights.
- ``shapes``: the embedded default, loaded from the weights shipped in ``hgc_tune/zoo/weights``
  (found by :mod:`hgc_tune.models._shapes`; :mod:`hgc_tune.zoo` trains them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hgc_tune.models._tokenizer import build_offline_tokenizer

__all__ = ["PRESETS", "PresetInfo", "build_preset_components"]

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
}


def _text_encoder(tokenizer, hidden: int, layers: int, heads: int, intermediate: int, vocab: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


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
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

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
    # vae/config.json of SD1.5
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
    )
    # CLIP ViT-L/14 text tower, with the real vocabulary size so the embedding table has its real shape.
    text_encoder = _text_encoder(tokenizer, hidden=768, layers=12, heads=12, intermediate=3072, vocab=49408)
    return {
        "unet": unet,
        "controlnet": controlnet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def build_preset_components(name: str, seed: int = 0, controlnets: int = 1) -> dict[str, Any]:
    """Build the model components of a random-weight preset (``tiny`` or ``sd15``).

    With ``controlnets > 1`` the ``controlnet`` component is a list of that many ControlNets, the first the
    single-ControlNet preset's and each further one seeded on (diffusers makes a ``MultiControlNetModel``
    of a list).
    """
    builders = {"tiny": _tiny_components, "sd15": _sd15_components}
    components = builders[name](seed)
    if controlnets > 1:
        extra = {"tiny": _tiny_controlnet, "sd15": _sd15_controlnet}[name]
        components["controlnet"] = [
            components["controlnet"],
            *(extra(components["unet"], seed + 100 * k) for k in range(1, controlnets)),
        ]
    return components
