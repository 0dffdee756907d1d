"""Shared test data for tests/policy: module keys of the presets and a policy-target factory."""

from __future__ import annotations

from hgc_tune.policy import PolicyTarget

# hgc_tune.models._blocks.cacheable_module_keys(load_pipeline("tiny")), checked against the real pipeline in
# test_policy_target.py.
_T = "transformer_blocks.0.attn2"
TINY_KEYS: list[str] = [
    "controlnet",
    *[f"controlnet.down_blocks.{i}" for i in range(4)],
    "controlnet.mid_block",
    *[f"controlnet.down_blocks.{i}.attentions.0.{_T}" for i in range(3)],
    f"controlnet.mid_block.attentions.0.{_T}",
    *[f"unet.down_blocks.{i}" for i in range(4)],
    "unet.mid_block",
    *[f"unet.up_blocks.{i}" for i in range(4)],
    *[f"unet.down_blocks.{i}.attentions.0.{_T}" for i in range(3)],
    *[f"unet.up_blocks.{i}.attentions.{j}.{_T}" for i in (1, 2, 3) for j in (0, 1)],
    f"unet.mid_block.attentions.0.{_T}",
]

# SD1.5: two layers per down block (two attentions), three per up block.
SD15_KEYS: list[str] = [
    "controlnet",
    *[f"controlnet.down_blocks.{i}" for i in range(4)],
    "controlnet.mid_block",
    *[f"controlnet.down_blocks.{i}.attentions.{j}.{_T}" for i in range(3) for j in (0, 1)],
    f"controlnet.mid_block.attentions.0.{_T}",
    *[f"unet.down_blocks.{i}" for i in range(4)],
    "unet.mid_block",
    *[f"unet.up_blocks.{i}" for i in range(4)],
    *[f"unet.down_blocks.{i}.attentions.{j}.{_T}" for i in range(3) for j in (0, 1)],
    *[f"unet.up_blocks.{i}.attentions.{j}.{_T}" for i in (1, 2, 3) for j in (0, 1, 2)],
    f"unet.mid_block.attentions.0.{_T}",
]

# SDXL base (the sdxl preset): three down blocks of which the first has no attention, two layers per down
# block and three per up block, 2 and 10 transformer layers in the attention blocks, 10 in the mid block.
_DEPTH = {1: 2, 2: 10}
SDXL_KEYS: list[str] = [
    "controlnet",
    *[f"controlnet.down_blocks.{i}" for i in range(3)],
    "controlnet.mid_block",
    *[
        f"controlnet.down_blocks.{i}.attentions.{j}.transformer_blocks.{t}.attn2"
        for i in (1, 2)
        for j in (0, 1)
        for t in range(_DEPTH[i])
    ],
    *[f"controlnet.mid_block.attentions.0.transformer_blocks.{t}.attn2" for t in range(10)],
    *[f"unet.down_blocks.{i}" for i in range(3)],
    "unet.mid_block",
    *[f"unet.up_blocks.{i}" for i in range(3)],
    *[
        f"unet.down_blocks.{i}.attentions.{j}.transformer_blocks.{t}.attn2"
        for i in (1, 2)
        for j in (0, 1)
        for t in range(_DEPTH[i])
    ],
    # up_blocks.0 mirrors down_blocks.2 (depth 10), up_blocks.1 mirrors down_blocks.1 (depth 2)
    *[
        f"unet.up_blocks.{i}.attentions.{j}.transformer_blocks.{t}.attn2"
        for i in (0, 1)
        for j in (0, 1, 2)
        for t in range(_DEPTH[2 - i])
    ],
    *[f"unet.mid_block.attentions.0.transformer_blocks.{t}.attn2" for t in range(10)],
]


def make_target(num_steps: int = 20, condition_type: str | None = None) -> PolicyTarget:
    return PolicyTarget(
        pipeline_class="StableDiffusionControlNetPipeline",
        unet_class="UNet2DConditionModel",
        controlnet_class="ControlNetModel",
        fingerprint="0123456789abcdef",
        num_steps=num_steps,
        scheduler="UniPCMultistepScheduler",
        condition_type=condition_type,
        model="tiny",
    )
