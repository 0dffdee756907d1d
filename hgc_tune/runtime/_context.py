"""The per-call run context that every hook reads: step index, number of steps, CFG.

The context is reset when the pipeline's scheduler gets its timesteps (``set_timesteps``, called once at
the start of every pipeline call) and advanced once per denoising step when the scheduler steps
(``scheduler.step``). The steps count only the steps a call actually runs: img2img and inpainting pipelines
with ``strength < 1`` skip the first timesteps, which their ``get_timesteps`` (called right after
``set_timesteps``, before anything is computed) cuts off; the context then starts the call again at step 0
of the timesteps it returned (20 steps at strength 0.7 run 14, numbered 0-13), whatever the scheduler.
Both are host-side Python integers: reading the step costs no device sync, and the step is never inferred
from the timestep value. Whether the denoisers run with CFG is read from the pipeline at every access
(``do_classifier_free_guidance``), since a callback may change it within a call.

Several users (the executor, the profiler) share one context per pipeline; it is attached on first use and
detached when the last user releases it, restoring the scheduler's (and the pipeline's) own methods.

The call state is per thread (:class:`PerThread`): two threads that call one pipeline at once each run their
own call, with their own step index, as do the hooks' states. (The pipeline's scheduler is diffusers' and is
shared: only a scheduler whose ``step`` keeps no history across steps, such as DDIM or Euler, gives each
thread the images a call of its own would.)
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from types import FrameType

    from hgc_tune._typing import ControlNetPipeline

__all__ = [
    "PerThread",
    "RunContext",
    "StepListener",
    "attach_run_context",
    "calling_pipeline",
    "release_run_context",
    "run_context",
    "scheduler_calls",
]

StepListener = Callable[["RunContext"], None]

_ATTR = "_hgc_run_context"

T = TypeVar("T")


class PerThread(Generic[T]):
    """One value per thread, made by ``factory()`` at its first use in that thread.

    What one pipeline call keeps (its step index, the outputs a hook reuses) lives here, so two threads that
    call one pipeline at once do not step or reuse each other's state. A copy (``copy.deepcopy``, ``pickle``)
    holds a copy of the copying thread's value, as the thread that makes it sees it, and no other thread's.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self.factory = factory
        self._local = threading.local()

    def get(self) -> T:
        """This thread's value."""
        try:
            return self._local.value
        except AttributeError:
            value = self._local.value = self.factory()
            return value

    def set(self, value: T) -> None:
        """Replace this thread's value."""
        self._local.value = value

    def __reduce__(self) -> tuple:
        value = getattr(self._local, "value", None)
        return (type(self), (self.factory,), None if value is None else {"value": value})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local.value = state["value"]


@dataclass
class _CallState:
    step: int = 0
    num_steps: int = 0
    cfg: bool = False
    calls: int = 0
    scheduled_steps: int = 0
    skipped_steps: int = 0
    strength: float | None = None


class RunContext:
    """Step state of the current pipeline call (of the calling thread: each thread runs its own calls).

    Attributes:
        step: Index ``s`` of the current denoising step, in ``[0, num_steps)``.
        num_steps: Number of denoising steps the current call runs: ``len(scheduler.timesteps)``, less the
            timesteps an img2img or inpainting call skips (``strength < 1``).
        scheduled_steps: ``len(scheduler.timesteps)`` of the current call, skipped timesteps included.
        skipped_steps: The timesteps the current call skips (img2img, inpainting with ``strength < 1``); 0
            for text2img.
        strength: The ``strength`` of the current img2img or inpainting call; ``None`` for text2img.
        cfg: Whether the denoisers are now called with classifier-free guidance (batch = [uncond, cond]).
            Read from the pipeline at every access, since a callback may switch guidance off within a call
            (diffusers' dynamic CFG); for a context driven by hand, the value given to :meth:`begin`.
        calls: Number of pipeline calls begun since attachment (in the calling thread).
        copy_cached_outputs: Whether hooks that keep a module's output for later steps must keep a copy.
            Set by :func:`~hgc_tune.runtime.compile_regions` when the compiled regions replay CUDA graphs:
            a replay overwrites the memory of the previous replay's outputs, so an output kept across
            steps would be silently replaced (or, with CUDA graph trees, raise when read).
    """

    def __init__(self, cfg_source: Callable[[], bool] | None = None) -> None:
        self._states: PerThread[_CallState] = PerThread(_CallState)
        self._cfg_source = cfg_source
        self._begin_listeners: list[StepListener] = []
        self.copy_cached_outputs = False

    @property
    def _state(self) -> _CallState:
        return self._states.get()

    @property
    def step(self) -> int:
        return self._state.step

    @property
    def num_steps(self) -> int:
        return self._state.num_steps

    @property
    def scheduled_steps(self) -> int:
        return self._state.scheduled_steps

    @property
    def skipped_steps(self) -> int:
        return self._state.skipped_steps

    @property
    def strength(self) -> float | None:
        return self._state.strength

    @property
    def cfg(self) -> bool:
        if self._cfg_source is not None:
            return self._cfg_source()
        return self._state.cfg

    @property
    def calls(self) -> int:
        return self._state.calls

    def begin(self, num_steps: int, cfg: bool) -> None:
        """Start a new call: step 0 of ``num_steps``. Called by the scheduler hook, or by hand when the
        denoiser is driven outside a pipeline."""
        self._states.set(
            _CallState(
                step=0,
                num_steps=int(num_steps),
                cfg=bool(cfg),
                calls=self._state.calls + 1,
                scheduled_steps=int(num_steps),
            )
        )
        for listener in list(self._begin_listeners):
            listener(self)

    def skip(self, skipped_steps: int, strength: float | None = None) -> None:
        """The current call skips its first ``skipped_steps`` timesteps (img2img and inpainting with
        ``strength < 1``): it starts again at step 0 of the ``scheduled_steps - skipped_steps`` it runs, and
        the begin listeners are called again with that count (the call is not counted twice)."""
        state = self._state
        skipped = max(0, min(int(skipped_steps), state.scheduled_steps))
        state.skipped_steps = skipped
        state.num_steps = state.scheduled_steps - skipped
        state.step = 0
        state.strength = None if strength is None else float(strength)
        for listener in list(self._begin_listeners):
            listener(self)

    def advance(self) -> None:
        """Move to the next denoising step."""
        self._state.step += 1

    def add_begin_listener(self, listener: StepListener) -> None:
        """Call ``listener(context)`` at the start of every call (hooks reset their state there)."""
        self._begin_listeners.append(listener)

    def remove_begin_listener(self, listener: StepListener) -> None:
        if listener in self._begin_listeners:
            self._begin_listeners.remove(listener)

    def __repr__(self) -> str:
        s = self._state
        skipped = f", skipped_steps={s.skipped_steps}" if s.skipped_steps else ""
        return f"RunContext(step={s.step}, num_steps={s.num_steps}{skipped}, cfg={self.cfg}, calls={s.calls})"


def calling_pipeline() -> Any | None:
    """The diffusers pipeline whose ``__call__`` is running (the innermost on the stack), or ``None``.

    A pipeline is not a module and has no hooks of its own, and several pipelines can share one U-Net,
    ControlNet and scheduler (``from_pipe``, ``Pipeline(**other.components)``): the caller's frame is the only
    record of which one is running. Only ``__call__`` frames are inspected; a denoiser driven by hand, outside
    any pipeline, gives ``None``.
    """
    pipeline_class = _pipeline_class()
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "__call__":
            owner = frame.f_locals.get("self")
            if isinstance(owner, pipeline_class):
                return owner
        frame = frame.f_back
    return None


@functools.cache
def _pipeline_class() -> type:
    # Imported on first use (diffusers' pipelines pull in transformers), then cached: it runs per forward.
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

    return DiffusionPipeline


def _pipeline_cfg(pipe: ControlNetPipeline) -> bool:
    # diffusers' pipelines expose their guidance state as `do_classifier_free_guidance` (unset before a call).
    return bool(getattr(pipe, "do_classifier_free_guidance", False))


class _PipelineCfg:
    """``cfg_source`` of a pipeline's context: an object, not a closure, so it is copied with the pipeline."""

    def __init__(self, pipe: ControlNetPipeline) -> None:
        self.pipe = pipe

    def __call__(self) -> bool:
        return _pipeline_cfg(self.pipe)


class _SchedulerMethod:
    """A scheduler's ``set_timesteps`` or ``step`` that then begins or advances the run context.

    The wrapped method is kept as the instance attribute it replaced or, when there was none, looked up on
    the class at each call: a bound method would be pickled as a lookup on the scheduler, which finds this
    wrapper again. Objects rather than closures, so ``copy.deepcopy`` and ``pickle`` copy them, and their
    binding, with the scheduler.
    """

    def __init__(self, binding: _SchedulerBinding, name: str, saved: Callable[..., Any] | None) -> None:
        self.binding = binding
        self.name = name
        self.saved = saved
        # Signature checks (diffusers asks whether `set_timesteps` takes `sigmas`) see the wrapped method.
        functools.update_wrapper(self, saved if saved is not None else getattr(type(binding.scheduler), name))

    def __call__(self, *args, **kwargs) -> Any:
        binding = self.binding
        if self.saved is not None:
            out = self.saved(*args, **kwargs)
        else:
            out = getattr(type(binding.scheduler), self.name)(binding.scheduler, *args, **kwargs)
        if self.name == "set_timesteps":
            binding.context.begin(len(binding.scheduler.timesteps), _pipeline_cfg(binding.pipe))
        else:
            binding.context.advance()
        return out


class _GetTimesteps:
    """An img2img or inpainting pipeline's ``get_timesteps(num_inference_steps, strength, device)`` that then
    tells the run context how many of the scheduled timesteps the call skips (``strength < 1``).

    Like :class:`_SchedulerMethod`, an object that keeps the instance attribute it replaced, or looks the
    method up on the class at each call.
    """

    def __init__(self, binding: _SchedulerBinding, saved: Callable[..., Any] | None) -> None:
        self.binding = binding
        self.saved = saved
        # Any: get_timesteps is no member of ControlNetPipeline (img2img and inpainting pipelines have it).
        pipe_class: Any = type(binding.pipe)
        functools.update_wrapper(self, saved if saved is not None else pipe_class.get_timesteps)

    def __call__(self, *args, **kwargs) -> Any:
        binding = self.binding
        if self.saved is not None:
            out = self.saved(*args, **kwargs)
        else:
            pipe_class: Any = type(binding.pipe)
            out = pipe_class.get_timesteps(binding.pipe, *args, **kwargs)
        strength = kwargs["strength"] if "strength" in kwargs else args[1] if len(args) > 1 else None
        context = binding.context
        context.skip(context.scheduled_steps - len(out[0]), strength)
        return out


class _SchedulerBinding:
    """Wraps one scheduler instance's ``set_timesteps`` and ``step`` and, for an img2img or inpainting
    pipeline, the pipeline's ``get_timesteps`` (instance attributes, not the class)."""

    def __init__(self, pipe: ControlNetPipeline, context: RunContext) -> None:
        self.pipe = pipe
        self.scheduler = pipe.scheduler
        self.context = context
        self.users = 0
        had = vars(self.scheduler)
        self._saved = {name: had[name] for name in ("set_timesteps", "step") if name in had}
        for name in ("set_timesteps", "step"):
            setattr(self.scheduler, name, _SchedulerMethod(self, name, self._saved.get(name)))
        self._pipe_saved: dict[str, Any] = {}
        if callable(getattr(type(pipe), "get_timesteps", None)):
            self._pipe_saved = {name: vars(pipe)[name] for name in ("get_timesteps",) if name in vars(pipe)}
            # By name: not a member of ControlNetPipeline (text2img pipelines have none).
            wrapper = _GetTimesteps(self, self._pipe_saved.get("get_timesteps"))
            setattr(pipe, "get_timesteps", wrapper)  # noqa: B010

    def unbind(self) -> None:
        for name in ("set_timesteps", "step"):
            if name in self._saved:
                setattr(self.scheduler, name, self._saved[name])
            else:
                vars(self.scheduler).pop(name, None)
        if isinstance(vars(self.pipe).get("get_timesteps"), _GetTimesteps):
            if "get_timesteps" in self._pipe_saved:
                setattr(self.pipe, "get_timesteps", self._pipe_saved["get_timesteps"])  # noqa: B010
            else:
                vars(self.pipe).pop("get_timesteps", None)


def run_context(pipe: ControlNetPipeline) -> RunContext:
    """The run context attached to ``pipe``; raises ``RuntimeError`` if none is attached."""
    binding = getattr(pipe, _ATTR, None)
    if binding is None:
        raise RuntimeError(
            "no run context is attached to this pipeline; use hgc_tune.runtime.attach_run_context"
        )
    if binding.scheduler is not pipe.scheduler:
        raise RuntimeError(
            "the pipeline's scheduler was replaced after hgc-tune attached to it; remove the policy (or "
            "profiler) and apply it again after changing the scheduler."
        )
    return binding.context


def attach_run_context(pipe: ControlNetPipeline) -> RunContext:
    """Attach (or share) the run context of ``pipe``; pair every call with :func:`release_run_context`."""
    binding = getattr(pipe, _ATTR, None)
    if binding is None:
        binding = _SchedulerBinding(pipe, RunContext(cfg_source=_PipelineCfg(pipe)))
        setattr(pipe, _ATTR, binding)
    binding.users += 1
    return binding.context


def release_run_context(pipe: ControlNetPipeline) -> None:
    """Release one use of the run context; the last release restores the scheduler's methods."""
    binding = getattr(pipe, _ATTR, None)
    if binding is None:
        return
    binding.users -= 1
    if binding.users <= 0:
        binding.unbind()
        delattr(pipe, _ATTR)


def scheduler_calls(scheduler: Any, num_inference_steps: int) -> int | None:
    """How many times a pipeline calls its denoisers for ``num_inference_steps`` with ``scheduler``: the
    timesteps a fresh scheduler of its class and config sets (``None`` if that cannot be told).

    A first-order scheduler (UniPC, DDIM, Euler, DPM-Solver) sets one timestep per inference step. Heun and
    DPM2 evaluate the denoiser twice per step (``2 n - 1`` timesteps); PNDM's warm-up adds calls (Runge-Kutta
    steps, or one repeated timestep with ``skip_prk_steps``). A fresh scheduler is asked, so the pipeline's
    own is left as it is.
    """
    try:
        fresh = type(scheduler).from_config(scheduler.config)
        fresh.set_timesteps(int(num_inference_steps), device="cpu")
        return len(fresh.timesteps)
    except Exception:  # noqa: BLE001 - a scheduler that cannot be asked is checked per call instead
        return None
