"""A small valid profile (metadata and tensors) for the profile-format tests."""

from __future__ import annotations

import numpy as np

from hgc_tune.profile._artifact import ATTENTION_STATS, BLOCK_STATS

STEPS, N = 3, 2
BLOCKS = ["controlnet", "unet.mid_block"]
ATTENTIONS = ["unet.mid_block.attentions.0.transformer_blocks.0.attn2"]


def make_meta() -> dict:
    return {
        "format": "hgc-tune-profile",
        "schema_version": 1,
        "hgc_tune_version": "0.1.0",
        "model": {"name": "toy", "fingerprint": "0" * 16, "structure": {}},
        "dataset": {"name": "toy", "sha256": "1" * 64, "num_samples": N},
        "condition_type": "seg",
        "steps": STEPS,
        "scheduler": "UniPCMultistepScheduler",
        "resolution": {"height": 16, "width": 8},
        "guidance_scale": 7.5,
        "seeds": [0, 1],
        "prompts": ["a", "b"],
        "negative_prompts": [None, "c"],
        "statistics": {},
        "block_keys": BLOCKS,
        "attention_keys": ATTENTIONS,
        "mac_table": {},
    }


def make_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors = {}
    for keys, stats in ((BLOCKS, BLOCK_STATS), (ATTENTIONS, ATTENTION_STATS)):
        for key in keys:
            for name in stats:
                values = rng.random(STEPS).astype(np.float32)
                values[0] = np.nan
                tensors[f"{name}/{key}"] = values
    tensors["reference/latents"] = rng.standard_normal((N, 4, 2, 1)).astype(np.float32)
    tensors["reference/images"] = rng.integers(0, 256, (N, 16, 8, 3), dtype=np.uint8)
    tensors["reference/conditions"] = rng.integers(0, 256, (N, 16, 8, 3), dtype=np.uint8)
    return tensors
