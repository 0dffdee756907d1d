"""Profiling the tiny pipeline: coverage of every module, independent checks of the recorded values,
bit-identical outputs, clean detachment and save/load round trips."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import jensenshannon

from hgc_tune.errors import ProfileError
from hgc_tune.macs import MacTable
from hgc_tune.models import load_pipeline, model_fingerprint
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.models._fingerprint import weights_digest
from hgc_tune.profile import Profile, profile_pipeline
from hgc_tune.profile._artifact import ATTENTION_STATS, BLOCK_STATS
from hgc_tune.profile._metrics import cross_attention_map

STEPS = 4
GUIDANCE = 7.5
# A precomputed (empty) MAC table, for tests where the table is not under test: counting takes seconds.
EMPTY_TABLE = MacTable(model="tiny", height=64, width=64, per_image={})


@dataclass
class StandInSample:
    prompt: str
    image_seed: int
    seed: int | None = None
    negative_prompt: str | None = None

    def condition_image(self) -> Image.Image:
        rng = np.random.RandomState(self.image_seed)
        return Image.fromarray(rng.randint(0, 256, size=(64, 64, 3), dtype=np.uint8))


SAMPLES = [
    StandInSample("a red square", image_seed=1),
    StandInSample("a blue circle", image_seed=2, seed=123, negative_prompt="blurry"),
    StandInSample("two green triangles", image_seed=3),
]
# Outputs recorded by the tests' own hooks during the profiling run: module key -> one entry per call.
WATCHED = ["unet.mid_block", "unet.down_blocks.1", "controlnet.down_blocks.2", "controlnet"]
WATCHED_ATTN = "unet.up_blocks.2.attentions.1.transformer_blocks.0.attn2"


@pytest.fixture(scope="module")
def pipe():
    # One thread: on a shared, busy CPU two OpenMP threads made the tiny pipeline 5-20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_pipeline("tiny")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def profiled(pipe):
    """The profile of SAMPLES, and every output of the watched modules, recorded independently."""
    seen: dict[str, list[np.ndarray]] = {key: [] for key in [*WATCHED, WATCHED_ATTN]}
    modules = cacheable_module_keys(pipe)

    def recorder(key):
        def hook(module, args, output):
            if key == "controlnet":
                down, mid = output
                flat = torch.cat([t.reshape(-1) for t in [*down, mid]])
            else:
                flat = (output[0] if isinstance(output, tuple) else output).reshape(-1)
            seen[key].append(flat.double().numpy().copy())

        return hook

    maps: list[np.ndarray] = []

    def map_recorder(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        with torch.no_grad():
            maps.append(cross_attention_map(module, hidden, kwargs["encoder_hidden_states"]).double().numpy())

    handles = [modules[key].register_forward_hook(recorder(key)) for key in seen]
    handles.append(modules[WATCHED_ATTN].register_forward_hook(map_recorder, with_kwargs=True))
    try:
        profile = profile_pipeline(
            pipe,
            SAMPLES,
            num_steps=STEPS,
            guidance_scale=GUIDANCE,
            seed=10,
            progress=False,
            model_name="tiny",
            condition_type="seg",
            dataset="stand-in",
        )
    finally:
        for handle in handles:
            handle.remove()
    # MAC counting runs the modules first (batch 1); the generation calls are the last samples x steps.
    calls = len(SAMPLES) * STEPS
    outputs = {k: np.stack(v[-calls:]).reshape(len(SAMPLES), STEPS, -1) for k, v in seen.items()}
    outputs["maps"] = np.stack(maps[-calls:]).reshape(len(SAMPLES), STEPS, *maps[-1].shape)
    return profile, outputs


def test_profile_has_every_block_and_cross_attention_of_both_models(pipe, profiled):
    profile, _ = profiled
    keys = list(cacheable_module_keys(pipe))
    assert profile.block_keys == [k for k in keys if not k.endswith(".attn2")]
    assert profile.attention_keys == [k for k in keys if k.endswith(".attn2")]
    assert "controlnet" in profile.block_keys and "controlnet.mid_block" in profile.block_keys
    assert any(k.startswith("controlnet.") for k in profile.attention_keys)
    assert any(k.startswith("unet.") for k in profile.attention_keys)
    for key in profile.block_keys:
        for name in BLOCK_STATS:
            assert profile.stat(name, key).shape == (STEPS,)
            assert profile.stat(name, key).dtype == np.float32
    for key in profile.attention_keys:
        for name in ATTENTION_STATS:
            assert profile.stat(name, key).shape == (STEPS,)


def test_step_zero_is_nan_and_later_steps_are_in_range(profiled):
    profile, _ = profiled
    for key in profile.block_keys + profile.attention_keys:
        for name in profile.stat_names(key):
            values = profile.stat(name, key)
            assert math.isnan(values[0]), (name, key)
            assert np.isfinite(values[1:]).all(), (name, key)
            if name.startswith("std_") or "rel_l1" in name or name.endswith("_js"):
                assert (values[1:] >= 0).all(), (name, key)
        if key in profile.block_keys:
            assert (np.abs(profile.stat("mean_cos", key)[1:]) <= 1 + 1e-6).all()
        else:
            assert (profile.stat("mean_js", key)[1:] <= math.log(2)).all()


@pytest.mark.parametrize("key", WATCHED)
def test_block_statistics_match_an_independent_computation(profiled, key):
    profile, outputs = profiled
    x = outputs[key]  # [samples, steps, features], float64
    diff = np.abs(x[:, 1:] - x[:, :-1]).sum(-1) / np.abs(x[:, :-1]).sum(-1)
    norms = np.linalg.norm(x[:, 1:], axis=-1) * np.linalg.norm(x[:, :-1], axis=-1)
    cos = (x[:, 1:] * x[:, :-1]).sum(-1) / norms
    np.testing.assert_allclose(profile.stat("mean_rel_l1", key)[1:], diff.mean(0), rtol=1e-4)
    np.testing.assert_allclose(profile.stat("std_rel_l1", key)[1:], diff.std(0), rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(profile.stat("mean_cos", key)[1:], cos.mean(0), rtol=1e-5)
    np.testing.assert_allclose(profile.stat("std_cos", key)[1:], cos.std(0), rtol=1e-2, atol=1e-6)


def test_cross_attention_output_change_matches_an_independent_computation(profiled):
    profile, outputs = profiled
    x = outputs[WATCHED_ATTN]
    diff = np.abs(x[:, 1:] - x[:, :-1]).sum(-1) / np.abs(x[:, :-1]).sum(-1)
    np.testing.assert_allclose(profile.stat("mean_out_rel_l1", WATCHED_ATTN)[1:], diff.mean(0), rtol=1e-4)
    np.testing.assert_allclose(profile.stat("std_out_rel_l1", WATCHED_ATTN)[1:], diff.std(0), rtol=1e-3)


def test_cross_attention_drift_matches_scipy(profiled):
    """JS and map drift through the hooks' plumbing (steps, rows, batch) against float64 scipy on the maps."""
    profile, outputs = profiled
    maps = outputs["maps"]  # [samples, steps, batch (CFG: 2), queries, 77], rows sum to 1
    assert maps.shape[2] == 2 and maps.shape[-1] == 77
    rows = maps.shape[2] * maps.shape[3]
    js = np.zeros((len(SAMPLES), STEPS - 1))
    drift = np.zeros((len(SAMPLES), STEPS - 1))
    for n in range(len(SAMPLES)):
        for s in range(1, STEPS):
            now, before = maps[n, s].reshape(rows, 77), maps[n, s - 1].reshape(rows, 77)
            js[n, s - 1] = np.mean([jensenshannon(a, b) ** 2 for a, b in zip(now, before, strict=True)])
            drift[n, s - 1] = np.abs(now - before).sum() / np.abs(before).sum()
    np.testing.assert_allclose(profile.stat("mean_js", WATCHED_ATTN)[1:], js.mean(0), rtol=1e-4)
    np.testing.assert_allclose(profile.stat("std_js", WATCHED_ATTN)[1:], js.std(0), rtol=1e-3)
    np.testing.assert_allclose(profile.stat("mean_map_rel_l1", WATCHED_ATTN)[1:], drift.mean(0), rtol=1e-4)
    np.testing.assert_allclose(profile.stat("std_map_rel_l1", WATCHED_ATTN)[1:], drift.std(0), rtol=1e-3)


def test_metadata(pipe, profiled):
    profile, _ = profiled
    assert profile.seeds == [10, 123, 12]  # own seed wins, else seed + index
    assert profile.prompts == [s.prompt for s in SAMPLES]
    assert profile.negative_prompts == [None, "blurry", None]
    assert profile.num_steps == STEPS and profile.num_samples == 3
    assert profile.resolution == (64, 64)
    assert profile.fingerprint == model_fingerprint(pipe)
    assert profile.weights_digest == weights_digest(pipe)
    meta = profile.meta
    assert meta["condition_type"] == "seg" and meta["model"]["name"] == "tiny"
    assert meta["scheduler"] == type(pipe.scheduler).__name__
    assert meta["guidance_scale"] == GUIDANCE and meta["cfg"] is True
    assert len(meta["dataset"]["sha256"]) == 64 and meta["dataset"]["name"] == "stand-in"
    assert meta["statistics"]["block"] == ["cos", "rel_l1"]
    table = profile.mac_table
    assert table.height == 64 and table.macs("unet.mid_block") > 0


def test_reference_outputs_equal_an_unprofiled_run(pipe, profiled):
    profile, _ = profiled
    images, latents = profile.reference_images, profile.reference_latents
    assert images.dtype == np.uint8 and images.shape == (3, 64, 64, 3)
    assert latents.dtype == np.float32 and latents.shape == (3, 4, 32, 32)
    for i, (sample, seed) in enumerate(zip(SAMPLES, profile.seeds, strict=True)):
        kwargs = dict(
            prompt=sample.prompt,
            negative_prompt=sample.negative_prompt,
            image=sample.condition_image(),
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
        )
        plain = pipe(**kwargs, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
        # Bit-identical: the hooks only observe, and the reference is the pipeline's own np output.
        np.testing.assert_array_equal(images[i], (plain * 255).round().astype(np.uint8))
        if i == 0:
            generator = torch.Generator().manual_seed(seed)
            plain_latents = pipe(**kwargs, generator=generator, output_type="latent").images[0]
            np.testing.assert_array_equal(latents[i], plain_latents.numpy())
    np.testing.assert_array_equal(profile.condition_images[1], np.asarray(SAMPLES[1].condition_image()))


def test_profiling_leaves_the_pipeline_as_it_was(pipe, profiled):
    assert not hasattr(pipe, "_hgc_run_context")
    assert "step" not in vars(pipe.scheduler) and "set_timesteps" not in vars(pipe.scheduler)
    for component in (pipe.unet, pipe.controlnet):
        for name, module in component.named_modules():
            assert not module._forward_hooks, name


def test_a_failure_during_generation_removes_every_hook(pipe):
    def boom(module, args, output):
        raise RuntimeError("boom")

    handle = pipe.unet.up_blocks[1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            profile_pipeline(pipe, SAMPLES[:1], num_steps=2, progress=False, mac_table=EMPTY_TABLE)
    finally:
        handle.remove()
    assert not hasattr(pipe, "_hgc_run_context")
    for component in (pipe.unet, pipe.controlnet):
        for name, module in component.named_modules():
            assert not module._forward_hooks, name


def test_save_load_round_trip(profiled, tmp_path):
    profile, _ = profiled
    folder = profile.save(tmp_path / "runs" / "tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["profile.json", "profile.safetensors"]
    loaded = Profile.load(folder)
    assert loaded.block_keys == profile.block_keys and loaded.attention_keys == profile.attention_keys
    original = profile.tensors()
    again = loaded.tensors()
    assert sorted(again) == sorted(original)
    for name, array in original.items():
        assert again[name].dtype == array.dtype
        np.testing.assert_array_equal(again[name], array)  # NaNs compare equal here
    assert loaded.meta == profile.meta
    assert loaded.mac_table == profile.mac_table
    assert Profile.load(folder / "profile.json").seeds == profile.seeds
    # Saving again over an existing profile replaces it and leaves other files alone.
    (folder / "notes.txt").write_text("keep me")
    loaded.save(folder)
    assert (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "profile.json", "profile.safetensors"]


def test_stat_rejects_unknown_names_and_keys(profiled):
    profile, _ = profiled
    with pytest.raises(ProfileError, match="`name` must be one of"):
        profile.stat("mean_js", "unet.mid_block")
    with pytest.raises(ProfileError, match="`key` must be a profiled module key"):
        profile.stat("mean_cos", "unet.nope")
    matrix = profile.stat_matrix("mean_js")
    assert matrix.shape == (len(profile.attention_keys), STEPS)


def test_bad_arguments_are_refused(pipe):
    with pytest.raises(ProfileError, match="num_steps"):
        profile_pipeline(pipe, SAMPLES, num_steps=0, progress=False)
    with pytest.raises(ProfileError, match="at least one sample"):
        profile_pipeline(pipe, [], progress=False)
    with pytest.raises(ProfileError, match="height"):
        profile_pipeline(pipe, SAMPLES, height=60, progress=False)
    with pytest.raises(ProfileError, match="condition_image"):
        profile_pipeline(pipe, [object()], progress=False)
    other = MacTable(model="tiny", height=128, width=128, per_image={})
    with pytest.raises(ProfileError, match="counted at the profiled resolution 64x64"):
        profile_pipeline(pipe, SAMPLES, progress=False, mac_table=other)


def test_a_precomputed_mac_table_is_recorded(pipe):
    profile = profile_pipeline(pipe, SAMPLES[:1], num_steps=2, progress=False, mac_table=EMPTY_TABLE)
    assert profile.mac_table == EMPTY_TABLE
    assert profile.num_steps == 2 and profile.seeds == [0]


def test_a_pipeline_with_an_applied_policy_is_refused(pipe):
    from diffusers.hooks import ModelHook

    from hgc_tune.runtime._registry import register_hook, remove_hook

    register_hook(pipe.unet.mid_block, ModelHook(), "hgc_test_cache")
    try:
        with pytest.raises(ProfileError, match="full compute"):
            profile_pipeline(pipe, SAMPLES, progress=False)
    finally:
        remove_hook(pipe.unet.mid_block, "hgc_test_cache")


def test_a_condition_of_another_size_is_stored_as_the_pipeline_saw_it(pipe):
    """The stored condition is what the pipeline received, so regenerating from it reproduces the reference
    (a search re-generates policy images from the stored conditions)."""

    class SmallCondition(StandInSample):
        def condition_image(self) -> Image.Image:
            return super().condition_image().resize((40, 40), Image.BILINEAR)

    sample = SmallCondition("a red square", image_seed=4)
    profile = profile_pipeline(pipe, [sample], num_steps=2, progress=False, mac_table=EMPTY_TABLE)
    assert profile.condition_images.shape == (1, 64, 64, 3)
    again = pipe(
        prompt=sample.prompt,
        image=Image.fromarray(profile.condition_images[0]),
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(profile.seeds[0]),
        output_type="np",
    ).images[0]
    assert np.array_equal((again * 255).round().astype(np.uint8), profile.reference_images[0])
