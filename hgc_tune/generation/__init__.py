"""Generating samples: the one place that calls a pipeline the way the profile did.

Every full-compute reference and every policy output is made here: the profiler's references, the search's
trials and held-out checks, :func:`hgc_tune.fidelity.evaluate_policy` and the report's images. So a policy
that computes everything reproduces the profile's references bit for bit, whoever generates it.

- :class:`GenerationSettings`: how every sample of a run is generated (steps, guidance, size, ControlNet
  scale, img2img/inpainting strength); :class:`GenerationJob`: one sample (prompt, seed, condition, init
  image, mask).
- :func:`jobs_from_samples`: jobs from dataset samples (the init image and mask by the profiler's rule).
- :func:`generate_outputs`: one pipeline call for a batch of jobs (an optional per-step callback), each
  sample's uint8 image and final latent as a :class:`GeneratedOutput`; :func:`generate_output`: one job alone;
  :func:`iter_outputs`: a run's jobs in batches of ``settings.samples_per_call`` (:func:`batches`) with a
  policy applied for the run. A sample's output depends on its seed and its batch, so references and the
  outputs compared with them are generated with the same ``samples_per_call``.
"""

from __future__ import annotations

from hgc_tune.generation._generate import (
    GeneratedOutput,
    batches,
    generate_output,
    generate_outputs,
    iter_outputs,
)
from hgc_tune.generation._inputs import GenerationJob, GenerationSettings, jobs_from_samples

__all__ = [
    "GeneratedOutput",
    "GenerationJob",
    "GenerationSettings",
    "batches",
    "generate_output",
    "generate_outputs",
    "iter_outputs",
    "jobs_from_samples",
]
