"""Training mechanics of the shapes model: schedules, budgets, noise, prompts, the scene pool."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.shapes import stages as st
from training.shapes.pool import render_pool


def test_lr_factor_warmup_then_cosine():
    assert st.lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert st.lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert st.lr_factor(10, 100, 10) == pytest.approx(1.0)
    # halfway through the decay: 0.1 + 0.9 * 0.5 * (1 + cos(pi / 2)) = 0.55
    assert st.lr_factor(55, 100, 10) == pytest.approx(0.55)
    assert st.lr_factor(100, 100, 10) == pytest.approx(0.1)
    assert st.lr_factor(500, None, 10) == pytest.approx(1.0)  # unknown length: constant after warm-up
    assert st.lr_factor(0, 20, 10) == pytest.approx(0.5)  # warm-up shrinks to a tenth of a short stage


def test_stage_budget_fixed_iterations():
    budget = st.StageBudget(seconds=None, iterations=3)
    assert [budget.keep_going(i) for i in range(5)] == [True, True, True, False, False]
    with pytest.raises(ValueError):
        st.StageBudget(seconds=None)


def test_stage_budget_plans_from_measured_speed(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(st.time, "monotonic", lambda: clock["now"])
    synced = []
    budget = st.StageBudget(seconds=100.0, sync=lambda: synced.append(1), start=0.0)
    done = 0
    while budget.keep_going(done):
        done += 1
        clock["now"] = float(done)  # one second per iteration
        if done == 26:
            break
    # probe between iterations 5 and 25: 1 s each; 75 s left at iteration 25 -> 25 + int(0.97 * 75) = 97
    assert budget.planned == 97
    assert len(synced) == 2
    clock["now"] = 99.0
    assert budget.keep_going(50)
    clock["now"] = 100.5
    assert not budget.keep_going(51)  # the deadline wins over the plan


def test_diffusion_schedule_matches_ddpm():
    from diffusers import DDPMScheduler

    from hgc_tune.models._presets import SD15_SCHEDULER_CONFIG

    schedule = st.DiffusionSchedule("cpu")
    reference = DDPMScheduler.from_config(dict(SD15_SCHEDULER_CONFIG))
    x, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(schedule.add_noise(x, noise, t), reference.add_noise(x, noise, t))
    ab = reference.alphas_cumprod.double()
    for step in (10, 999):
        snr = float(ab[step] / (1 - ab[step]))
        assert float(schedule.loss_weight[step]) == pytest.approx(min(snr, 5.0) / snr, rel=1e-5)
    assert float(schedule.loss_weight[999]) == pytest.approx(1.0)  # noisy end: SNR < 5, weight 1


def test_high_noise_bias_shifts_timesteps_up():
    schedule = st.DiffusionSchedule("cpu")
    g = torch.Generator().manual_seed(0)
    uniform = schedule.sample_timesteps(4000, g, "cpu")
    biased = schedule.sample_timesteps(4000, g, "cpu", high_noise_bias=1.0)
    assert int(uniform.min()) >= 0 and int(biased.max()) <= 999
    assert float(uniform.float().mean()) == pytest.approx(499.5, abs=15)
    # t = 1000 (1 - u^3): mean 1000 * 3/4
    assert float(biased.float().mean()) == pytest.approx(750, abs=15)


@pytest.fixture(scope="module")
def pool():
    from hgc_tune.data._shapes import render_scene

    return render_pool(render_scene, [1_000_000, 1_000_001, 1_000_002])


def test_pool_holds_the_scenes_channel_first(pool):
    from hgc_tune.data._shapes import render_scene

    scene = render_scene(1_000_001)
    assert len(pool) == 3 and pool.seeds == [1_000_000, 1_000_001, 1_000_002]
    np.testing.assert_array_equal(pool.images[1].permute(1, 2, 0).numpy(), scene.image)
    assert tuple(pool.conditions["seg"].shape) == (3, 3, 64, 64)
    assert tuple(pool.conditions["canny"].shape) == (3, 1, 64, 64)
    canny = pool.condition_batch("canny", torch.tensor([1]))
    assert tuple(canny.shape) == (1, 3, 64, 64)
    for channel in range(3):
        np.testing.assert_allclose(canny[0, channel].numpy(), scene.canny / 255.0, atol=1e-6)
    images = pool.image_batch(torch.tensor([1]))
    np.testing.assert_allclose(images[0, 0].numpy(), scene.image[:, :, 0] / 127.5 - 1.0, atol=1e-6)
    assert pool.prompts[int(pool.prompt_ids[1])] == scene.prompt


def test_pool_rendering_in_workers_matches(pool):
    from hgc_tune.data._shapes import render_scene

    forked = render_pool(render_scene, pool.seeds, workers=2)
    assert forked.seeds == pool.seeds
    assert torch.equal(forked.images, pool.images)
    assert torch.equal(forked.conditions["depth"], pool.conditions["depth"])


def test_pool_rendering_stops_at_the_deadline():
    from hgc_tune.data._shapes import render_scene

    stopped = render_pool(render_scene, range(1_000_000, 1_000_010), deadline=0.0, min_scenes=2)
    assert len(stopped) == 2


def test_prompt_dropout():
    means = torch.zeros(4, 4, 2, 2)
    embeds = torch.arange(2, dtype=torch.float32).view(2, 1, 1).expand(2, 3, 5).clone()
    empty = torch.full((1, 3, 5), -1.0)

    class _Pool:
        prompt_ids = torch.tensor([1, 0, 1, 1])

    conditioning = st.Conditioning(means, torch.zeros_like(means), 0.5, embeds, empty, prompt_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    _, e = conditioning.batch(_Pool, torch.tensor([0, 1]), g)
    assert e[:, 0, 0].tolist() == [1.0, 0.0]
    _, e = conditioning.batch(_Pool, torch.tensor([0, 1]), g, dropout=1.0)
    assert (e == -1.0).all()


def test_prompt_embeddings_match_the_pipeline(tmp_path):
    """Training encodes prompts exactly as the saved pipeline will (tokenizer and text encoder reloaded)."""
    from diffusers import StableDiffusionPipeline

    from hgc_tune.models._tokenizer import build_offline_tokenizer
    from training.shapes import architecture as arch
    from training.shapes.run import _round_weights, _save_base

    torch.manual_seed(0)
    tokenizer = build_offline_tokenizer()
    encoder = _round_weights(arch.build_text_encoder(tokenizer), "fp16").eval()
    _save_base(
        tmp_path,
        vae=arch.build_vae(),
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=arch.build_unet(),
        dtype="fp16",
    )
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path, torch_dtype=torch.float32, safety_checker=None)
    prompt = "a photo of a red striped circle and a cyan striped cross on a wood background"
    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True)
    ours = st.encode_prompts(encoder, tokenizer, [prompt, ""], device="cpu")
    torch.testing.assert_close(ours[0:1], cond)
    torch.testing.assert_close(ours[1:2], uncond)
    assert not torch.allclose(cond, uncond)


def test_latent_scaling_factor_is_inverse_rms():
    means = torch.full((10, 4, 2, 2), 3.0)
    stds = torch.full_like(means, 4.0)
    # z = 3 + 4 n, E[z^2] = 9 + 16 = 25 -> 1/5 (sampled, so approximately)
    g = torch.Generator().manual_seed(0)
    big_means, big_stds = means.repeat(500, 1, 1, 1), stds.repeat(500, 1, 1, 1)
    assert st.latent_scaling_factor(big_means, big_stds, g, max_samples=5000) == pytest.approx(0.2, rel=0.02)
    assert math.isclose(st.latent_scaling_factor(means, torch.zeros_like(means), g), 1 / 3)


def test_a_non_finite_loss_rolls_back_and_halves_the_learning_rate():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(8, 3)

    def step(i: int):
        loss = model(x).pow(2).mean()
        if i == 2:  # the third iteration blows up and poisons the weights
            loss = loss * float("nan")
        loss.backward()
        return loss.unsqueeze(0)

    losses, lines = st.LossLog(), []
    budget = st.StageBudget(seconds=None, iterations=5)
    result = st._run_loop(
        "toy", step, ("mse",), [model], optimizer, [1e-2], budget, 1, 1, losses, lines.append
    )
    assert result.rollbacks == 1 and result.iterations == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [p["iteration"] for p in losses.curves["toy"]] == [1, 2, 4, 5]
    # cosine over 5 iterations (warm-up 1), halved after the rollback: iteration 3 (0-based) is halfway,
    # 0.5 * (0.1 + 0.45 * (1 + cos(pi/2))) = 0.275; iteration 4: 0.5 * (0.1 + 0.45 * (1 + cos(3pi/4)))
    halfway, three_quarters = 0.275, 0.5 * (0.1 + 0.45 * (1 - math.sqrt(0.5)))
    lrs = [p["lr"] for p in losses.curves["toy"]]
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-2 * halfway, 1e-2 * three_quarters])
    assert any("rolled back" in line for line in lines)


def _sigterm_is_default(_: int) -> bool:
    import signal

    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_rendering_workers_die_on_sigterm_under_the_trainers_handler(pool):
    """Workers forked while the trainer's SIGTERM handler (which only sets a flag) is installed must not
    inherit it: `Pool.terminate()` would wait for them for ever."""
    import multiprocessing
    import signal

    from hgc_tune.data._shapes import render_scene
    from training.shapes.pool import _default_signals
    from training.shapes.resume import stop_on_signals

    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        with multiprocessing.get_context("fork").Pool(2, initializer=_default_signals) as workers:
            assert all(workers.map(_sigterm_is_default, range(4)))
        forked = render_pool(render_scene, pool.seeds, workers=2)
    assert forked.seeds == pool.seeds


def test_a_child_forked_under_the_trainers_handler_dies_on_sigterm_before_any_initializer():
    """The race behind a CI hang: `Pool.terminate()` can reach a worker before its initializer restored the
    default handler. The trainer's handler itself must act as the default in any forked process."""
    import os
    import signal
    import time

    from training.shapes.resume import stop_on_signals

    ready_read, ready_write = os.pipe()
    with stop_on_signals():
        child = os.fork()
        if child == 0:  # pragma: no cover - the child only waits to be signalled
            os.write(ready_write, b"1")
            while True:
                time.sleep(0.05)
        # Signal only once the child runs Python: CPython drops a signal that arrives while the fork is still
        # being completed in the child, and this test is about the handler, not that window.
        assert os.read(ready_read, 1) == b"1"
        os.kill(child, signal.SIGTERM)
        deadline = time.monotonic() + 20
        status = 0
        while time.monotonic() < deadline:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            raise AssertionError("the forked child outlived SIGTERM: it kept the trainer's flag-only handler")
    os.close(ready_read)
    os.close(ready_write)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_channel_mean_loss_is_the_error_of_the_predicted_pictures_channel_means():
    schedule = st.DiffusionSchedule("cpu")
    g = torch.Generator().manual_seed(0)
    x0, noise, predicted = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([999, 500, 20])
    noisy = schedule.add_noise(x0, noise, t)
    a, s = schedule.sqrt_alpha[t].view(-1, 1, 1, 1), schedule.sqrt_sigma[t].view(-1, 1, 1, 1)
    predicted_x0 = (noisy - s * predicted) / a
    expected = (predicted_x0 - x0).mean(dim=(2, 3)).pow(2).mean(dim=1)
    ours = st._channel_mean_loss(predicted - noise, schedule.inverse_snr[t])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    # the noisiest step weighs most: the same noise error costs 0.068^-2 / 0.0x as much as at t=20
    assert ours[0] > 100 * ours[2]
    # an error with no spatial mean (a pattern, not a colour) costs nothing
    pattern = predicted - noise - (predicted - noise).mean(dim=(2, 3), keepdim=True)
    assert st._channel_mean_loss(pattern, schedule.inverse_snr[t]).abs().max() < 1e-8


def test_a_trained_text_encoder_encodes_each_batch_like_the_cached_embeddings():
    from hgc_tune.models._tokenizer import build_offline_tokenizer
    from training.shapes import architecture as arch

    torch.manual_seed(0)
    tokenizer = build_offline_tokenizer()
    encoder = arch.build_text_encoder(tokenizer).eval()
    prompts = [
        "a photo of a red striped circle on a sand background",
        "a photo of a blue square on a sky background",
    ]
    means = torch.zeros(3, 4, 2, 2)

    class _Pool:
        prompt_ids = torch.tensor([1, 0, 1])

    cached = st.Conditioning(
        means, torch.zeros_like(means), 0.5, st.encode_prompts(encoder, tokenizer, prompts, device="cpu"),
        st.encode_prompts(encoder, tokenizer, [""], device="cpu"), prompt_dropout=0.5,
    )  # fmt: skip
    trained = st.Conditioning(
        means, torch.zeros_like(means), 0.5, cached.prompt_embeds, cached.empty_embed, prompt_dropout=0.5,
        text_encoder=encoder, prompt_tokens=st.tokenize_prompts(tokenizer, prompts, device="cpu"),
        empty_tokens=st.tokenize_prompts(tokenizer, [""], device="cpu"),
    )  # fmt: skip
    index = torch.tensor([0, 1, 2, 0, 1, 2])
    _, expected = cached.batch(_Pool, index, torch.Generator().manual_seed(3))
    _, ours = trained.batch(_Pool, index, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, expected)
    dropped = (expected == cached.empty_embed).flatten(1).all(dim=1)
    assert 0 < int(dropped.sum()) < len(index)  # both branches (prompt dropout) were exercised
    ours.sum().backward()
    assert encoder.get_input_embeddings().weight.grad.abs().sum() > 0


def test_offset_noise_adds_a_constant_per_sample_and_channel():
    plain = st.training_noise((256, 4, 16, 16), 0.0, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(plain, torch.randn(256, 4, 16, 16, generator=torch.Generator().manual_seed(0)))
    offset = st.training_noise((256, 4, 16, 16), 0.3, torch.Generator().manual_seed(0), "cpu")
    # the same pixel noise, shifted by one constant per sample and channel
    shift = offset - plain
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))
    assert 0.25 < float(shift[:, :, 0, 0].std()) < 0.35  # about the offset
    assert float(plain.mean(dim=(2, 3)).std()) < 0.1  # 1/16 without it
