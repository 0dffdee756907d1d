"""What a sample is generated from: the run's settings, the sample's job, and its condition, init image and
mask as the pipeline receives them.

A profile stores each sample's condition (and init image and mask) as arrays at the generation size;
:func:`job_from_arrays` turns such arrays into a job, and the profiler generates its references from exactly
those jobs, so :func:`profile_jobs` (the same jobs rebuilt from a saved profile) reproduces them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from hgc_tune.errors import DatasetError, HgcTuneError
from hgc_tune.models._tasks import default_mask, native_size, sample_task_images

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

__all__ = [
    "GenerationJob",
    "GenerationSettings",
    "ProfiledSamples",
    "condition_array",
    "condition_input",
    "generation_size",
    "init_array",
    "job_from_arrays",
    "jobs_from_samples",
    "mask_array",
    "profile_jobs",
    "profile_settings",
    "sample_job",
]


@dataclass(frozen=True)
class GenerationJob:
    """One sample to generate: prompt, negative prompt, seed and condition image (PIL; a list of them for
    several ControlNets); for img2img and inpainting pipelines also the init image and the mask (PIL;
    ``None``: the default mask)."""

    prompt: str
    negative_prompt: str | None
    seed: int
    condition: Any
    init_image: Any = None
    mask_image: Any = None


@dataclass(frozen=True)
class GenerationSettings:
    """How every sample of a run is generated (a search takes the profile's).

    ``num_steps`` is the ``num_inference_steps`` of every call; with ``strength`` (img2img and inpainting
    pipelines only) a call runs fewer steps when ``strength < 1``. ``controlnet_scale`` other than 1 is passed
    as ``controlnet_conditioning_scale``. ``samples_per_call`` is how many consecutive jobs one pipeline call
    generates (the last call of a run takes the rest): a sample's output depends on its seed and on the
    batch it was generated in, so references and the outputs compared with them must be batched alike.
    """

    num_steps: int
    guidance_scale: float
    height: int
    width: int
    controlnet_scale: float = 1.0
    strength: float | None = None
    samples_per_call: int = 1

    def __post_init__(self) -> None:
        size = self.samples_per_call
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise HgcTuneError(
                f"`samples_per_call` must be a positive integer, but got samples_per_call={size!r}."
            )


class ProfiledSamples(Protocol):
    """What :func:`profile_jobs` and :func:`profile_settings` read (a :class:`hgc_tune.profile.Profile`)."""

    @property
    def prompts(self) -> list[str]: ...
    @property
    def negative_prompts(self) -> list[str | None]: ...
    @property
    def seeds(self) -> list[int]: ...
    @property
    def condition_images(self) -> np.ndarray: ...
    @property
    def init_images(self) -> np.ndarray | None: ...
    @property
    def masks(self) -> np.ndarray | None: ...
    @property
    def resolution(self) -> tuple[int, int]: ...
    @property
    def num_inference_steps(self) -> int: ...
    @property
    def guidance_scale(self) -> float: ...
    @property
    def task(self) -> str: ...
    @property
    def strength(self) -> float | None: ...
    @property
    def samples_per_call(self) -> int: ...


def generation_size(
    pipe: ControlNetPipeline, height: int | None = None, width: int | None = None
) -> tuple[int, int]:
    """``(height, width)`` of a run: ``height`` defaults to the pipeline's native size, ``width`` to
    ``height``."""
    height = native_size(pipe) if height is None else height
    return height, height if width is None else width


def condition_array(image: Any, height: int, width: int) -> np.ndarray:
    """A condition image at the generation size, uint8 ``[H, W, 3]`` (``[k, H, W, 3]`` for a list of k, one
    per ControlNet)."""
    if isinstance(image, list | tuple):
        return np.stack([condition_array(one, height, width) for one in image])
    if image.size != (width, height):
        # Nearest keeps label colours intact (a resampled segmentation map would blend classes).
        image = image.resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def init_array(image: Any, height: int, width: int) -> np.ndarray:
    """An init image at the generation size (bicubic resize), uint8 ``[H, W, 3]``."""
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def mask_array(mask: Any, height: int, width: int) -> np.ndarray:
    """An inpainting mask at the generation size (nearest resize; ``None``: the default mask), uint8
    ``[H, W]``, 255 repainted."""
    mask = default_mask(width, height) if mask is None else mask.convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(mask, dtype=np.uint8)


def condition_input(array: np.ndarray) -> Any:
    """What the pipeline takes for a condition array: a PIL image, or a list of them for several ControlNets
    (``[k, H, W, 3]``)."""
    if array.ndim == 4:
        return [Image.fromarray(one) for one in array]
    return Image.fromarray(array)


def job_from_arrays(
    prompt: str,
    negative_prompt: str | None,
    seed: int,
    condition: np.ndarray,
    init: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> GenerationJob:
    """A job from inputs stored as arrays at the generation size (as a profile holds them)."""
    return GenerationJob(
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=int(seed),
        condition=condition_input(condition),
        init_image=None if init is None else Image.fromarray(init),
        mask_image=None if mask is None else Image.fromarray(mask),
    )


def sample_job(
    sample: Any,
    index: int,
    *,
    seed: int = 0,
    task: str = "text2img",
    error: type[HgcTuneError] = DatasetError,
) -> GenerationJob:
    """The job of dataset sample ``index`` (``.prompt``, ``.condition_image()``, optional ``.negative_prompt``
    and ``.seed``; without a seed it gets ``seed + index``), its condition images as RGB.

    For ``task`` ``img2img`` and ``inpaint`` the job also gets the sample's init image and mask by
    :func:`hgc_tune.models._tasks.sample_task_images`: ``init_image()``, else ``ground_truth_image()``, else
    the condition image; the mask is ``mask_image()`` or, if the sample has none, ``None`` (the default mask).

    Raises:
        error: A sample without a string prompt or a PIL condition image (or a list of them), or a bad init
            image or mask.
    """
    for field in ("prompt", "condition_image"):
        if not hasattr(sample, field):
            raise error(
                f"sample {index} must have `.prompt` and `.condition_image()`, but it has no `{field}` "
                f"({type(sample).__name__})."
            )
    prompt = sample.prompt
    if not isinstance(prompt, str):
        raise error(f"sample {index}: `prompt` must be a string, but got prompt={prompt!r}.")
    own_seed = getattr(sample, "seed", None)
    image = sample.condition_image()
    # Several ControlNets (MultiControlNetModel): one condition image each, in their order.
    images = image if isinstance(image, list | tuple) else [image]
    for one in images:
        if not hasattr(one, "convert") or not hasattr(one, "size"):
            raise error(
                f"sample {index}: `condition_image()` must return a PIL image (or a list of them, one per "
                f"ControlNet), but returned {type(one).__name__}."
            )
    converted = [one.convert("RGB") for one in images]
    condition = converted if isinstance(image, list | tuple) else converted[0]
    init, mask = sample_task_images(sample, condition, task, where=f"sample {index}: ", error=error)
    return GenerationJob(
        prompt=prompt,
        negative_prompt=getattr(sample, "negative_prompt", None),
        seed=int(own_seed) if own_seed is not None else seed + index,
        condition=condition,
        init_image=init,
        mask_image=mask,
    )


def jobs_from_samples(
    samples: Iterable[Any],
    *,
    seed: int = 0,
    task: str = "text2img",
    error: type[HgcTuneError] = DatasetError,
) -> list[GenerationJob]:
    """Generation jobs from dataset samples (:func:`sample_job` of each, in order).

    Example:
        >>> from hgc_tune.data import open_dataset
        >>> jobs = jobs_from_samples(open_dataset("shapes", condition_type="seg", split="test", limit=2))
        >>> [job.condition.mode for job in jobs]
        ['RGB', 'RGB']
    """
    return [sample_job(s, i, seed=seed, task=task, error=error) for i, s in enumerate(samples)]


def profile_jobs(profile: ProfiledSamples, indices: Iterable[int]) -> list[GenerationJob]:
    """The jobs of a profile's samples ``indices``: the stored prompts, seeds and the condition images, init
    images and masks at the generation size, as the profiler generated its references from them."""
    conditions, inits, masks = profile.condition_images, profile.init_images, profile.masks
    prompts, negatives, seeds = profile.prompts, profile.negative_prompts, profile.seeds
    return [
        job_from_arrays(
            prompts[i],
            negatives[i],
            seeds[i],
            conditions[i],
            None if inits is None else inits[i],
            None if masks is None else masks[i],
        )
        for i in indices
    ]


def profile_settings(profile: ProfiledSamples) -> GenerationSettings:
    """The settings the profile's samples were generated with (its batching included)."""
    height, width = profile.resolution
    # img2img / inpainting: the profile's num_steps counts the steps run; the calls take the
    # num_inference_steps and strength they were profiled with.
    return GenerationSettings(
        profile.num_inference_steps,
        profile.guidance_scale,
        height,
        width,
        strength=profile.strength if profile.task != "text2img" else None,
        samples_per_call=profile.samples_per_call,
    )
