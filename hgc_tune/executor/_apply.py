"""``apply_policy``: attach a policy's hooks to a pipeline and get a handle that removes them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, SupportsIndex

import torch

from hgc_tune.errors import (
    PolicyAlreadyAppliedError,
    PolicyError,
    PolicyMismatchError,
    StepCountMismatchError,
)
from hgc_tune.executor._controlnet_window import (
    CONTROLNET_WINDOW_HOOK,
    ControlNetWindowConfig,
    ControlNetWindowHook,
    apply_controlnet_window,
)
from hgc_tune.executor._guard import POLICY_GUARD_HOOK, PolicyGuardHook
from hgc_tune.executor._guidance import (
    GUIDANCE_HOOK,
    GuidanceTruncationConfig,
    GuidanceTruncationHook,
    apply_guidance_truncation,
)
from hgc_tune.executor._step_cache import STEP_CACHE_HOOK, StepCacheConfig, StepCacheHook, apply_step_cache
from hgc_tune.executor._summary import CallMacs, CallSummary, ModuleCounts, denoiser_mac_table
from hgc_tune.models._blocks import cacheable_module_keys, is_whole_model_key
from hgc_tune.models._tasks import inference_steps_for
from hgc_tune.policy import Policy, PolicyFile, target_for_pipeline
from hgc_tune.policy._lora import check_policy_lora
from hgc_tune.policy._macs import MAC_CONVENTIONS
from hgc_tune.policy._measured_on import check_policy_guidance, check_policy_weights
from hgc_tune.policy._target import loaded_condition_type
from hgc_tune.runtime import RunContext, attach_run_context, release_run_context
from hgc_tune.runtime._context import PerThread, calling_pipeline, scheduler_calls
from hgc_tune.runtime._registry import foreign_hooks, register_hook, remove_hook, repair_hook

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.macs import MacTable
    from hgc_tune.macs._executed import ModuleRunCounter, ModuleRuns

__all__ = ["PolicyHandle", "apply_policy", "check_policy_fits", "policy_handle"]

_HANDLE_ATTR = "_hgc_policy_handle"


def check_policy_fits(
    pipe: ControlNetPipeline,
    policy: Policy,
    condition_type: str | None = None,
    *,
    check_fingerprint: bool = True,
) -> dict[str, torch.nn.Module]:
    """Raise :class:`PolicyMismatchError` if ``policy`` does not fit ``pipe``; return its cacheable modules
    by key.

    The one comparison of a policy with a pipeline (the executor and ``hgc-tune macs`` use it): pipeline,
    U-Net and ControlNet classes, the number of ControlNets and each one's class and fingerprint, scheduler,
    structural fingerprint, the condition type (``condition_type``, else the one ``load_pipeline`` built the
    pipeline for; ``seg,depth`` for two ControlNets, in their order; a ``condition_type`` that contradicts
    the loaded one is refused), and then every module key the policy names. The error names each field that
    differs with both values.

    Args:
        pipe: The pipeline.
        policy: The policy.
        condition_type: The condition the pipeline generates for (``None``: not checked).
        check_fingerprint: Also compare the structural fingerprint.
    """
    found = target_for_pipeline(
        pipe, num_steps=policy.num_steps, condition_type=_condition_type(pipe, condition_type, check=False)
    )
    diffs = policy.target.mismatches(found, check_fingerprint=check_fingerprint)
    if diffs:
        raise PolicyMismatchError(
            f"policy {policy.name!r} does not fit this pipeline: " + "; ".join(diffs) + "."
        )
    _condition_type(pipe, condition_type)
    modules = cacheable_module_keys(pipe)
    for kind, keys in (
        ("blocks", policy.blocks),
        ("attention", policy.attention),
        ("controlnets", policy.controlnets),
    ):
        for key in keys:
            if key not in modules:
                raise PolicyMismatchError(
                    f"policy {policy.name!r}: {kind}[{key!r}] names no cacheable module of this pipeline "
                    f"(cacheable blocks are e.g. {list(modules)[:6]})."
                )
    return modules


def _condition_type(pipe: ControlNetPipeline, asked: str | None, *, check: bool = True) -> str | None:
    """The condition type to check a policy against: ``asked``, else the one ``load_pipeline`` built the
    pipeline for. With ``check``, raise :class:`PolicyMismatchError` if the two differ (several ControlNets
    in another order included)."""
    loaded = loaded_condition_type(pipe)
    if check and asked is not None and loaded is not None and asked != loaded:
        order = " (its ControlNets in that order)" if "," in loaded else ""
        raise PolicyMismatchError(
            f"condition_type={asked!r} was given, but load_pipeline built this pipeline for condition "
            f"{loaded!r}{order}; pass condition_type={loaded!r}, or load the pipeline with "
            f"condition={asked!r}."
        )
    return asked if asked is not None else loaded


def _check_first_order(pipe: ControlNetPipeline, policy: Policy) -> None:
    """Refuse a scheduler that calls the denoisers other than once per inference step (Heun, DPM2, PNDM).

    A policy's steps index the denoiser calls of a call; with such a scheduler the calls and the inference
    steps differ, so a policy made for ``n`` steps matches no call of ``n`` steps, and what it reuses
    between a step's calls was never profiled.
    """
    n = policy.num_steps
    calls = scheduler_calls(pipe.scheduler, n)
    if calls is not None and calls != n:
        raise PolicyMismatchError(
            f"scheduler {type(pipe.scheduler).__name__} calls the denoisers {calls} times for "
            f"num_inference_steps={n}, but policy {policy.name!r} indexes one denoiser call per step; "
            "policies need a scheduler that calls them once per step (UniPC, DDIM, Euler, DPM-Solver "
            "multistep: --scheduler unipc|ddim|euler|dpm)."
        )


def _whole_controlnets(pipe: ControlNetPipeline) -> dict[str, torch.nn.Module]:
    """Each whole ControlNet of the pipeline by key: ``controlnet``, or ``controlnet.nets.<i>`` for the nets
    of a ``MultiControlNetModel``."""
    controlnet = pipe.controlnet
    nets = getattr(controlnet, "nets", None)
    if nets is None:
        return {"controlnet": controlnet}
    return {f"controlnet.nets.{i}": net for i, net in enumerate(nets)}


def check_other_hooks(pipe: ControlNetPipeline, policy: Policy) -> None:
    """Refuse a CFG-truncating ``policy`` on a pipeline whose denoisers carry another stateful hook.

    diffusers' caches (Pyramid Attention Broadcast, FasterCache, …) keep module outputs across steps at the
    batch size they saw; once the policy truncates CFG the batch halves and they would return outputs of
    the wrong size. A policy without a guidance window passes.
    """
    guidance = policy.guidance
    if guidance is None:
        return
    for component in ("unet", "controlnet"):
        for key, name, hook in foreign_hooks(getattr(pipe, component), component):
            if getattr(hook, "_is_stateful", False):
                raise PolicyMismatchError(
                    f"policy {policy.name!r} truncates CFG from step {guidance.cfg_until} (the "
                    f"denoisers then run half the batch), but diffusers hook {name!r} on {key} keeps outputs "
                    "across steps at the full batch and would return them at the wrong size. Remove that "
                    "hook, or use a policy without a guidance window."
                )


def _check_not_shared(pipe: ControlNetPipeline) -> None:
    for component in ("unet", "controlnet"):
        registry = getattr(getattr(pipe, component), "_diffusers_hook", None)
        guard = registry.get_hook(POLICY_GUARD_HOOK) if registry is not None else None
        if guard is not None:
            raise PolicyAlreadyAppliedError(guard.owner._applied_elsewhere("applying a policy here"))


class _CallChecks:
    """What the handle has checked in the calling thread's current call."""

    def __init__(self) -> None:
        self.steps_checked = False


class _CallSteps:
    """The denoising steps of the calling thread's current call, and those run with CFG."""

    def __init__(self) -> None:
        self.steps = 0
        self.cfg_steps = 0


class _CallCounts:
    """What :meth:`PolicyHandle.summary` reads, gathered from the hooks of the calling thread's last call
    (kept when the policy is removed, so that the summary outlives the hooks)."""

    def __init__(self, handle: PolicyHandle) -> None:
        steps = handle._steps.get()
        self.steps = steps.steps
        unet_guidance = handle.guidance_hooks.get("unet")
        self.cfg_truncated_steps = unet_guidance.state.truncated if unet_guidance is not None else 0
        self.cfg_steps = steps.cfg_steps - self.cfg_truncated_steps
        modules: dict[str, ModuleCounts] = {}
        for key, step_hook in handle.step_hooks.items():
            modules[key] = ModuleCounts(step_hook.state.computed, step_hook.state.reused)
        for key, window_hook in handle.controlnet_hooks.items():
            window = window_hook.state
            modules[key] = ModuleCounts(window.computed, window.reused, window.dropped)
        self.modules = modules
        self.runs = handle._runs.get() if handle._runs is not None else None


class PolicyHandle:
    """The hooks of one applied policy. ``remove()`` restores the pipeline's exact prior behaviour.

    Usable as a context manager; ``remove()`` is idempotent. The policy belongs to the pipeline it was applied
    to: another pipeline that shares its U-Net and ControlNet (``from_pipe``, a pipeline built from its
    ``components``) is refused when it calls them. A copy of the pipeline (``copy.deepcopy``, ``pickle``)
    carries a copy of the handle, bound to the copy; :func:`policy_handle` finds it.

    The hooks sit on the U-Net and ControlNet the policy was applied to. Assigning another one to the
    pipeline (``pipe.unet = …``, ``pipe.controlnet = …``, a net of a ``MultiControlNetModel``) detaches the
    policy: :attr:`active` turns ``False`` and the next call of the pipeline raises
    :class:`PolicyMismatchError` before the denoisers run. As with a replaced scheduler, call ``remove()``
    and apply the policy again (the new module may not fit it). Wrapping a module in place, as
    ``torch.compile`` does (``pipe.unet = torch.compile(pipe.unet)``), keeps the policy.

    Two threads may call the pipeline at once: each call keeps its own step index and cached outputs.
    """

    def __init__(self, pipe: ControlNetPipeline, policy: Policy, context: RunContext) -> None:
        self.pipe = pipe
        self.policy = policy
        self.context = context
        self.step_hooks: dict[str, StepCacheHook] = {}
        # The window hook of each whole ControlNet, by key (``controlnet``, or ``controlnet.nets.<i>``).
        self.controlnet_hooks: dict[str, ControlNetWindowHook] = {}
        self._attached: list[tuple[torch.nn.Module, str]] = []
        self._scheduler = pipe.scheduler
        self._denoisers = _denoisers(pipe)
        # The truncated-CFG hook of each denoiser, by component (``unet``, ``controlnet``).
        self.guidance_hooks: dict[str, GuidanceTruncationHook] = {}
        self._removed = False
        self._checks: PerThread[_CallChecks] = PerThread(_CallChecks)
        self._steps: PerThread[_CallSteps] = PerThread(_CallSteps)
        # With count_macs: what the denoisers' modules computed in the calling thread's call, and the MAC
        # table of each latent size seen (built on the first summary() that needs it).
        self._runs: PerThread[ModuleRuns] | None = None
        self._mac_counter: ModuleRunCounter | None = None
        self._mac_tables: dict[tuple[int, int], MacTable] = {}
        self._removed_counts: _CallCounts | None = None

    @property
    def active(self) -> bool:
        """Whether the policy runs when the pipeline is called: not removed, and its U-Net and ControlNets
        are still the pipeline's."""
        return not self._removed and self._replaced() is None

    def _replaced(self) -> str | None:
        """The first denoiser the pipeline no longer holds since the policy was applied (``pipe.unet``,
        ``pipe.controlnet``, ``pipe.controlnet.nets[1]``), or ``None``."""
        now = _denoisers(self.pipe)
        for name, module in self._denoisers.items():
            if now.get(name) is not module:
                return name
        return None

    def _begin_call(self, context: RunContext) -> None:
        self.check_call()
        # diffusers' pipelines set the call's guidance scale before they set the timesteps (this call).
        check_policy_guidance(self.pipe, self.policy, getattr(self.pipe, "_guidance_scale", None))
        self._checks.get().steps_checked = False
        if context.strength is not None:
            # img2img / inpainting: the steps this call runs are known now (the pipeline's get_timesteps),
            # before the init image is encoded.
            self.check_steps()
        if self.policy.guidance is not None:
            # diffusers' caches can be added on top of the policy after it was applied.
            check_other_hooks(self.pipe, self.policy)
        for module, name in self._attached:
            repair_hook(module, name)
        for step_hook in self.step_hooks.values():
            step_hook.state.reset()
        for window_hook in self.controlnet_hooks.values():
            window_hook.state.reset()
        for guidance_hook in self.guidance_hooks.values():
            guidance_hook.state.reset()
        self._steps.set(_CallSteps())
        if self._runs is not None:
            self._runs.set(self._runs.factory())

    def note_step(self) -> None:
        """Count a denoising step of the current call (the policy's guard calls it at each U-Net call)."""
        steps = self._steps.get()
        steps.steps += 1
        if self.context.cfg:
            steps.cfg_steps += 1

    def summary(self) -> CallSummary:
        """What the calling thread's last pipeline call did under this policy.

        Per module the policy schedules, how often it computed, reused and (a ControlNet) dropped; the
        steps run, with both CFG branches and with the conditional one only; and, for a policy applied with
        ``count_macs=True``, the U-Net and ControlNet MACs counted while the call ran against the same call
        at full compute, in both conventions. The counts are reset when a call begins, so a call that
        raised reports what it did before. Read after ``remove()`` (or a ``with`` block), it reports the
        last call of the thread that removed the policy.

        The counts cost one Python integer per hook decision (a few microseconds per step, no device
        sync) and are always kept; the MACs are counted only with ``count_macs=True`` (see
        :func:`apply_policy` for its overhead). They need a MAC table at the call's resolution: the first
        ``summary()`` after a call at a new resolution traces the U-Net and ControlNet once (unhooked twins
        sharing their weights; 0.9 CPU seconds on the ``tiny`` preset, 1.6 on ``shapes``), later ones
        reuse it (milliseconds).

        Example:
            >>> from PIL import Image
            >>> from hgc_tune import apply_policy, load_pipeline, load_policy
            >>> pipe = load_pipeline("tiny")
            >>> policy = load_policy("policies/tiny-deepcache-n3-b0.json")
            >>> with apply_policy(pipe, policy, count_macs=True) as handle:
            ...     image = pipe("a red circle", image=Image.new("RGB", (64, 64)), num_inference_steps=20)
            >>> stats = handle.summary()
            >>> stats.steps, stats.modules["unet.mid_block"].to_dict()
            (20, {'computed': 7, 'reused': 13, 'dropped': 0})
            >>> f"{stats.macs['paper'].reduction:.0%} fewer MACs"
            '35% fewer MACs'
        """
        counts = self._removed_counts if self._removed_counts is not None else _CallCounts(self)
        macs = None
        runs = counts.runs
        if runs is not None and runs.latent_size is not None and self._mac_counter is not None:
            table = self._mac_tables.get(runs.latent_size)
            if table is None:
                table = self._mac_tables[runs.latent_size] = denoiser_mac_table(self.pipe, runs.latent_size)
            children = self._mac_counter.children
            macs = {
                c: CallMacs(c, runs.macs(table, children, c), runs.full_macs(table, c))
                for c in MAC_CONVENTIONS
            }
        return CallSummary(
            policy=self.policy.name,
            steps=counts.steps,
            cfg_steps=counts.cfg_steps,
            cfg_truncated_steps=counts.cfg_truncated_steps,
            modules=counts.modules,
            macs=macs,
        )

    @property
    def controlnet_hook(self) -> ControlNetWindowHook | None:
        """The window hook of the single ControlNet (the first one's with several; ``None`` once removed)."""
        return next(iter(self.controlnet_hooks.values()), None)

    def check_call(self) -> None:
        """Raise :class:`PolicyError` unless the pipeline the policy was applied to, with the scheduler it
        was applied with, runs the denoisers (a denoiser driven by hand, outside any pipeline, passes)."""
        # The step index and CFG state come from this pipeline and the scheduler the policy was applied
        # with; another pipeline or a replaced scheduler would silently reuse the wrong outputs.
        caller = calling_pipeline()
        if caller is not None and caller is not self.pipe:
            raise PolicyError(self._applied_elsewhere("calling this pipeline"))
        if self.pipe.scheduler is not self._scheduler:
            raise PolicyError(
                f"the pipeline's scheduler was replaced after policy {self.policy.name!r} was applied; "
                "remove the policy and apply it again after changing the scheduler."
            )
        replaced = self._replaced()
        if replaced is not None:
            raise PolicyMismatchError(
                f"{replaced} was replaced after policy {self.policy.name!r} was applied, and the policy's "
                "hooks stay on the module it replaced; call remove() on the policy's handle and apply the "
                "policy again after changing it."
            )

    def check_steps(self) -> None:
        """Raise :class:`StepCountMismatchError` unless the current call runs the policy's number of steps.

        Only the steps a call actually runs count: an img2img or inpainting call with ``strength < 1`` skips
        the first timesteps (20 steps at strength 0.7 run 14). The count is final once the pipeline has set
        its timesteps and, for img2img and inpainting, cut them (``get_timesteps``), where it is checked; the
        policy's guard checks it again at the first denoiser call, before anything is computed (once per
        call).
        """
        checks = self._checks.get()
        if checks.steps_checked:
            return
        context = self.context
        if context.num_steps != self.policy.num_steps:
            raise StepCountMismatchError(_step_count_message(self.policy, context, self.pipe.scheduler))
        checks.steps_checked = True

    def _applied_elsewhere(self, before: str) -> str:
        """The message for another pipeline that shares this policy's U-Net and ControlNet."""
        return (
            f"policy {self.policy.name!r} is applied to another pipeline ({type(self.pipe).__name__} at "
            f"{id(self.pipe):#x}) that shares this pipeline's U-Net and ControlNet (made with from_pipe or "
            f"from its components); call remove() on that policy's handle before {before}, then apply the "
            "policy to the pipeline you call."
        )

    def remove(self) -> None:
        """Detach every hook of this policy (idempotent).

        Hooks that others registered on the same modules before or after the policy (diffusers' caches,
        offloading) keep running.
        """
        if self._removed:
            return
        self._removed_counts = _CallCounts(self)
        self._removed = True
        if self._mac_counter is not None:
            self._mac_counter.remove()
        for module, name in reversed(self._attached):
            remove_hook(module, name)
        self._attached.clear()
        self.step_hooks.clear()
        self.controlnet_hooks.clear()
        self.guidance_hooks.clear()
        self.context.remove_begin_listener(self._begin_call)
        release_run_context(self.pipe)
        if getattr(self.pipe, _HANDLE_ATTR, None) is self:
            delattr(self.pipe, _HANDLE_ATTR)

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        # diffusers' HookRegistry installs each hook's forward as a closure, which deepcopy shares with the
        # original (the copy would run the original's modules) and pickle refuses; ours are objects.
        for component in ("unet", "controlnet"):
            for key, name, _ in foreign_hooks(getattr(self.pipe, component), component):
                raise PolicyError(
                    f"a pipeline that carries policy {self.policy.name!r} can be copied or pickled only "
                    f"without other diffusers hooks on its denoisers, but {key} has hook {name!r} (diffusers "
                    "keeps it in a closure, which a copy would share with the original). Remove that hook "
                    "before copying, then add it to each copy."
                )
        return super().__reduce_ex__(protocol)

    def __getstate__(self) -> dict[str, Any]:
        # MAC tables are a cache (rebuilt on demand) and hold read-only mappings that cannot be copied.
        return {**vars(self), "_mac_tables": {}}

    def __enter__(self) -> PolicyHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        replaced = None if self._removed else self._replaced()
        detached = f", detached: {replaced} replaced" if replaced else ""
        return f"PolicyHandle(policy={self.policy.name!r}, active={self.active}{detached})"


def _denoisers(pipe: ControlNetPipeline) -> dict[str, torch.nn.Module]:
    """The pipeline's U-Net and ControlNets by the attribute that holds them; a module wrapped in place
    (``torch.compile``'s ``OptimizedModule``) counts as the module it wraps."""
    out = {"pipe.unet": pipe.unet, "pipe.controlnet": pipe.controlnet}
    for i, net in enumerate(getattr(pipe.controlnet, "nets", None) or ()):
        out[f"pipe.controlnet.nets[{i}]"] = net
    return {name: getattr(module, "_orig_mod", module) for name, module in out.items()}


def _step_count_message(policy: Policy, context: RunContext, scheduler: object) -> str:
    made_for, runs = policy.num_steps, context.num_steps
    requested = getattr(scheduler, "num_inference_steps", None) or context.scheduled_steps
    message = f"policy {policy.name!r} was made for {made_for} denoising steps, but this call runs {runs}"
    strength = context.strength
    if strength is None:  # text2img
        return f"{message} (num_inference_steps={requested}); call it with num_inference_steps={made_for}."
    call = f"num_inference_steps={requested}, strength={strength:g}"
    if context.skipped_steps:
        call += (
            f": the first {context.skipped_steps} of its {context.scheduled_steps} timesteps are skipped, "
            "and only the steps run count"
        )
    message += f" ({call})"
    fitting = inference_steps_for(made_for, strength)
    if fitting is not None:
        return f"{message}; at strength={strength:g}, call it with num_inference_steps={fitting}."
    return f"{message}; choose num_inference_steps and strength that run {made_for} steps."


def policy_handle(pipe: ControlNetPipeline) -> PolicyHandle | None:
    """The handle of the policy applied to ``pipe``, or ``None`` if none is (a policy detached by replacing
    the pipeline's U-Net or ControlNet is returned until it is removed: ``handle.active`` is then ``False``).

    The way to the handle of a copied pipeline: ``copy.deepcopy(pipe)`` and ``pickle`` copy the policy with
    the pipeline, and ``policy_handle(copy).remove()`` removes it from the copy only.

    Args:
        pipe: The pipeline.
    """
    handle = getattr(pipe, _HANDLE_ATTR, None)
    return handle if handle is not None and not handle._removed else None


def apply_policy(
    pipe: ControlNetPipeline,
    policy: Policy | PolicyFile,
    condition_type: str | None = None,
    *,
    check_fingerprint: bool = True,
    count_macs: bool = False,
) -> PolicyHandle:
    """Apply a caching policy to a ControlNet pipeline (text2img, img2img or inpainting, the class its target
    names).

    Every cached module key gets a step-cache hook; the ControlNet gets a window hook (which also skips
    the compute diffusers wastes at ``conditioning_scale == 0``); with a guidance window, the U-Net and the
    ControlNet get truncated-CFG hooks. Nothing is attached if the policy does not fit.

    The policy belongs to ``pipe``: another pipeline sharing its U-Net and ControlNet (``from_pipe``, built
    from its ``components``) is refused. A copy of ``pipe`` (``copy.deepcopy``, ``pickle``) carries its own
    copy of the policy, bound to the copy's modules and scheduler; :func:`policy_handle` returns the copy's
    handle, whose ``remove()`` leaves the original's policy on. To compile, call
    :func:`~hgc_tune.runtime.compile_regions` afterwards: ``torch.compile`` of the hooked U-Net would guard on
    the step index and recompile at every step.

    Args:
        pipe: The pipeline (its ``unet``, ``controlnet`` and ``scheduler`` are hooked in place).
        policy: A :class:`Policy`, or a :class:`PolicyFile` from which ``condition_type`` picks one.
        condition_type: The condition the pipeline generates for: it picks the policy of a multi-policy
            file, and a policy made for another condition type is refused.
        check_fingerprint: Refuse a policy made for another U-Net/ControlNet configuration.
        count_macs: Also count the MACs each call executes, for :meth:`PolicyHandle.summary`. This puts a
            PyTorch forward hook on every module of the U-Net and ControlNet (no device sync; the batch is
            read from tensor shapes), which costs Python time at every module call: about 11 % of a call's
            CPU time on the ``shapes`` and ``tiny`` presets (64 px, 20 steps, CFG, one CPU thread), and
            relatively more where the kernels are fast (a GPU). So it is opt-in: leave it off when timing,
            and with :func:`~hgc_tune.runtime.compile_regions` (the hooks would be traced). The
            computed/reused counts and guidance steps of ``summary()`` are kept either way (a few
            microseconds per step).

    A policy tuned with other LoRA adapters than ``pipe`` carries, or with none while it carries one, is
    applied with a :class:`~hgc_tune.policy.LoraMismatchWarning` (once per pipeline, policy and adapters): the
    fidelity its provenance records may not hold. Likewise a policy whose provenance records the weights and
    the guidance scale it was tuned at warns (:class:`~hgc_tune.errors.ProvenanceMismatchWarning`, once per
    pipeline, policy and values) when ``pipe`` holds other weights, and when a call runs at another
    ``guidance_scale``; the message says what the figures were measured on.

    Returns:
        A :class:`PolicyHandle`; call ``remove()`` (or use it as a context manager) to detach.

    Raises:
        PolicyAlreadyAppliedError: The pipeline, or another that shares its U-Net and ControlNet, already
            has a policy applied.
        PolicyMismatchError: The policy's target or module keys do not fit the pipeline (its condition type
            included: ``condition_type``, else the one ``load_pipeline`` built the pipeline for, ControlNets
            in order), it truncates CFG on denoisers that carry one of diffusers' caches, or the scheduler
            calls the denoisers more than once per step (Heun, DPM2, PNDM). At call time, before the
            denoisers run, if ``pipe.unet`` or a ControlNet was replaced since.
        StepCountMismatchError: At call time, before the denoisers run, if the call runs a different number
            of steps (only the steps run count: img2img and inpainting with ``strength < 1`` run fewer).

    Example:
        >>> from PIL import Image
        >>> from hgc_tune import apply_policy, load_pipeline, load_policy, policy_handle
        >>> pipe = load_pipeline("tiny")
        >>> policy = load_policy("policies/tiny-deepcache-n3-b0.json")
        >>> condition = Image.new("RGB", (64, 64))
        >>> with apply_policy(pipe, policy):
        ...     image = pipe("a red circle", image=condition, num_inference_steps=20).images[0]
        >>> import copy
        >>> handle = apply_policy(pipe, policy)
        >>> twin = copy.deepcopy(pipe)  # runs its own copy of the policy
        >>> policy_handle(twin).remove()  # twin is plain again; pipe keeps its policy
        >>> handle.remove()
    """
    if isinstance(policy, PolicyFile):
        policy = policy.select(_condition_type(pipe, condition_type, check=False))
    existing = policy_handle(pipe)
    if existing is not None:
        raise PolicyAlreadyAppliedError(
            f"a policy ({existing.policy.name!r}) is already applied to this pipeline; call .remove() on its "
            "handle before applying another."
        )
    _check_not_shared(pipe)
    modules = check_policy_fits(pipe, policy, condition_type, check_fingerprint=check_fingerprint)
    _check_first_order(pipe, policy)
    if policy.guidance is not None:
        check_other_hooks(pipe, policy)
    check_policy_lora(pipe, policy)
    check_policy_weights(pipe, policy)

    context = attach_run_context(pipe)
    handle = PolicyHandle(pipe, policy, context)
    try:
        for key, steps in policy.compute_sets().items():
            if is_whole_model_key(key):
                continue
            hook = apply_step_cache(modules[key], StepCacheConfig(frozenset(steps)), context)
            handle._attached.append((modules[key], STEP_CACHE_HOOK))
            handle.step_hooks[key] = hook
        windows = policy.controlnet_windows
        for key, net in _whole_controlnets(pipe).items():
            window = windows.get(key)
            config = ControlNetWindowConfig(
                frozenset(window.steps) if window else None,
                window.mode if window else "reuse",
                # diffusers' MultiControlNetModel adds the later nets' mid residual into the first net's in
                # place: kept residuals must not be the tensors it returns.
                private_outputs=key != "controlnet",
            )
            handle.controlnet_hooks[key] = apply_controlnet_window(net, config, context)
            handle._attached.append((net, CONTROLNET_WINDOW_HOOK))
        if policy.guidance is not None:
            # Registered last, so it wraps outside the window hook and reuse sees the truncated batch.
            for component in ("controlnet", "unet"):
                denoiser = getattr(pipe, component)
                handle.guidance_hooks[component] = apply_guidance_truncation(
                    denoiser, GuidanceTruncationConfig(policy.guidance.cfg_until), context
                )
                handle._attached.append((denoiser, GUIDANCE_HOOK))
        # Registered last, so it is the outermost hook and checks every call before anything runs.
        for denoiser in (pipe.controlnet, pipe.unet):
            guard = PolicyGuardHook(handle, counts_steps=denoiser is pipe.unet)
            register_hook(denoiser, guard, POLICY_GUARD_HOOK)
            handle._attached.append((denoiser, POLICY_GUARD_HOOK))
        if count_macs:
            # Here, not at the top: the MAC counter imports fvcore, which plain policies do not need.
            from hgc_tune.macs._executed import ModuleRunCounter, ModuleRuns

            handle._runs = PerThread(ModuleRuns)
            handle._mac_counter = ModuleRunCounter(pipe, handle._runs.get)
        context.add_begin_listener(handle._begin_call)
    except BaseException:
        handle.remove()
        raise
    setattr(pipe, _HANDLE_ATTR, handle)
    return handle
