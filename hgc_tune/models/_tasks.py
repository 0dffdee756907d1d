"""Generation tasks: text2img, img2img and inpainting with one ControlNet or several (a
``MultiControlNetModel``: the condition is then a list of images, one per net), the pipeline class of each
in the SD1.5 and SDXL families, and the arguments every caller (profiler, search, report, CLI) passes to it.

A task's pipeline is built from the same components as any loaded pipeline (as diffusers' ``from_pipe``
does), so every preset and checkpoint serves all three. img2img and inpainting take an init image
(inpainting also a mask: white is repainted, black kept) and a ``strength``: a call of ``n`` steps at
strength ``s`` skips the first ``n - min(int(n * s), n)`` timesteps and runs the rest (20 steps at strength
0.7 run 14), and only the steps run count, for the run context, the profile and a policy. Where a dataset
has no init image or mask, the documented defaults are the sample's ground-truth image (else its condition
image) and :func:`default_mask`.
"""

from __future__ import annotations

import inspect
import numbers
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from hgc_tune.errors import ModelLoadError

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

__all__ = [
    "TASKS",
    "PIPELINE_FAMILIES",
    "task_of_class",
    "DEFAULT_STRENGTH",
    "check_strength",
    "default_mask",
    "generation_inputs",
    "inference_steps_for",
    "native_size",
    "pipeline_for_task",
    "pipeline_task",
    "sample_task_images",
    "steps_run",
    "task_and_strength",
]

TASKS: tuple[str, ...] = ("text2img", "img2img", "inpaint")
# The diffusers pipeline class of each task, per pipeline family (SD1.5-shaped, SDXL).
PIPELINE_FAMILIES: dict[str, dict[str, str]] = {
    "sd": {
        "text2img": "StableDiffusionControlNetPipeline",
        "img2img": "StableDiffusionControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusionControlNetInpaintPipeline",
    },
    "sdxl": {
        "text2img": "StableDiffusionXLControlNetPipeline",
        "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusionXLControlNetInpaintPipeline",
    },
}


def task_of_class(class_name: str) -> str | None:
    """The task of a pipeline class name (any family), or ``None`` for a class of none of them."""
    for classes in PIPELINE_FAMILIES.values():
        for task, name in classes.items():
            if name == class_name:
                return task
    return None


def _family(pipe: ControlNetPipeline) -> tuple[str, str]:
    """``(family, task)`` of ``pipe``, from its class (a subclass of one of them counts as that one)."""
    # Here, not at the top: `import hgc_tune.policy` imports this package and must not import torch.
    import diffusers

    for family, classes in PIPELINE_FAMILIES.items():
        for task, name in reversed(classes.items()):
            if isinstance(pipe, getattr(diffusers, name)):
                return family, task
    known = sorted(name for classes in PIPELINE_FAMILIES.values() for name in classes.values())
    raise ModelLoadError(f"`pipe` must be one of {known}, but got a {type(pipe).__name__}.")


# diffusers' own defaults of the two pipelines' `strength`.
DEFAULT_STRENGTH: dict[str, float] = {"img2img": 0.8, "inpaint": 1.0}


def check_strength(
    strength: Any,
    *,
    error: type[Exception] = ModelLoadError,
    flag: str = "strength",
    given: str | None = None,
) -> float:
    """``strength`` as a float, if it is a number in (0, 1] (the rule of img2img and inpainting calls).

    Args:
        strength: The value to check.
        error: The exception class to raise.
        flag: The name the message gives the value (``--strength`` for a command-line flag).
        given: How the message shows the value (default: its ``repr``; a flag's text as typed).

    Raises:
        error: ``strength`` is not a number in (0, 1] (a bool is not a number here).
    """
    valid = isinstance(strength, numbers.Real) and not isinstance(strength, bool) and 0 < float(strength) <= 1
    if not valid:  # NaN fails the comparison
        shown = repr(strength) if given is None else given
        raise error(f"`{flag}` must be in (0, 1], but got {flag}={shown}.")
    return float(strength)


def task_and_strength(
    pipe: ControlNetPipeline, strength: float | None, *, error: type[Exception] = ModelLoadError
) -> tuple[str, float | None]:
    """The task of ``pipe`` and the strength its calls take: ``None`` for text2img, else ``strength`` checked
    (default: diffusers' default of the task). A pipeline of none of the task classes is called the text2img
    way.

    Raises:
        error: A strength given for a text2img pipeline, or outside (0, 1].
    """
    try:
        task = pipeline_task(pipe)
    except ModelLoadError:
        task = "text2img"
    if task == "text2img":
        if strength is not None:
            raise error(
                f"`strength` is for img2img and inpainting pipelines, but got strength={strength!r} for a "
                f"{type(pipe).__name__}; load the pipeline with task='img2img' or task='inpaint'."
            )
        return task, None
    return task, check_strength(DEFAULT_STRENGTH[task] if strength is None else strength, error=error)


def native_size(pipe: ControlNetPipeline) -> int:
    """The pipeline's native image size in pixels: the U-Net's sample size times the VAE scale factor."""
    return int(pipe.unet.config["sample_size"]) * int(pipe.vae_scale_factor)


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ModelLoadError(f"`task` must be one of {list(TASKS)}, but got task={task!r}.")
    return task


def pipeline_task(pipe: ControlNetPipeline) -> str:
    """The task of ``pipe`` (``text2img``, ``img2img`` or ``inpaint``), from its class.

    Raises:
        ModelLoadError: ``pipe`` is none of the three pipeline classes (nor a subclass of one).
    """
    return _family(pipe)[1]


def pipeline_for_task(pipe: ControlNetPipeline, task: str) -> ControlNetPipeline:
    """A pipeline of ``task``'s class over the same components as ``pipe`` (as diffusers' ``from_pipe``, but
    without casting them): the same U-Net, ControlNet, VAE, text encoder and scheduler objects, no copy;
    ``pipe`` itself if it already is of that class.

    Build it before applying a policy: a policy belongs to the pipeline it was applied to, and another
    pipeline sharing its U-Net and ControlNet is refused when it calls them.

    Example:
        >>> from hgc_tune.models import load_pipeline
        >>> type(pipeline_for_task(load_pipeline("tiny"), "img2img")).__name__
        'StableDiffusionControlNetImg2ImgPipeline'
    """
    import diffusers  # not at the top: see _family

    cls = getattr(diffusers, PIPELINE_FAMILIES[_family(pipe)[0]][_check_task(task)])
    if type(pipe) is cls:
        return pipe
    # diffusers' `from_pipe` would cast every component to its `torch_dtype` (float32 by default); the
    # components are taken as they are instead.
    accepted = inspect.signature(cls.__init__).parameters
    components = {name: value for name, value in pipe.components.items() if name in accepted}
    if "requires_safety_checker" in accepted:
        components["requires_safety_checker"] = bool(pipe.config.get("requires_safety_checker", False))
    if "add_watermarker" in accepted:  # SDXL: the invisible watermark would change the images
        components["add_watermarker"] = False
    new = cls(**components)
    new.set_progress_bar_config(disable=True)
    return new


def steps_run(num_inference_steps: int, strength: float | None = None) -> int:
    """The denoising steps a call runs: ``num_inference_steps`` less those ``strength < 1`` skips (diffusers'
    ``get_timesteps``, for first-order schedulers).

    Example:
        >>> steps_run(20, 0.7)
        14
    """
    if strength is None:
        return int(num_inference_steps)
    return min(int(num_inference_steps * strength), int(num_inference_steps))


def inference_steps_for(steps: int, strength: float, limit: int = 1000) -> int | None:
    """The smallest ``num_inference_steps`` that runs ``steps`` steps at ``strength``, or ``None`` if none up
    to ``limit`` does.

    Example:
        >>> inference_steps_for(14, 0.7)
        20
    """
    if not 0 < strength <= 1:
        return None
    for n in range(max(1, steps), limit + 1):
        run = steps_run(n, strength)
        if run == steps:
            return n
        if run > steps:
            return None
    return None


def sample_task_images(
    sample: Any, condition: Any, task: str, *, where: str = "", error: type[Exception] = ModelLoadError
) -> tuple[Any, Any]:
    """The init image and mask of a dataset ``sample`` for an img2img or inpainting call (PIL or ``None``;
    ``(None, None)`` for text2img). The rule every caller (profiler, search) follows:

    The init image is the sample's ``init_image()`` if it has one, else its ``ground_truth_image()``, else
    ``condition`` (its condition image); the mask is the sample's ``mask_image()`` if it has one, else
    ``None`` (the caller's :func:`default_mask`).

    Raises:
        error: The init image or the mask is not a PIL image (``where`` prefixes the message, e.g.
            ``"sample 3: "``).
    """
    if task == "text2img":
        return None, None
    init = None
    for name in ("init_image", "ground_truth_image"):
        method = getattr(sample, name, None)
        if callable(method):
            init = method()
            if init is not None:
                break
    if init is None:
        init = condition
    if not hasattr(init, "convert"):
        raise error(f"{where}the init image must be a PIL image, but is {type(init).__name__}.")
    method = getattr(sample, "mask_image", None)
    mask = method() if task == "inpaint" and callable(method) else None
    if mask is not None and not hasattr(mask, "convert"):
        raise error(f"{where}`mask_image()` must return a PIL image, but returned {mask!r}.")
    return init.convert("RGB"), None if mask is None else mask.convert("L")


def default_mask(width: int, height: int) -> Image.Image:
    """The default inpainting mask: a white (repainted) rectangle over the middle half of the image in both
    directions, black (kept) around it; a PIL ``L`` image."""
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle(
        (width // 4, height // 4, width - width // 4 - 1, height - height // 4 - 1), fill=255
    )
    return mask


def generation_inputs(
    pipe: ControlNetPipeline,
    condition: Any,
    *,
    init_image: Any = None,
    mask_image: Any = None,
    strength: float | None = None,
) -> dict[str, Any]:
    """The image arguments of one call of ``pipe``: for text2img ``image=condition``; for img2img the init
    image as ``image``, the condition as ``control_image`` and ``strength``; for inpainting also
    ``mask_image``.

    Args:
        pipe: A ControlNet pipeline of one of :data:`TASKS`.
        condition: The condition image.
        init_image: The init image (img2img, inpainting; required there).
        mask_image: The inpainting mask (default: :func:`default_mask` at the init image's size).
        strength: Denoising strength in (0, 1] (default: diffusers' default of the task).

    Raises:
        ModelLoadError: An init image missing for img2img or inpainting, or given for text2img; a strength
            outside (0, 1].
    """
    task = pipeline_task(pipe)
    if task == "text2img":
        given = (("init_image", init_image), ("mask_image", mask_image))
        extra = [name for name, value in given if value is not None]
        if strength is not None:
            extra.append("strength")
        if extra:
            raise ModelLoadError(
                f"a text2img pipeline ({type(pipe).__name__}) takes no {', '.join(extra)}; load the pipeline "
                "with task='img2img' or task='inpaint'."
            )
        return {"image": condition}
    if init_image is None:
        raise ModelLoadError(f"a {task} pipeline ({type(pipe).__name__}) needs an init image (init_image=).")
    strength = check_strength(DEFAULT_STRENGTH[task] if strength is None else strength)
    inputs = {"image": init_image, "control_image": condition, "strength": strength}
    if task == "inpaint":
        if mask_image is None:
            mask_image = default_mask(*init_image.size)
        inputs["mask_image"] = mask_image
    elif mask_image is not None:
        raise ModelLoadError(
            "an img2img pipeline takes no mask_image; load the pipeline with task='inpaint'."
        )
    return inputs
