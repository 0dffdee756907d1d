"""Regional compilation that leaves hgc-tune's Python-side dispatch outside the compiled graphs.

Compiling a module whose ``forward`` carries a cache hook would trace the hook and guard on the step index:
``torch.compile(pipe.unet)`` on a pipeline with a policy recompiles at every step until dynamo hits its
recompile limit (``torch._dynamo.config.recompile_limit``) and falls back to eager. Instead, the largest
submodules of the U-Net and ControlNet that contain no hooked module are compiled in place
(``module.compile()``), so cached blocks dispatch in Python between compiled regions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from hgc_tune.runtime._context import _ATTR, run_context

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

__all__ = ["compile_regions"]


def _is_hooked(module: torch.nn.Module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and bool(registry.hooks)


def _contains_hook(module: torch.nn.Module) -> bool:
    return any(_is_hooked(m) for m in module.modules())


def _compile_unhooked(
    module: torch.nn.Module, prefix: str, compiled: list[str], kwargs: dict[str, Any]
) -> None:
    # Containers have no forward of their own: compile their members instead.
    is_container = isinstance(module, torch.nn.ModuleList | torch.nn.ModuleDict | torch.nn.Sequential)
    if not is_container and not _contains_hook(module):
        if any(True for _ in module.parameters()):
            module.compile(**kwargs)
            compiled.append(prefix)
        return
    for name, child in module.named_children():
        _compile_unhooked(child, f"{prefix}.{name}" if prefix else name, compiled, kwargs)


def compile_regions(pipe: ControlNetPipeline, **compile_kwargs: Any) -> list[str]:
    """Compile (in place) the largest hook-free submodules of ``pipe.unet`` and ``pipe.controlnet``.

    Use it instead of ``torch.compile(pipe.unet)``, which would trace the policy's hooks, guard on the step
    index and recompile at every step until dynamo's recompile limit. Call it after ``apply_policy``. Without
    any policy applied, this compiles each model whole. With a
    mode that replays CUDA graphs (``reduce-overhead``, ``max-autotune``), the policy's hooks then keep
    copies of the outputs they reuse (see :attr:`RunContext.copy_cached_outputs`).

    Args:
        pipe: The pipeline.
        **compile_kwargs: Passed to ``torch.compile`` (e.g. ``mode="max-autotune-no-cudagraphs"``).

    Returns:
        The module keys of the compiled regions.
    """
    compiled: list[str] = []
    for component in ("controlnet", "unet"):
        _compile_unhooked(getattr(pipe, component), component, compiled, compile_kwargs)
    if _uses_cuda_graphs(compile_kwargs) and hasattr(pipe, _ATTR):
        run_context(pipe).copy_cached_outputs = True
    return compiled


def _uses_cuda_graphs(compile_kwargs: dict[str, Any]) -> bool:
    """Whether ``torch.compile(**compile_kwargs)`` replays CUDA graphs (on a CUDA device)."""
    options = compile_kwargs.get("options") or {}
    return compile_kwargs.get("mode") in ("reduce-overhead", "max-autotune") or bool(
        options.get("triton.cudagraphs")
    )
