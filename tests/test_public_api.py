"""The public API: the exact names of ``hgc_tune`` and of each subpackage, every one of which resolves.

The names are pinned so that a change to the public surface is deliberate. To add or remove a public name,
change the ``__all__`` of the subpackage (and ``_EXPORTS`` in ``hgc_tune/__init__.py`` for a top-level name)
and the set below in the same commit. Everything else (hook classes, constants, helpers) lives in the private
modules ``hgc_tune/<subpackage>/_*.py`` and is imported from there.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import hgc_tune

PUBLIC: dict[str, set[str]] = {
    "hgc_tune": {
        "__version__",
        "Dataset",
        "HgcTuneError",
        "MacTable",
        "Policy",
        "PolicyFile",
        "PolicyHandle",
        "Profile",
        "RunContext",
        "SearchConfig",
        "TaskEvaluator",
        "apply_policy",
        "build_report",
        "count_pipeline_macs",
        "load_pipeline",
        "load_policy",
        "model_fingerprint",
        "open_dataset",
        "paired_loss_bound",
        "policy_handle",
        "policy_macs",
        "profile_pipeline",
        "run_context",
        "save_policy",
        "search_policy",
    },
    "hgc_tune.bench": {"BenchResult", "time_alternating"},
    "hgc_tune.cli": {"main"},
    "hgc_tune.data": {"Dataset", "Sample", "open_dataset", "shapes", "write_shapes_dataset"},
    "hgc_tune.data.shapes": {
        "BACKGROUNDS",
        "COLOR_NAMES",
        "CONDITION_TYPES",
        "GENERATOR_VERSION",
        "NUM_CLASSES",
        "OBJECT_COLORS",
        "SEG_PALETTE",
        "SHAPE_CLASSES",
        "SPLITS",
        "TEXTURE_NAMES",
        "Scene",
        "SceneObject",
        "cached_shapes_dataset",
        "class_map_from_seg",
        "decode_class_map",
        "edges",
        "estimate_depth",
        "render_scene",
        "soft_edges",
        "split_seeds",
        "write_shapes_dataset",
    },
    "hgc_tune.errors": {
        "DatasetError",
        "FidelityError",
        "HgcTuneError",
        "ImageFileError",
        "IncompatibleControlNetError",
        "InputFileError",
        "ModelLoadError",
        "ModelNotFoundError",
        "NotAPipelineError",
        "OutOfMemoryError",
        "PolicyAlreadyAppliedError",
        "PolicyError",
        "PolicyFormatError",
        "PolicyMismatchError",
        "ProfileError",
        "ReportError",
        "ResourceError",
        "TrainingCheckpointError",
        "SearchError",
        "ShapesWeightsMissingError",
        "StepCountMismatchError",
        "UnknownConditionError",
        "UnknownPresetError",
        "UnregisteredModelError",
        "DiskFullError",
        "StorageError",
        "StorageUnreachableError",
        "ProvenanceMismatchWarning",
        "PromptUnguardedWarning",
    },
    "hgc_tune.executor": {
        "CallMacs",
        "CallSummary",
        "ControlNetWindowConfig",
        "GuidanceTruncationConfig",
        "ModuleCounts",
        "PolicyHandle",
        "StepCacheConfig",
        "apply_controlnet_window",
        "apply_guidance_truncation",
        "apply_policy",
        "apply_step_cache",
        "check_policy_fits",
        "policy_handle",
    },
    "hgc_tune.fidelity": {
        "METRICS",
        "PROMPT_METRICS",
        "ClipScorer",
        "load_clip_scorer",
        "ConstrainedEstimate",
        "ConstraintScorer",
        "PromptMetric",
        "prompt_metric_for",
        "FidelityEstimate",
        "FidelityResult",
        "LossBound",
        "Metric",
        "PromptEvaluator",
        "TaskEvaluator",
        "background_adherence",
        "background_score",
        "edge_f1",
        "evaluate_pairs",
        "evaluate_policy",
        "latent_rel_error",
        "load_segmenter",
        "miou",
        "named_background",
        "paired_loss_bound",
        "psnr",
        "read_background",
        "relative_loss",
        "rmse",
        "ssim",
    },
    "hgc_tune.macs": {"ExecutedMacs", "MacTable", "count_executed_macs", "count_pipeline_macs"},
    "hgc_tune.models": {
        "ModuleLayout",
        "RecommendedGuidance",
        "generation_inputs",
        "load_pipeline",
        "model_fingerprint",
        "module_layout",
        "pipeline_for_task",
        "pipeline_guidance",
        "recommended_guidance",
        "register_module_layout",
        "steps_run",
    },
    "hgc_tune.policy": {
        "ControlNetSpec",
        "ControlNetWindow",
        "GuidanceWindow",
        "LoraMismatchWarning",
        "LoraSpec",
        "Policy",
        "PolicyFile",
        "PolicyTarget",
        "Provenance",
        "ReuseWindow",
        "controlnet_window_policy",
        "deepcache_policy",
        "dumps_policy",
        "full_compute_policy",
        "load_policy",
        "loads_policy",
        "peer_policy",
        "pipeline_loras",
        "policy_macs",
        "save_policy",
        "target_for_pipeline",
        "tgate_policy",
    },
    "hgc_tune.profile": {"Profile", "load_profiled_pipeline", "profile_pipeline"},
    "hgc_tune.report": {"ReportResult", "build_report"},
    "hgc_tune.runtime": {
        "RunContext",
        "attach_run_context",
        "compile_regions",
        "release_run_context",
        "run_context",
    },
    "hgc_tune.generation": {
        "GeneratedOutput",
        "GenerationJob",
        "GenerationSettings",
        "batches",
        "generate_output",
        "generate_outputs",
        "iter_outputs",
        "jobs_from_samples",
    },
    "hgc_tune.search": {
        "ParetoData",
        "PolicyObjective",
        "PolicySpace",
        "SearchConfig",
        "SearchResult",
        "SearchSession",
        "load_pareto",
        "load_search_profile",
        "prepare_search",
        "run_search",
        "run_search_worker",
        "search_policy",
        "write_search_outputs",
    },
}

HOW_TO_UPDATE = (
    "the public names of {module} changed; if that is deliberate, update PUBLIC[{module!r}] in "
    "tests/test_public_api.py together with {module}.__all__ (and hgc_tune._EXPORTS for a top-level name)"
)


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_public_names_are_pinned(module_name):
    module = importlib.import_module(module_name)
    names = list(module.__all__)
    assert len(names) == len(set(names)), f"{module_name}.__all__ lists a name twice"
    assert set(names) == PUBLIC[module_name], HOW_TO_UPDATE.format(module=module_name)


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_every_public_name_resolves(module_name):
    module = importlib.import_module(module_name)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert missing == []


def test_every_subpackage_is_pinned():
    from pathlib import Path

    package = Path(hgc_tune.__file__).parent
    subpackages = {f"hgc_tune.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert subpackages <= set(PUBLIC), f"pin the public names of {sorted(subpackages - set(PUBLIC))}"


def test_top_level_names_are_public_in_their_subpackage():
    outside = {
        name: module
        for name, module in hgc_tune._EXPORTS.items()
        if name not in importlib.import_module(module).__all__
    }
    assert outside == {}


def test_importing_the_package_does_not_import_torch():
    code = "import sys, hgc_tune; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
