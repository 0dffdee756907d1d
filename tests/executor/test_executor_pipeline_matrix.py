"""The pipeline matrix: every ControlNet pipeline class hgc-tune supports, with one ControlNet and with a
``MultiControlNetModel`` of two, through the executor, MAC accounting, the profiler and the policy file.

Pipelines: tiny (SD1.5-shaped) text2img, img2img and inpainting, tiny-sdxl text2img, img2img and
inpainting; img2img and inpainting at strength 0.7 (10 scheduled steps run 7). Per cell:

* an all-compute policy is bit-identical to plain generation, and removing a (caching) policy restores it;
* analytic policy MACs (:func:`hgc_tune.policy.policy_macs`) equal the MACs counted while it runs, for
  DeepCache, ControlNet-window and T-GATE (truncated CFG) peers and a policy with a ControlNet window per
  net;
* bad inputs (a policy for the scheduled rather than the run steps, for the other number of ControlNets,
  for another pipeline class) are refused with a message saying what differs, and nothing is applied;
* a one-sample profile records the steps run, and a policy survives ``save_policy``/``load_policy`` and
  generates the same images as the policy it was saved from.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hgc_tune.errors import PolicyMismatchError, StepCountMismatchError
from hgc_tune.executor import apply_policy, policy_handle
from hgc_tune.macs import count_executed_macs, count_pipeline_macs
from hgc_tune.models import load_pipeline
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.models._tasks import generation_inputs, steps_run
from hgc_tune.policy import (
    ControlNetWindow,
    Policy,
    full_compute_policy,
    load_policy,
    peer_policy,
    policy_macs,
    save_policy,
    target_for_pipeline,
)

# (preset, task) of each pipeline; the diffusers class is checked in test_the_cell_is_the_expected_class.
PIPELINES = {
    "sd-text2img": ("tiny", "text2img"),
    "sd-img2img": ("tiny", "img2img"),
    "sd-inpaint": ("tiny", "inpaint"),
    "sdxl-text2img": ("tiny-sdxl", "text2img"),
    "sdxl-img2img": ("tiny-sdxl", "img2img"),
    "sdxl-inpaint": ("tiny-sdxl", "inpaint"),
}
CLASSES = {
    "sd-text2img": "StableDiffusionControlNetPipeline",
    "sd-img2img": "StableDiffusionControlNetImg2ImgPipeline",
    "sd-inpaint": "StableDiffusionControlNetInpaintPipeline",
    "sdxl-text2img": "StableDiffusionXLControlNetPipeline",
    "sdxl-img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
    "sdxl-inpaint": "StableDiffusionXLControlNetInpaintPipeline",
}
CONDITIONS = {1: "seg", 2: "seg,depth"}
CELLS = [pytest.param((name, nets), id=f"{name}-{nets}cn") for name in PIPELINES for nets in CONDITIONS]
TEXT2IMG_STEPS = 6
INFERENCE_STEPS, STRENGTH = 10, 0.7  # img2img and inpainting: 7 steps run

_PIPES: dict[tuple[str, int], object] = {}
_TABLES: dict[tuple[str, int], object] = {}


def _pipe(name: str, nets: int):
    """One pipeline per cell per session (its own modules: a policy belongs to one pipeline)."""
    if (name, nets) not in _PIPES:
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        model, task = PIPELINES[name]
        _PIPES[name, nets] = load_pipeline(model, task=task, condition=CONDITIONS[nets] if nets > 1 else None)
    return _PIPES[name, nets]


def _table(name: str, nets: int):
    """The MAC table of a cell's pipeline at 64 x 64, once per session."""
    if (name, nets) not in _TABLES:
        _TABLES[name, nets] = count_pipeline_macs(
            _pipe(name, nets), height=64, width=64, model_name=PIPELINES[name][0]
        )
    return _TABLES[name, nets]


class Cell:
    """One pipeline of the matrix with its inputs."""

    def __init__(self, name: str, nets: int, condition_image, init_image) -> None:
        self.name, self.nets = name, nets
        self.model, self.task = PIPELINES[name]
        self.pipe = _pipe(name, nets)
        self.steps = TEXT2IMG_STEPS if self.task == "text2img" else INFERENCE_STEPS
        self.strength = None if self.task == "text2img" else STRENGTH
        self.run_steps = steps_run(self.steps, self.strength)
        flipped = condition_image.transpose(0)  # a second, different condition for the second net
        self.condition = condition_image if nets == 1 else [condition_image, flipped]
        self.init_image = None if self.task == "text2img" else init_image

    def target(self, num_steps: int | None = None):
        return target_for_pipeline(
            self.pipe,
            num_steps=self.run_steps if num_steps is None else num_steps,
            condition_type=CONDITIONS[self.nets],
            model=self.model,
        )

    def generate(self, output_type: str = "np", guidance_scale: float = 7.5, steps: int | None = None):
        return self.pipe(
            "a red square",
            **generation_inputs(
                self.pipe, self.condition, init_image=self.init_image, strength=self.strength
            ),
            num_inference_steps=self.steps if steps is None else steps,
            guidance_scale=guidance_scale,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(0),
            output_type=output_type,
        ).images

    def window_policy(self) -> Policy:
        """A ControlNet window per net (one window for a single ControlNet), plus a cached U-Net block."""
        target = self.target()
        if self.nets == 1:
            windows = {"controlnet": ControlNetWindow((0, 1, 4), "reuse")}
        else:
            windows = {
                "controlnets": {
                    "controlnet.nets.0": ControlNetWindow((0, 1, 4), "reuse"),
                    "controlnet.nets.1": ControlNetWindow((1, 2), "drop"),
                }
            }
        return Policy(target, blocks={"unet.mid_block": (0, 3)}, name="windows", **windows)

    def policies(self) -> list[Policy]:
        target, keys = self.target(), cacheable_module_keys(self.pipe)
        return [
            full_compute_policy(target),
            peer_policy("deepcache-n2-b0", target, keys),
            peer_policy("cnwin-k2-drop", target, keys),
            peer_policy("tgate-g2-cfg", target, keys),  # truncated CFG: the denoisers' batch halves
            self.window_policy(),
        ]


@pytest.fixture(params=CELLS)
def cell(request, condition_image, init_image):
    cell = Cell(*request.param, condition_image, init_image)
    yield cell
    handle = policy_handle(cell.pipe)
    if handle is not None:
        handle.remove()


def hooked_modules(pipe) -> list[str]:
    return [
        f"{component}.{name}"
        for component in ("unet", "controlnet")
        for name, module in getattr(pipe, component).named_modules()
        if getattr(getattr(module, "_diffusers_hook", None), "hooks", None)
        or getattr(module, "_forward_pre_hooks", None)
    ]


def test_the_cell_is_the_expected_class(cell):
    assert type(cell.pipe).__name__ == CLASSES[cell.name]
    assert type(cell.pipe.controlnet).__name__ == (
        "ControlNetModel" if cell.nets == 1 else "MultiControlNetModel"
    )
    assert cell.run_steps == (6 if cell.task == "text2img" else 7)


def test_all_compute_is_bit_identical_and_removal_restores(cell):
    plain = cell.generate()
    with apply_policy(cell.pipe, full_compute_policy(cell.target())):
        assert np.array_equal(cell.generate(), plain)
    handle = apply_policy(
        cell.pipe, peer_policy("deepcache-n2-b0", cell.target(), cacheable_module_keys(cell.pipe))
    )
    cached = cell.generate()
    # the deep blocks ran at steps 0, 2, 4 (and 6) of the steps run only
    assert {hook.state.computed for hook in handle.step_hooks.values()} == {(cell.run_steps + 1) // 2}
    assert not np.array_equal(cached, plain)
    handle.remove()
    assert hooked_modules(cell.pipe) == []
    assert np.array_equal(cell.generate(), plain)


def test_the_mac_table_counts_the_denoisers_of_every_task_and_each_net_alike(cell):
    """The img2img and inpainting pipelines run the text2img pipeline's denoisers (SDXL's with their
    ``added_cond_kwargs``); each of two ControlNets costs what one alone does."""
    table = _table(cell.name, cell.nets)
    family = cell.name.split("-")[0]
    text2img, single = _table(f"{family}-text2img", cell.nets), _table(cell.name, 1)
    for convention in ("paper", "complete"):
        for component in ("unet", "controlnet"):
            assert table.macs(component, convention) == text2img.macs(component, convention) > 0
        assert table.macs("controlnet", convention) == cell.nets * single.macs("controlnet", convention)
        for i in range(cell.nets if cell.nets > 1 else 0):
            assert table.macs(f"controlnet.nets.{i}", convention) == single.macs("controlnet", convention)
    if family == "sdxl":  # the text_time embeddings ran: the added_cond_kwargs reached every denoiser
        nets = [f"controlnet.nets.{i}" for i in range(cell.nets)] if cell.nets > 1 else ["controlnet"]
        for key in ["unet", *nets]:
            assert table.macs(f"{key}.add_embedding", "paper") > 0, key
    assert table.unsupported_ops == {}


def test_analytic_policy_macs_equal_counted_macs(cell):
    table = _table(cell.name, cell.nets)
    reductions = set()
    for policy in cell.policies():
        with (
            apply_policy(cell.pipe, policy),
            count_executed_macs(cell.pipe, table, "paper") as paper,
            count_executed_macs(cell.pipe, table, "complete") as complete,
        ):
            cell.generate(output_type="latent")
        for convention, counted in (("paper", paper), ("complete", complete)):
            analytic = policy_macs(policy, table, cfg=True, convention=convention)
            assert counted.total == pytest.approx(analytic["policy"], rel=0.005), (policy.name, convention)
        reductions.add(round(analytic["reduction"], 6))
    assert len(reductions) == 5


def test_a_policy_for_the_scheduled_steps_is_refused_before_any_compute(cell):
    if cell.task == "text2img":
        policy = Policy(cell.target(num_steps=cell.steps + 2), blocks={"unet.mid_block": (0, 3)}, name="p")
        expected = (
            f"policy 'p' was made for {cell.steps + 2} denoising steps, but this call runs {cell.steps}"
        )
    else:
        policy = Policy(cell.target(num_steps=cell.steps), blocks={"unet.mid_block": (0, 3)}, name="p")
        expected = (
            f"policy 'p' was made for {cell.steps} denoising steps, but this call runs {cell.run_steps} "
            f"(num_inference_steps={cell.steps}, strength={cell.strength}"
        )
    ran: list[str] = []
    controlnets = getattr(cell.pipe.controlnet, "nets", [cell.pipe.controlnet])
    counters = [
        module.register_forward_pre_hook(lambda m, a, name=name: ran.append(name))
        for name, module in [("unet", cell.pipe.unet.conv_in)]
        + [(f"controlnet{i}", net.conv_in) for i, net in enumerate(controlnets)]
    ]
    handle = apply_policy(cell.pipe, policy)
    try:
        with pytest.raises(StepCountMismatchError) as raised:
            cell.generate(output_type="latent")
        assert expected in str(raised.value)
        assert ran == []  # refused before any denoiser computed
    finally:
        handle.remove()
        for counter in counters:
            counter.remove()
    assert hooked_modules(cell.pipe) == []


def test_a_policy_for_the_other_number_of_controlnets_is_refused_with_nothing_applied(cell):
    other = Cell(
        cell.name, 3 - cell.nets, cell.condition if cell.nets == 1 else cell.condition[0], cell.init_image
    )
    policy = full_compute_policy(other.target())
    with pytest.raises(PolicyMismatchError) as raised:
        apply_policy(cell.pipe, policy)
    message = str(raised.value)
    assert "controlnet" in message.lower() and "MultiControlNetModel" in message, message
    assert hooked_modules(cell.pipe) == []
    assert policy_handle(cell.pipe) is None and not hasattr(cell.pipe, "_hgc_run_context")


def test_a_policy_for_another_pipeline_class_is_refused_with_nothing_applied(cell):
    other = "StableDiffusionControlNetPipeline" if cell.name != "sd-text2img" else CLASSES["sd-img2img"]
    policy = full_compute_policy(dataclasses.replace(cell.target(), pipeline_class=other))
    with pytest.raises(PolicyMismatchError) as raised:
        apply_policy(cell.pipe, policy)
    assert f"pipeline_class: policy has {other!r}, pipeline has {CLASSES[cell.name]!r}" in str(raised.value)
    assert hooked_modules(cell.pipe) == []
    assert policy_handle(cell.pipe) is None and not hasattr(cell.pipe, "_hgc_run_context")


_PROFILES: dict[tuple[str, int], object] = {}


def _profile(cell: Cell):
    """A one-sample profile of the cell (shapes, 4 steps; 5 at strength 0.7 run 3), once per session."""
    from hgc_tune.data import open_dataset
    from hgc_tune.profile import profile_pipeline

    if (cell.name, cell.nets) not in _PROFILES:
        samples = open_dataset("shapes", condition_type=CONDITIONS[cell.nets], split="calibration", limit=1)
        _PROFILES[cell.name, cell.nets] = profile_pipeline(
            cell.pipe,
            samples,
            num_steps=4 if cell.task == "text2img" else 5,
            height=64,
            width=64,
            progress=False,
            model_name=cell.model,
            mac_table=_table(cell.name, cell.nets),
            strength=cell.strength,
        )
    return _PROFILES[cell.name, cell.nets]


def test_profile_records_the_steps_run_and_a_policy_round_trips(cell, tmp_path):
    profile = _profile(cell)
    assert profile.num_steps == (4 if cell.task == "text2img" else 3)  # 5 steps at strength 0.7 run 3
    assert profile.condition_type == CONDITIONS[cell.nets]
    for i in range(cell.nets if cell.nets > 1 else 0):
        assert f"controlnet.nets.{i}" in profile.block_keys
    assert profile.stat("mean_rel_l1", "unet.mid_block").shape == (profile.num_steps,)

    policy = cell.window_policy()
    path = save_policy(policy, tmp_path / "policy.json")
    loaded = load_policy(path)
    assert loaded.policies == (policy,)
    with apply_policy(cell.pipe, policy):
        direct = cell.generate()
    with apply_policy(cell.pipe, loaded, condition_type=CONDITIONS[cell.nets]):
        assert np.array_equal(cell.generate(), direct)
    assert hooked_modules(cell.pipe) == []


def test_search_and_report(cell, tmp_path):
    """A two-trial search on the cell's profile targets the cell's pipeline and the steps run; the report of
    its policy regenerates the references at all-compute and builds its page."""
    import json

    from hgc_tune.report import build_report
    from hgc_tune.report._build import SUMMARY_FILE
    from hgc_tune.report._samples import generate_policy_images
    from hgc_tune.search import SearchConfig, search_policy

    profile = _profile(cell)
    config = SearchConfig(budget=0.5, metric="ssim", n_trials=2, seed=1, confidence=0, calibration_samples=1)
    result = search_policy(profile, cell.pipe, config, cache_dir=tmp_path / "search")  # a folder not made yet
    assert result.ok, result.message
    policy = result.chosen.policy()
    assert policy.target.pipeline_class == CLASSES[cell.name]
    assert policy.num_steps == profile.num_steps
    assert policy.target.condition_type == CONDITIONS[cell.nets]
    assert len(policy.target.controlnets) == (cell.nets if cell.nets > 1 else 0)

    all_compute = full_compute_policy(target_for_pipeline(cell.pipe, num_steps=profile.num_steps))
    assert np.array_equal(
        generate_policy_images(cell.pipe, profile, all_compute, [0]), profile.reference_images
    )
    build_report(profile, tmp_path / "report", policy=policy, samples=1, pipe=cell.pipe)
    summary = json.loads((tmp_path / "report" / SUMMARY_FILE).read_text())
    assert summary["model"]["steps"] == profile.num_steps
    assert hooked_modules(cell.pipe) == []


def test_task_inputs_and_condition_types_that_do_not_fit_are_refused(cell):
    from hgc_tune.errors import ModelLoadError

    if cell.task == "text2img":
        with pytest.raises(ModelLoadError, match=r"takes no init_image, strength"):
            generation_inputs(cell.pipe, cell.condition, init_image=cell.condition, strength=0.7)
    else:
        with pytest.raises(ModelLoadError, match=rf"a {cell.task} pipeline \(.*\) needs an init image"):
            generation_inputs(cell.pipe, cell.condition)
    # a policy for the nets' condition types in another order (or another type) names both
    other = "depth,seg" if cell.nets == 2 else "depth"
    with pytest.raises(PolicyMismatchError) as raised:
        apply_policy(cell.pipe, full_compute_policy(cell.target()), condition_type=other)
    if cell.nets == 2:  # each net named
        assert "controlnets[0].condition_type: policy has 'seg', pipeline has 'depth'" in str(raised.value)
    else:
        assert "'seg'" in str(raised.value) and "'depth'" in str(raised.value), str(raised.value)
    assert hooked_modules(cell.pipe) == []
    assert policy_handle(cell.pipe) is None and not hasattr(cell.pipe, "_hgc_run_context")
