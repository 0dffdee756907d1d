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
