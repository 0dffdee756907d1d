"""MACs of SDXL + ControlNet: the denoisers are counted with SDXL's ``added_cond_kwargs`` and both text
encoders; an independent count (PyTorch's FlopCounterMode) agrees; analytic policy MACs equal the MACs
counted while a policy runs on ``StableDiffusionXLControlNetPipeline``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hgc_tune.executor import apply_policy
from hgc_tune.macs import count_executed_macs, count_pipeline_macs
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.policy import (
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    ReuseWindow,
    full_compute_policy,
    peer_policy,
    policy_macs,
    target_for_pipeline,
)

STEPS = 5
SCRIPT = Path(__file__).resolve().parents[2] / "analysis" / "flop_crosscheck.py"


@pytest.fixture(scope="module")
def table(tiny_sdxl_pipe):
    return count_pipeline_macs(tiny_sdxl_pipe, height=64, width=64, model_name="tiny-sdxl")


@pytest.fixture(scope="module")
def crosscheck():
    spec = importlib.util.spec_from_file_location("flop_crosscheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sdxl_table_counts_the_sdxl_parts(table):
    keys = set(table.per_image)
    # the text_time embedding of both denoisers ran: the added_cond_kwargs reached them
    for key in ("unet.add_embedding", "controlnet.add_embedding", "text_encoder", "text_encoder_2"):
        assert table.macs(key, "paper") > 0, key
    assert {f"unet.up_blocks.{i}" for i in range(3)} <= keys and "unet.up_blocks.3" not in keys
    assert table.unsupported_ops == {}
    for convention in ("paper", "complete"):
        gen = table.generation_macs(steps=20, cfg=True, convention=convention)
        assert sum(gen["blocks"].values()) == gen["total"] == gen["unet"] + gen["controlnet"]
        assert gen["unet"] == 40 * table.macs("unet", convention)
        # both text encoders encode the prompt and the negative prompt
        both = table.macs("text_encoder", convention) + table.macs("text_encoder_2", convention)
        assert gen["text_encoder"] == 2 * both


@pytest.mark.parametrize("component", ["unet", "controlnet"])
def test_fvcore_count_agrees_with_torch_flop_counter(tiny_sdxl_pipe, table, crosscheck, component):
    """FlopCounterMode (meta tensors, 2 FLOPs per MAC of mm/addmm/bmm/convolution, attention included) sees
    exactly fvcore's complete count less fvcore's norm and upsampling estimates."""
    from hgc_tune.models._presets import build_preset_components

    with torch.device("meta"):
        components = build_preset_components("tiny-sdxl")
    meta_pipe = SimpleNamespace(**components, vae_scale_factor=tiny_sdxl_pipe.vae_scale_factor)
    result = crosscheck.crosscheck(tiny_sdxl_pipe, meta_pipe, component, 64, 64)
    assert result["agrees"], result
    assert result["flop_counter_flops"] % 2 == 0
    # the same fvcore count as the MAC table's (which the U-Net took with the ControlNet's residuals: adds)
    assert result["fvcore_complete"] == table.macs(component, "complete")
    assert result["fvcore_paper"] == table.macs(component, "paper")
    estimated = result["fvcore_estimated_elementwise"]
    assert 0 < estimated < 0.05 * result["fvcore_complete"]


def _policies(pipe) -> list[Policy]:
    target = target_for_pipeline(pipe, num_steps=STEPS, model="tiny-sdxl")
    keys = cacheable_module_keys(pipe)
    attn = "unet.up_blocks.1.attentions.0.transformer_blocks.1.attn2"
    return [
        full_compute_policy(target),
        peer_policy("deepcache-n2-b0", target, keys),
        peer_policy("tgate-g2-cfg", target, keys),
        peer_policy("cnwin-k2-drop", target, keys),
        Policy(
            target,
            blocks={
                "unet.mid_block": (0, 3),
                "unet.up_blocks.1": (0, 2, 4),
                "controlnet.down_blocks.2": (0,),
            },
            attention={attn: (ReuseWindow(0, 3),)},  # nested inside a cached block
            controlnet=ControlNetWindow((0, 1, 4), "reuse"),
            guidance=GuidanceWindow(2),
            name="mixed",
        ),
    ]


@pytest.mark.parametrize("cfg", [True, False])
def test_analytic_policy_macs_equal_counted_macs_on_sdxl(tiny_sdxl_pipe, table, cfg):
    pipe = tiny_sdxl_pipe
    condition = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reductions = set()
    for policy in _policies(pipe):
        with (
            apply_policy(pipe, policy),
            count_executed_macs(pipe, table, "paper") as paper,
            count_executed_macs(pipe, table, "complete") as complete,
        ):
            pipe(
                "a red circle",
                image=condition,
                num_inference_steps=STEPS,
                guidance_scale=7.5 if cfg else 1.0,
                height=64,
                width=64,
                output_type="latent",
            )
        for convention, counted in (("paper", paper), ("complete", complete)):
            analytic = policy_macs(policy, table, cfg=cfg, convention=convention)
            assert counted.total == analytic["policy"], (policy.name, convention)
        reductions.add(round(analytic["reduction"], 6))
    assert len(reductions) == 5


# `hgc-tune macs --model sdxl --resolution 1024 --steps 20 --json` (analysis/RESULTS.md): one forward, one
# image, 1024², in the paper and complete conventions.
SDXL_1024 = {
    "unet": {"paper": 2_991_022_407_680, "complete": 3_382_980_116_480},
    "controlnet": {"paper": 1_337_083_740_160, "complete": 1_511_184_056_320},
}
# FlopCounterMode on the meta-device sdxl preset at 1024², in FLOPs (analysis/RESULTS.md).
SDXL_1024_FLOPS = {"unet": 6_761_236_398_080, "controlnet": 3_020_382_371_840}


@pytest.fixture(scope="module")
def sdxl_denoisers():
    from hgc_tune.models._presets import build_shape_only_components

    components = build_shape_only_components("sdxl")
    return SimpleNamespace(unet=components["unet"], controlnet=components["controlnet"], vae_scale_factor=8)


@pytest.fixture(scope="module")
def sdxl_small_counts(sdxl_denoisers):
    """Per-forward counts of the storage-free sdxl denoisers by pixel count, traced on demand."""
    counts: dict[int, dict[str, dict[str, int]]] = {}

    def at(size: int) -> dict[str, dict[str, int]]:
        if size * size not in counts:
            table = count_pipeline_macs(sdxl_denoisers, height=size, width=size, model_name="sdxl")
            counts[size * size] = {c: {m: table.macs(c, m) for m in ("paper", "complete")} for c in SDXL_1024}
        return counts[size * size]

    return at


def _through(points: dict[int, int], p: int):
    """The polynomial through ``points`` (pixel count -> MACs) evaluated at ``p``, exactly (Lagrange)."""
    from fractions import Fraction

    total = Fraction(0)
    for xi, yi in points.items():
        term = Fraction(yi)
        for xj in points:
            if xj != xi:
                term *= Fraction(p - xj, xi - xj)
        total += term
    return total


def test_sdxl_1024_paper_count_from_two_sizes(sdxl_small_counts):
    """The 1024² paper figures of the real SDXL architecture without a 1024² trace (15 CPU minutes).

    Per forward, the paper count is ``a + b·p`` in the pixel count ``p`` (convolutions, linear layers, norms
    and upsampling scale with it; the time embedding and the text keys/values do not): two sizes fix it.
    """
    counts = {size * size: sdxl_small_counts(size) for size in (64, 128)}
    for component, expected in SDXL_1024.items():
        points = {p: c[component]["paper"] for p, c in counts.items()}
        assert _through(points, 1024 * 1024) == expected["paper"], component


@pytest.mark.slow
def test_sdxl_1024_complete_count_from_three_sizes(sdxl_small_counts):
    """The complete count adds the self-attention products, ``c·p²``: three sizes fix it, and the paper
    count's quadratic term is zero."""
    counts = {size * size: sdxl_small_counts(size) for size in (64, 128, 192)}
    for component, expected in SDXL_1024.items():
        for convention, value in expected.items():
            points = {p: c[component][convention] for p, c in counts.items()}
            assert _through(points, 1024 * 1024) == value, (component, convention)


@pytest.mark.parametrize("component", ["unet", "controlnet"])
def test_sdxl_1024_flop_counter_figure(crosscheck, component):
    """FlopCounterMode on the meta-device sdxl preset at 1024²: 2 FLOPs per MAC of the products fvcore's
    complete count holds, which also holds its norm and upsampling estimates (0.07 %)."""
    from hgc_tune.models._presets import build_preset_components

    with torch.device("meta"):
        components = build_preset_components("sdxl")
    meta_pipe = SimpleNamespace(**components, vae_scale_factor=8)
    flops = sum(crosscheck.flop_counter_by_operator(meta_pipe, component, 1024, 1024).values())
    assert flops == SDXL_1024_FLOPS[component]
    estimates = SDXL_1024[component]["complete"] - flops // 2
    assert 0 < estimates < 0.001 * SDXL_1024[component]["complete"]
