"""The run context's per-thread call state, and how many denoiser calls a scheduler makes per call."""

from __future__ import annotations

import copy
import pickle
import threading

import diffusers
import pytest

from hgc_tune.models._loading import SCHEDULERS, make_scheduler
from hgc_tune.runtime import RunContext
from hgc_tune.runtime._context import PerThread, scheduler_calls


def test_each_thread_has_its_own_call_state():
    context = RunContext()
    context.begin(10, cfg=True)
    context.advance()
    seen = {}

    def other() -> None:
        seen["before"] = (context.step, context.num_steps, context.calls)
        context.begin(4, cfg=False)
        context.advance()
        context.advance()
        seen["after"] = (context.step, context.num_steps, context.cfg)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == {"before": (0, 0, 0), "after": (2, 4, False)}
    assert (context.step, context.num_steps, context.cfg, context.calls) == (1, 10, True, 1)


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda x: pickle.loads(pickle.dumps(x))])
def test_a_copy_holds_the_copying_threads_value_only(copier):
    values = PerThread(list)
    values.get().append(1)
    twin = copier(values)
    twin.get().append(2)
    assert twin.get() == [1, 2] and values.get() == [1]
    seen = []
    thread = threading.Thread(target=lambda: seen.append(copier(values).get()))
    thread.start()
    thread.join()
    assert seen == [[]]  # another thread's copy: that thread had no value
    assert copier(PerThread(list)).get() == []


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_denoiser_calls_per_call_of_the_cli_schedulers(name):
    """The first-order schedulers call the denoisers once per inference step; PNDM (SD1.5's own default)
    does not, which is why a policy refuses it."""
    scheduler = make_scheduler(name)
    expected = {"pndm": None}.get(name, 7)
    calls = scheduler_calls(scheduler, 7)
    if expected is None:
        assert calls is not None and calls != 7
    else:
        assert calls == 7
    assert not hasattr(scheduler, "timesteps") or scheduler.num_inference_steps is None  # left untouched


def test_heun_calls_the_denoisers_twice_per_step_but_the_last():
    scheduler = diffusers.HeunDiscreteScheduler.from_config(make_scheduler("unipc").config)
    assert scheduler_calls(scheduler, 6) == 11
