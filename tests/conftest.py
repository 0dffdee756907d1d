"""Shared fixtures: the tiny offline pipeline and a condition image."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Generated datasets go to a per-session folder, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HGC_TUNE_CACHE", str(tmp_path_factory.mktemp("hgc-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_pipe():
    from hgc_tune.models import load_pipeline

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_pipeline("tiny")


@pytest.fixture(scope="session")
def tiny_sdxl_pipe():
    """The tiny SDXL-shaped pipeline (``StableDiffusionXLControlNetPipeline``, 64 px)."""
    from hgc_tune.models import load_pipeline

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_pipeline("tiny-sdxl")


@pytest.fixture(scope="session")
def condition_image():
    from PIL import Image

    rng = np.random.RandomState(0)
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[16:48, 8:40] = (220, 40, 40)
    array += rng.randint(0, 20, size=array.shape).astype(np.uint8)
    return Image.fromarray(array)


@pytest.fixture
def tiny_target(tiny_pipe):
    """A factory of policy targets for the tiny pipeline."""
    from hgc_tune.models import model_fingerprint
    from hgc_tune.policy import PolicyTarget

    def make(num_steps: int = 5, condition_type: str | None = None) -> PolicyTarget:
        return PolicyTarget(
            pipeline_class=type(tiny_pipe).__name__,
            unet_class=type(tiny_pipe.unet).__name__,
            controlnet_class=type(tiny_pipe.controlnet).__name__,
            fingerprint=model_fingerprint(tiny_pipe),
            num_steps=num_steps,
            scheduler=type(tiny_pipe.scheduler).__name__,
            condition_type=condition_type,
            model="tiny",
        )

    return make


@pytest.fixture(scope="session")
def generate():
    """``generate(pipe, image, steps, guidance_scale=7.5)``: the images of one seeded call, as numpy."""

    def run(pipe, image, steps: int, guidance_scale: float = 7.5) -> np.ndarray:
        return pipe(
            "a red square",
            image=image,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    return run


@pytest.fixture(scope="session")
def task_pipe():
    """``task_pipe(task)``: a tiny pipeline of that task (``img2img``, ``inpaint``), one per task per session,
    with its own modules (not shared with ``tiny_pipe``)."""
    from hgc_tune.models import load_pipeline

    pipes = {}

    def get(task: str):
        if task not in pipes:
            pipes[task] = load_pipeline("tiny", task=task)
        return pipes[task]

    return get


@pytest.fixture(scope="session")
def init_image():
    """An init image for img2img and inpainting, 64 x 64."""
    from PIL import Image

    rng = np.random.RandomState(1)
    array = np.full((64, 64, 3), 90, dtype=np.uint8)
    array[8:40, 24:56] = (40, 60, 200)
    array += rng.randint(0, 30, size=array.shape).astype(np.uint8)
    return Image.fromarray(array)


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory):
    """``tiny_lora(name="style", seed=0)``: the path of a LoRA for the tiny U-Net (rank 4 on the attention
    projections, non-zero weights), built here with peft and saved the way diffusers saves one. Skips
    without peft (a test extra)."""
    pytest.importorskip("peft")
    from diffusers import StableDiffusionControlNetPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from hgc_tune.models import load_pipeline

    made = {}

    def make(name: str = "style", seed: int = 0):
        if (name, seed) not in made:
            unet = load_pipeline("tiny").unet
            unet.add_adapter(
                LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
            )
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                # peft starts lora_B at zero (an adapter that changes nothing): give it weights.
                for key, param in unet.named_parameters():
                    if "lora_" in key:
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
            folder = tmp_path_factory.mktemp(f"lora-{name}-{seed}")
            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            StableDiffusionControlNetPipeline.save_lora_weights(
                folder, unet_lora_layers=layers, weight_name=f"{name}.safetensors"
            )
            made[name, seed] = folder / f"{name}.safetensors"
        return made[name, seed]

    return make


@pytest.fixture(scope="session")
def limited_cli():
    """Run ``hgc-tune ARGS`` in a fresh process under the reliability limits: an address space of ``memory``
    bytes (``resource.RLIMIT_AS``, default 1 GiB). Returns ``(exit status, stderr lines, seconds)``."""
    import os
    import resource
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }

    def run(*args: str, memory: int = 2**30, timeout: float = 120.0) -> tuple[int, list[str], float]:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "hgc_tune.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=limit,
            env=env,
        )
        return done.returncode, done.stderr.strip().splitlines(), time.perf_counter() - start

    return run
