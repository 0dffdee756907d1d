"""The typing module: free at run time, and the pipelines the package loads have every member that
``ControlNetPipeline`` names (mypy checks diffusers' classes statically; this checks real instances)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hgc_tune._typing import ControlNetPipeline


def _members() -> list[str]:
    methods = {
        name
        for name, value in vars(ControlNetPipeline).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }
    return sorted({*ControlNetPipeline.__annotations__, *methods, "__call__"})


def test_importing_it_imports_no_heavy_module():
    code = (
        "import sys, hgc_tune._typing\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'numpy', 'PIL') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_protocol_names_the_members_the_package_uses():
    assert _members() == [
        "__call__",
        "components",
        "config",
        "controlnet",
        "device",
        "dtype",
        "scheduler",
        "set_progress_bar_config",
        "to",
        "unet",
        "vae",
        "vae_scale_factor",
    ]


@pytest.mark.parametrize("which", ["sd", "sd-img2img", "sd-inpaint", "sdxl"])
def test_loaded_pipelines_have_every_member(which, tiny_pipe, tiny_sdxl_pipe, task_pipe):
    pipe = {"sd": tiny_pipe, "sdxl": tiny_sdxl_pipe}.get(which) or task_pipe(which.removeprefix("sd-"))
    missing = [name for name in _members() if not hasattr(pipe, name)]
    assert missing == []
    assert isinstance(pipe.vae_scale_factor, int) and pipe.vae_scale_factor > 0
    assert isinstance(pipe.device, torch.device) and isinstance(pipe.dtype, torch.dtype)
    assert {"unet", "controlnet", "scheduler", "vae"} <= set(pipe.components)
