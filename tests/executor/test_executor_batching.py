"""Every executor mechanism on a batch of samples: the batch is laid out ``[uncond_1..B, cond_1..B]`` under
CFG, and each sample of a batched call gets what it would get generated alone (up to float rounding)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hgc_tune.data import open_dataset
from hgc_tune.generation import GenerationSettings, generate_outputs, iter_outputs, jobs_from_samples
from hgc_tune.models import load_pipeline
from hgc_tune.policy import ControlNetWindow, GuidanceWindow, Policy, ReuseWindow, target_for_pipeline

STEPS = 6
BATCH = 3
ATTN2 = "unet.up_blocks.3.attentions.0.transformer_blocks.0.attn2"


def _policies(pipe) -> dict[str, Policy]:
    t = target_for_pipeline(pipe, num_steps=STEPS)
    return {
        "unet_blocks": Policy(t, blocks={"unet.mid_block": (0, 3), "unet.up_blocks.0": (0, 3)}, name="b"),
        "controlnet_blocks": Policy(t, blocks={"controlnet.mid_block": (0, 2, 4)}, name="cb"),
        "attention_map_reuse": Policy(t, attention={ATTN2: (ReuseWindow(1, STEPS),)}, name="a"),
        "controlnet_reuse": Policy(t, controlnet=ControlNetWindow((0, 2, 4), "reuse"), name="cr"),
        "controlnet_drop": Policy(t, controlnet=ControlNetWindow((0, 1), "drop"), name="cd"),
        "guidance_truncation": Policy(t, guidance=GuidanceWindow(3), name="g"),
    }


@pytest.fixture(scope="module")
def jobs():
    return jobs_from_samples(open_dataset("shapes", condition_type="seg", split="calibration", limit=BATCH))


@pytest.mark.parametrize(
    "mechanism",
    [
        "unet_blocks",
        "controlnet_blocks",
        "attention_map_reuse",
        "controlnet_reuse",
        "controlnet_drop",
        "guidance_truncation",
    ],
)
def test_each_mechanism_gives_a_batch_of_three_what_each_sample_gets_alone(tiny_pipe, jobs, mechanism):
    policy = _policies(tiny_pipe)[mechanism]
    alone = GenerationSettings(STEPS, 7.5, 64, 64)
    batched = GenerationSettings(STEPS, 7.5, 64, 64, samples_per_call=BATCH)
    one_by_one = list(iter_outputs(tiny_pipe, policy, jobs, alone))
    together = list(iter_outputs(tiny_pipe, policy, jobs, batched))
    again = list(iter_outputs(tiny_pipe, policy, jobs, batched))
    full = list(iter_outputs(tiny_pipe, None, jobs, batched))
    for single, batch, repeat, reference in zip(one_by_one, together, again, full):
        np.testing.assert_allclose(batch.latent, single.latent, atol=1e-3)
        assert np.array_equal(batch.latent, repeat.latent) and np.array_equal(batch.image, repeat.image)
        # the mechanism did act on the batch (a policy that changed nothing would pass the above too)
        assert not np.array_equal(batch.latent, reference.latent)


def test_several_controlnets_take_one_condition_list_per_sample(tiny_pipe, jobs, condition_image):
    multi = load_pipeline("tiny", condition="seg,depth")
    multi_jobs = [replace(job, condition=[job.condition, condition_image]) for job in jobs]
    policy = Policy(
        target_for_pipeline(multi, num_steps=STEPS),
        controlnets={"controlnet.nets.1": ControlNetWindow((0, 2), "reuse")},
        name="multi",
    )
    alone = list(iter_outputs(multi, policy, multi_jobs, GenerationSettings(STEPS, 7.5, 64, 64)))
    batched = GenerationSettings(STEPS, 7.5, 64, 64, samples_per_call=BATCH)
    together = generate_outputs(multi, multi_jobs, batched)  # no policy: the full-compute batch
    with_policy = list(iter_outputs(multi, policy, multi_jobs, batched))
    for single, batch, full in zip(alone, with_policy, together):
        np.testing.assert_allclose(batch.latent, single.latent, atol=1e-3)
        assert not np.array_equal(batch.latent, full.latent)
