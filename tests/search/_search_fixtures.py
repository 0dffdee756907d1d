"""Shared test data for tests/search: one tiny profile per test session, copied into each test's folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 5
CALIBRATION = 3
BUDGET = 0.05
METRIC = "ssim"  # the tiny preset is random: a reference metric is well-defined, task metrics are not

_PROFILE: dict[str, Path] = {}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread while a module runs (restored after): the tiny model gains nothing from more, and
    on two shared cores a second spinning OpenMP thread makes every generation several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_profile_dir(pipe, root: Path) -> Path:
    """A saved profile of the tiny pipeline (shapes ``seg``, 5 steps, 3 samples), made once per session."""
    if "dir" not in _PROFILE:
        from hgc_tune.data import open_dataset
        from hgc_tune.profile import profile_pipeline

        samples = open_dataset("shapes", condition_type="seg", split="calibration", limit=CALIBRATION)
        profile = profile_pipeline(
            pipe, samples, num_steps=STEPS, progress=False, model_name="tiny", dataset="shapes"
        )
        _PROFILE["dir"] = profile.save(root / "tiny-seg-profile")
    return _PROFILE["dir"]


def copy_profile(pipe, root: Path, dest: Path) -> Path:
    """A private copy of the session profile (each test gets its own study and held-out cache)."""
    shutil.copytree(tiny_profile_dir(pipe, root), dest)
    return dest


CLI = "import sys; from hgc_tune.cli import main; sys.exit(main(sys.argv[1:]))"


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


def cli_env() -> dict[str, str]:
    # One thread per process: the machine's two cores are shared by every worker and every test.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=cli_env(), capture_output=True, text=True, timeout=timeout)


def search_args(profile, storage_url: str, out, trials: int, *extra: str, study: str) -> tuple[str, ...]:
    """`hgc-tune search` arguments of the multi-process tests: one enqueued peer, no held-out check."""
    return (
        "search",
        "--profile",
        str(profile),
        "--budget",
        str(BUDGET),
        "--metric",
        METRIC,
        "--trials",
        str(trials),
        "--storage",
        storage_url,
        "--study-name",
        study,
        "--peers",
        "deepcache-n3-b0",
        "--heldout-samples",
        "0",
        "--no-progress",
        "--json",
        "--out",
        str(out),
        *extra,
    )


_STORAGES: dict[str, object] = {}


def study_trials(storage_url: str, study: str) -> list:
    """The trials of ``study`` in the storage (none when the study does not exist yet)."""
    import optuna

    from hgc_tune.search._storage import open_storage

    # One storage per URL: polling must not open a connection pool per call (a server has few connections).
    storage = _STORAGES.get(storage_url) or _STORAGES.setdefault(
        storage_url, open_storage(storage_url, heartbeat_interval=1)
    )
    if study not in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
        return []
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def killable_mid_trial(trials, completed: int) -> bool:
    """At least ``completed`` trials are done and one is running with all its parameters sampled (the
    objective records the metric only after building the policy): a worker killed now leaves a stale trial
    whose retry must reuse exactly those parameters. Killed earlier, the trial would have none to reuse."""
    states = [t.state.name for t in trials]
    sampled = any(t.state.name == "RUNNING" and "metric" in t.user_attrs for t in trials)
    return states.count("COMPLETE") >= completed and sampled


def wait_for(predicate, trials, deadline: float) -> list:
    """Poll ``trials()`` until ``predicate`` holds for them (or fail at ``deadline``, a monotonic time)."""
    while time.monotonic() < deadline:
        found = trials()
        if predicate(found):
            return found
        time.sleep(0.3)
    pytest.fail("the search did not reach the expected state in time")


# hgc_tune.models._blocks.cacheable_module_keys(load_pipeline("tiny")) (checked against the pipeline in
# test_search_run.py) and the SD1.5 layout (two layers per down block, three per up block).
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


def make_target(num_steps: int, condition_type: str | None = "seg"):
    from hgc_tune.policy import PolicyTarget

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


def synthetic_space(keys: list[str], num_steps: int, *, guidance: bool = True):
    """A search space with made-up change curves (decaying, different per module)."""
    import math

    from hgc_tune.search import PolicySpace

    def curve(i: int) -> tuple[float, ...]:
        return (math.nan, *[(0.9 + 0.1 * i) * 0.7**s for s in range(1, num_steps)])

    blocks = [k for k in keys if k != "controlnet" and not k.endswith(".attn2")]
    attention = [k for k in keys if k.endswith(".attn2")]
    return PolicySpace(
        target=make_target(num_steps),
        module_keys=tuple(keys),
        block_change={k: curve(i) for i, k in enumerate(blocks)},
        attention_change={k: tuple(0.1 * v for v in curve(i)) for i, k in enumerate(attention)},
        cfg=True,
        guidance=guidance,
    )
