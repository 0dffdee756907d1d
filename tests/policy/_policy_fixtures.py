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
