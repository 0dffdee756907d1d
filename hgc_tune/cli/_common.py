"""Arguments and output helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from hgc_tune.cli._checks import MAX_STEPS, condition_types, device, finite

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.fidelity import ClipScorer, PromptMetric
    from hgc_tune.policy import PolicyFile

__all__ = [
    "add_clip_argument",
    "add_guidance_argument",
    "add_lora_argument",
    "add_model_arguments",
    "controlnet_count",
    "condition_input",
    "guidance_scale_from_args",
    "read_policy_argument",
    "is_builtin_policy",
    "add_policy_argument",
    "hide_loading_bars",
    "loras_from_args",
    "load_clip_from_args",
    "load_pipeline_from_args",
    "print_json",
    "prompt_metric_from_args",
    "resolve_policy",
    "resolve_task_policy",
]


def add_model_arguments(parser: argparse.ArgumentParser, *, with_condition: bool = True) -> None:
    """``--model``, ``--controlnet``, ``--scheduler``, ``--dtype``, ``--device`` (and ``--condition``)."""
    parser.add_argument(
        "--model",
        default="tiny",
        help="preset (tiny, sd15, shapes, tiny-sdxl, sdxl), local diffusers pipeline directory, or hub id "
        "(default: tiny)",
    )
    add_controlnet_argument(parser, "ControlNet directory or hub id for a base model")
    if with_condition:
        parser.add_argument(
            "--condition",
            type=condition_types("--condition"),
            default=None,
            help="condition type (shapes preset: seg, canny, hed, depth); several ControlNets at once: "
            "comma-separated in their order (seg,depth)",
        )
    parser.add_argument("--scheduler", default="unipc", help="unipc (default), ddim, euler, dpm, pndm")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument(
        "--device", type=device("--device"), default="cpu", help="torch device (default: cpu)"
    )
    add_lora_argument(parser)


def add_guidance_argument(parser: argparse.ArgumentParser) -> None:
    """``--guidance-scale``: unset (``None``) means the model's recommended scale, resolved once the pipeline
    is loaded (:func:`guidance_scale_from_args`)."""
    parser.add_argument(
        "--guidance-scale",
        type=finite("--guidance-scale"),
        default=None,
        help="classifier-free guidance scale (default: the model's recommended one: measured for shapes, "
        "the diffusers pipeline's default otherwise; 1 = no guidance)",
    )


def guidance_scale_from_args(args: argparse.Namespace, pipe: ControlNetPipeline) -> float:
    """``--guidance-scale``, or the recommended scale of the model ``pipe`` holds when it was not given; the
    value is stored back in ``args`` so that every later use agrees."""
    if args.guidance_scale is None:
        from hgc_tune.models import pipeline_guidance

        args.guidance_scale = pipeline_guidance(pipe).scale
    return float(args.guidance_scale)


def add_lora_argument(parser: argparse.ArgumentParser) -> None:
    """``--lora PATH[:SCALE]``, repeatable: LoRA adapters loaded into the pipeline (diffusers'
    ``load_lora_weights``, unfused), each at its scale (default 1)."""
    parser.add_argument(
        "--lora",
        action="append",
        default=None,
        metavar="PATH[:SCALE]",
        help="LoRA file (.safetensors) or folder to load into the pipeline, at SCALE (default 1); repeat it "
        "for several. A policy's provenance records it; needs peft",
    )


def add_clip_argument(parser: argparse.ArgumentParser) -> None:
    """``--clip PATH|ID``: the CLIP model that scores each image's prompt adherence (a checkpoint's prompt
    metric)."""
    parser.add_argument(
        "--clip",
        default=None,
        metavar="PATH|ID",
        help="CLIP model (transformers CLIPModel and its processor: a local folder, or a hub id such as "
        "openai/clip-vit-large-patch14) that scores each image against its prompt: the CLIP score, "
        "ControlNet++'s protocol, a proxy for prompt adherence. Without it a checkpoint's prompt is "
        "unguarded",
    )


def load_clip_from_args(args: argparse.Namespace) -> ClipScorer | None:
    """The ``--clip`` scorer on ``--device`` (``None`` without the flag); load it before the pipeline, so a
    bad one is refused first.

    Raises:
        ModelLoadError: A ``--clip`` that is empty, missing or no CLIP model; the message names the flag.
    """
    from hgc_tune.errors import HgcTuneError, ModelLoadError

    ref = getattr(args, "clip", None)
    if ref is None:
        return None
    if not ref.strip():
        raise ModelLoadError(f"`--clip` must name a CLIP model folder or hub id, but got --clip={ref!r}.")
    from hgc_tune.fidelity import load_clip_scorer

    try:
        return load_clip_scorer(ref, device=getattr(args, "device", None) or "cpu")
    except HgcTuneError as e:
        raise type(e)(f"--clip {ref!r}: {e}") from e


def prompt_metric_from_args(args: argparse.Namespace, model: str, clip: ClipScorer | None) -> PromptMetric:
    """The prompt metric of ``model`` (:func:`hgc_tune.fidelity.prompt_metric_for`); for a checkpoint without
    ``--clip``, its :class:`~hgc_tune.errors.PromptUnguardedWarning` is printed as one line on stderr."""
    import warnings

    from hgc_tune.errors import PromptUnguardedWarning
    from hgc_tune.fidelity import prompt_metric_for

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PromptUnguardedWarning)
        metric = prompt_metric_for(model, clip)
    for warning in [w for w in caught if issubclass(w.category, PromptUnguardedWarning)][:1]:
        print(f"hgc-tune {getattr(args, 'command', None) or ''}: warning: {warning.message}", file=sys.stderr)
    return metric


def parse_lora(value: str) -> tuple[str, float]:
    """``PATH[:SCALE]`` -> ``(path, scale)``; a suffix after the last ``:`` that is no number belongs to the
    path."""
    import math

    from hgc_tune.errors import ModelLoadError

    path, sep, tail = value.rpartition(":")
    if not sep or not path or not tail or "/" in tail or "\\" in tail:
        path, tail = value, ""
    scale = 1.0
    if tail:
        try:
            scale = float(tail)
        except ValueError:
            path, scale = value, 1.0
    if not path:
        raise ModelLoadError(f"--lora must be PATH[:SCALE], but got {value!r}.")
    if not math.isfinite(scale):
        raise ModelLoadError(f"--lora {value!r}: SCALE must be a finite number, but got {tail!r}.")
    return path, scale


def loras_from_args(args: argparse.Namespace) -> list[tuple[str, float]]:
    """``(path, scale)`` of every ``--lora``, each checked to exist (before any model is loaded)."""
    from hgc_tune.models._lora import check_lora_source

    loras = [parse_lora(value) for value in getattr(args, "lora", None) or ()]
    for path, _ in loras:
        check_lora_source(path)
    return loras


def controlnet_count(args: argparse.Namespace) -> int:
    """How many ControlNets the model arguments ask for: one per ``--condition`` type, else one per
    ``--controlnet``, else one."""
    condition = getattr(args, "condition", None)
    if condition:
        return len(condition.split(","))
    return len(args.controlnet) if getattr(args, "controlnet", None) else 1


def hide_loading_bars() -> None:
    """Hide diffusers' and transformers' per-component loading bars: the CLI shows its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def add_controlnet_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--controlnet DIR|ID``, repeatable: several give a MultiControlNetModel, in the order given."""
    parser.add_argument(
        "--controlnet",
        action="append",
        default=None,
        help=f"{help_text}; repeat it for several ControlNets at once (run in the order given)",
    )


def controlnet_ref(value: list[str] | str | None) -> list[str] | str | None:
    """The ``controlnet`` argument of :func:`hgc_tune.models.load_pipeline` from a repeated ``--controlnet``:
    one reference, a list of several, or ``None``."""
    if value is None or isinstance(value, str):
        return value
    return value[0] if len(value) == 1 else list(value)


def load_pipeline_from_args(args: argparse.Namespace, *, task: str = "text2img"):
    """Load the pipeline the model arguments name (of ``task``: ``text2img``, ``img2img`` or ``inpaint``),
    with its ``--lora`` adapters; warn on stderr when its weights are random.

    See :func:`_load_base_pipeline_from_args` for ``args.shape_only``.
    """
    from hgc_tune.models._lora import load_lora

    loras = loras_from_args(args)
    pipe = _load_base_pipeline_from_args(args, task=task)
    for path, scale in loras:
        load_lora(pipe, path, scale)
    return pipe


def _load_base_pipeline_from_args(args: argparse.Namespace, *, task: str = "text2img"):
    """The pipeline of the model arguments, without its LoRA adapters.

    ``args.shape_only`` (set by commands that only need shapes, such as MAC counting; absent = ``False``): a
    random-weight preset on the CPU is built with zero weights that take no memory
    (``load_pipeline(..., shape_only=True)``).
    """
    shape_only = bool(getattr(args, "shape_only", False))
    from hgc_tune.models import load_pipeline
    from hgc_tune.models._presets import PRESETS

    hide_loading_bars()

    random_preset = args.model in PRESETS and PRESETS[args.model].random_weights
    if shape_only and random_preset and args.device == "cpu":
        condition = getattr(args, "condition", None)
        return load_pipeline(
            args.model,
            condition=condition,
            scheduler=args.scheduler,
            dtype=args.dtype,
            task=task,
            shape_only=True,
        )
    refs, condition = controlnet_ref(args.controlnet), getattr(args, "condition", None)
    if isinstance(refs, list) and condition and len(condition.split(",")) != len(refs):
        from hgc_tune.errors import ModelLoadError

        raise ModelLoadError(
            f"--condition {condition!r} names {len(condition.split(','))} condition type(s) for "
            f"{len(refs)} --controlnet: name one per ControlNet, in the same order (e.g. seg,depth)."
        )
    pipe = load_pipeline(
        args.model,
        controlnet=refs,
        condition=getattr(args, "condition", None),
        scheduler=args.scheduler,
        dtype=args.dtype,
        device=args.device,
        task=task,
    )
    if random_preset:  # after loading: a refused argument stays one line
        print(
            f"note: preset {args.model!r} has random weights: its images are noise "
            "(fine for MACs and timing).",
            file=sys.stderr,
        )
    return pipe


def condition_input(pipe: ControlNetPipeline, images: list) -> Any:
    """The ``image`` argument of a pipeline call: the one condition image, or the list of them (one per
    ControlNet, in order) that diffusers takes for a ``MultiControlNetModel``.

    Raises:
        HgcTuneError: A number of images other than the pipeline's number of ControlNets.
    """
    nets = getattr(pipe.controlnet, "nets", None)
    expected = len(nets) if nets is not None else 1
    if len(images) != expected:
        from hgc_tune.errors import HgcTuneError

        raise HgcTuneError(
            f"`--condition-image` must be given once per ControlNet ({expected}, in their order), but got "
            f"{len(images)}."
        )
    return list(images) if nets is not None else images[0]


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def add_policy_argument(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--policy",
        required=required,
        default=None,
        help="policy JSON file, 'peer:NAME' for a built-in peer schedule (e.g. peer:deepcache-n3-b0, "
        "peer:tgate-g10, peer:cnwin-k10-drop), 'full' for the all-compute policy, 'full-hooked' for an "
        "all-compute policy that hooks every cacheable module (measures executor overhead), or 'none'",
    )


def is_builtin_policy(ref: str | None) -> bool:
    return ref is None or ref.lower() in ("none", "full", "full-hooked") or ref.startswith("peer:")


def read_policy_argument(ref: str | None) -> PolicyFile | None:
    """Read and check a ``--policy`` file before anything heavy is loaded (``None`` for a built-in policy):
    a file that is no policy, or declares more steps than any run, is refused in a moment, not after the
    model has loaded."""
    if ref is None or is_builtin_policy(ref):
        return None
    from hgc_tune.policy import load_policy

    return load_policy(ref)


def resolve_policy(
    ref: str | None,
    pipe,
    *,
    num_steps: int | None,
    condition_type: str | None,
    model: str,
    policy_file: PolicyFile | None = None,
):
    """Turn a ``--policy`` value into a :class:`~hgc_tune.policy.Policy` (or ``None`` for no policy).

    A file's policy fixes the number of steps; peers and ``full`` are built for ``num_steps`` (default 20).
    ``policy_file``: the file ``ref`` names, already read by :func:`read_policy_argument`.
    """
    from hgc_tune.models._blocks import cacheable_module_keys
    from hgc_tune.policy import full_compute_policy, load_policy, peer_policy, target_for_pipeline

    if ref is None or ref == "none":
        return None
    if ref in ("full", "full-hooked") or ref.startswith("peer:"):
        target = target_for_pipeline(
            pipe, num_steps=num_steps or 20, condition_type=condition_type, model=model
        )
        if ref == "full":
            return full_compute_policy(target)
        if ref == "full-hooked":
            return _every_module_hooked(target, cacheable_module_keys(pipe))
        return peer_policy(ref.removeprefix("peer:"), target, cacheable_module_keys(pipe))
    policy = (policy_file or load_policy(ref)).select(condition_type)
    if num_steps is not None and num_steps != policy.num_steps:
        from hgc_tune.errors import StepCountMismatchError

        raise StepCountMismatchError(
            f"policy {ref!r} was made for {policy.num_steps} steps, but --steps {num_steps} was given."
        )
    return policy


def _every_module_hooked(target, module_keys):
    """An all-compute policy whose entries hook every cacheable module (each computes at every step)."""
    from hgc_tune.models._blocks import is_attention_key, is_whole_model_key
    from hgc_tune.policy import ControlNetWindow, Policy, ReuseWindow

    every = tuple(range(target.num_steps))
    classes = target.component_classes
    blocks = {k: every for k in module_keys if not is_whole_model_key(k) and not is_attention_key(k, classes)}
    # one-step windows [s, s + 1) reuse nothing: the module computes at every step
    attention = {
        k: tuple(ReuseWindow(s, s + 1) for s in every) for k in module_keys if is_attention_key(k, classes)
    }
    # Each whole ControlNet runs at every step: one `controlnet` window, or one per net of several.
    nets = target.controlnet_keys()
    single = nets == ["controlnet"]
    windows = {"controlnets": {k: ControlNetWindow(every) for k in nets}} if nets and not single else {}
    controlnet = ControlNetWindow(every) if single else None
    return Policy(
        target, blocks=blocks, attention=attention, controlnet=controlnet, name="full-hooked", **windows
    )


def resolve_task_policy(args: argparse.Namespace, pipe, task: str, strength: float | None):
    """``--policy`` for a call of ``task`` at ``strength``: ``(policy or None, num_inference_steps, steps
    run)``.

    text2img: as :func:`resolve_policy`. img2img and inpainting: a policy file fixes the steps run, and
    ``--steps`` (``num_inference_steps``) defaults to the number that runs them at ``--strength`` or must run
    them; peers and ``full`` are built for the steps ``--steps`` (default 20) runs at ``--strength``.
    """
    from hgc_tune.models._tasks import steps_run

    ref = args.policy
    if task == "text2img":
        num_steps = args.steps
    elif is_builtin_policy(ref):
        num_steps = steps_run(args.steps or 20, strength)
    else:
        num_steps = None  # checked against --steps and --strength below
    spec = "none" if ref is not None and ref.lower() == "none" else ref
    policy = resolve_policy(
        spec,
        pipe,
        num_steps=num_steps,
        condition_type=args.condition,
        model=args.model,
        policy_file=getattr(args, "policy_file", None),
    )
    return (policy, *_inference_steps(args, policy, task, strength))


def _inference_steps(args: argparse.Namespace, policy, task: str, strength: float | None) -> tuple[int, int]:
    """``(num_inference_steps, steps run)`` of the call, checked against the policy's steps."""
    from hgc_tune.errors import HgcTuneError, StepCountMismatchError
    from hgc_tune.models._tasks import inference_steps_for, steps_run

    if task == "text2img":
        steps = policy.num_steps if policy is not None and args.steps is None else (args.steps or 20)
        return steps, steps
    if strength is None:
        raise HgcTuneError(f"task {task!r} runs at a strength in (0, 1], but got strength=None.")
    if args.steps is not None:
        run = steps_run(args.steps, strength)
        if policy is not None and run != policy.num_steps:
            fitting = inference_steps_for(policy.num_steps, strength, MAX_STEPS)
            hint = f"give --steps {fitting} or leave it out" if fitting else "choose another --strength"
            raise StepCountMismatchError(
                f"policy {args.policy!r} was made for {policy.num_steps} denoising steps, but --steps "
                f"{args.steps} at --strength {strength:g} runs {run}; {hint}."
            )
        return args.steps, run
    if policy is None:
        return 20, steps_run(20, strength)
    steps = inference_steps_for(policy.num_steps, strength, MAX_STEPS)
    if steps is None:
        raise StepCountMismatchError(
            f"policy {args.policy!r} was made for {policy.num_steps} denoising steps, but no --steps up to "
            f"{MAX_STEPS} runs that many at --strength {strength:g}; choose another --strength."
        )
    return steps, policy.num_steps
