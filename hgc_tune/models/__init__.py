"""Model presets (the shipped ``shapes`` weights included), loading of local checkpoints, the pipelines of
each task (text2img, img2img, inpainting), each model's recommended guidance scale, module layouts and
fingerprints."""

from __future__ import annotations

from hgc_tune.models._blocks import ModuleLayout, module_layout, register_module_layout
from hgc_tune.models._fingerprint import model_fingerprint
from hgc_tune.models._guidance import RecommendedGuidance, pipeline_guidance, recommended_guidance
from hgc_tune.models._loading import load_pipeline
from hgc_tune.models._tasks import generation_inputs, pipeline_for_task, steps_run

__all__ = [
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
]
