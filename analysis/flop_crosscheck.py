"""Cross-check hgc-tune's fvcore MAC count of a U-Net and a ControlNet with PyTorch's own FLOP counter.

``torch.utils.flop_counter.FlopCounterMode`` counts at the dispatcher (it runs on meta tensors, so even the
2.6 B-parameter SDXL U-Net costs nothing to count) and counts 2 FLOPs per multiply-accumulate of matrix
products and convolutions (``mm``, ``addmm``, ``bmm``, ``convolution``; ``scaled_dot_product_attention``
reaches it as its matrix products), and nothing else. fvcore (hgc-tune's count, a jit trace that runs the
model) counts one per multiply-accumulate of ``linear``, ``conv``, ``matmul``/``bmm``/``einsum`` and, in the
``complete`` convention, the attention products; it also estimates the normalisations (``group_norm``,
``layer_norm``) and the nearest upsampling. So::

    FlopCounterMode FLOPs / 2 == fvcore complete - (group_norm + layer_norm + upsample_nearest2d)

and ``paper`` is that minus the attention products. The script prints both counts by operator and the check.

Usage:
    python analysis/flop_crosscheck.py --model sdxl --resolution 1024   # ~10 CPU minutes (fvcore runs it)
    python analysis/flop_crosscheck.py --model tiny-sdxl --resolution 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

# fvcore operator names that are estimates of elementwise work, not products (FlopCounterMode skips them).
ESTIMATED_OPS: tuple[str, ...] = ("group_norm", "layer_norm", "batch_norm", "upsample_nearest2d")


def denoiser_inputs(pipe: Any, component: str, height: int, width: int, device: Any = None) -> tuple:
    """The positional inputs ``count_pipeline_macs`` traces ``component`` with (batch 1, no residuals)."""
    from hgc_tune.macs._pipeline import _added_cond, _added_cond_shapes, _text_tokens, _vae_scale_factor

    model = getattr(pipe, component)
    device = device or model.device
    factor = _vae_scale_factor(pipe)
    sample = torch.zeros((1, model.config.in_channels, height // factor, width // factor), device=device)
    text = torch.zeros((1, _text_tokens(pipe), model.config.cross_attention_dim), device=device)
    extra = _added_cond(_added_cond_shapes(pipe, model), device, torch.float32)
    timestep = torch.tensor(500, device=device)
    if component == "controlnet":
        cond = torch.zeros((1, 3, height, width), device=device)
        return (sample, timestep, text, cond, *extra)
    return (sample, timestep, text, *extra)


def _call(pipe: Any, component: str):
    from hgc_tune.macs._pipeline import _added_cond_shapes, _ControlNetCall, _UnetCall

    added = _added_cond_shapes(pipe, getattr(pipe, component)) is not None
    return _ControlNetCall(added) if component == "controlnet" else _UnetCall(added)


def fvcore_by_operator(pipe: Any, component: str, height: int, width: int) -> dict[str, int]:
    """fvcore's MACs of one forward of ``component`` by operator, with hgc-tune's handles."""
    from fvcore.nn import FlopCountAnalysis

    from hgc_tune.macs._count import _ZERO_MAC_OPS, _Traced
    from hgc_tune.macs._sdpa import baddbmm_flop_jit, sdpa_flop_jit

    wrapper = _Traced(component, getattr(pipe, component), _call(pipe, component))
    analysis = FlopCountAnalysis(wrapper, denoiser_inputs(pipe, component, height, width))
    analysis.set_op_handle(**dict.fromkeys(_ZERO_MAC_OPS))
    analysis.set_op_handle(
        "aten::scaled_dot_product_attention", sdpa_flop_jit, "aten::baddbmm", baddbmm_flop_jit
    )
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad():
        return {op: int(n) for op, n in sorted(analysis.by_operator().items())}


def flop_counter_by_operator(meta_pipe: Any, component: str, height: int, width: int) -> dict[str, int]:
    """``FlopCounterMode``'s FLOPs of one forward of ``component`` (a meta-device model) by aten operator."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = denoiser_inputs(meta_pipe, component, height, width, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _call(meta_pipe, component)(getattr(meta_pipe, component), *inputs)
    return {str(op): int(n) for op, n in sorted(counter.get_flop_counts()["Global"].items(), key=str)}


def crosscheck(pipe: Any, meta_pipe: Any, component: str, height: int, width: int) -> dict[str, Any]:
    """Both counts of one forward of ``component`` and whether they agree as the module docstring says."""
    fvcore = fvcore_by_operator(pipe, component, height, width)
    flops = flop_counter_by_operator(meta_pipe, component, height, width)
    complete = sum(fvcore.values())
    estimated = sum(fvcore.get(op, 0) for op in ESTIMATED_OPS)
    attention = fvcore.get("scaled_dot_product_attention", 0) + fvcore.get("baddbmm", 0)
    total_flops = sum(flops.values())
    return {
        "component": component,
        "fvcore_macs_by_operator": fvcore,
        "fvcore_complete": complete,
        "fvcore_paper": complete - attention,
        "fvcore_estimated_elementwise": estimated,
        "flop_counter_flops_by_operator": flops,
        "flop_counter_flops": total_flops,
        "flop_counter_macs": total_flops // 2,
        "agrees": total_flops == 2 * (complete - estimated),
    }


def main(argv: list[str] | None = None) -> int:
    from types import SimpleNamespace

    from hgc_tune.models import load_pipeline
    from hgc_tune.models._presets import build_preset_components

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="sdxl", help="a random-weight preset (default: sdxl)")
    parser.add_argument("--resolution", type=int, default=1024)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    pipe = load_pipeline(args.model, shape_only=True)
    with torch.device("meta"):
        components = build_preset_components(args.model)
    meta_pipe = SimpleNamespace(**components, vae_scale_factor=pipe.vae_scale_factor)
    result = {
        "model": args.model,
        "resolution": args.resolution,
        "checks": [
            crosscheck(pipe, meta_pipe, c, args.resolution, args.resolution) for c in ("unet", "controlnet")
        ],
        "seconds": round(time.perf_counter() - start, 1),
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if all(c["agrees"] for c in result["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
