"""Observation hooks: per-step statistics of every cacheable module during full-compute generation.

The observer attaches plain ``register_forward_hook`` handles (it never changes what a module computes) and
reads the step index from the pipeline's run context. Per module it keeps only the previous step's output
(and attention map), so memory does not grow with the number of steps; the per-step values stay on the
device as 0-d tensors until the call ends, so hooks add no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hgc_tune.errors import ProfileError
from hgc_tune.models._blocks import is_whole_model_key, module_groups, module_layout
from hgc_tune.profile._metrics import TINY, cross_attention_map, sample_js_row_sums, sample_sums
from hgc_tune.runtime import RunContext

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline

__all__ = ["BLOCK_METRICS", "ATTENTION_METRICS", "ProfileObserver"]

# Metrics recorded for blocks (and the whole ControlNet) and for cross-attention modules.
BLOCK_METRICS: tuple[str, ...] = ("cos", "rel_l1")
ATTENTION_METRICS: tuple[str, ...] = ("js", "map_rel_l1", "out_rel_l1")

# A hook records per step one stacked [quantities, samples] tensor of device-side quantities (per sample of
# the call: see hgc_tune.profile._metrics.sample_sums), from which collect() finishes the metrics on the host.
# Blocks (output x):
#   <x_s, x_{s-1}>, ||x_s||_2, ||x_{s-1}||_2, ||x_s - x_{s-1}||_1, ||x_{s-1}||_1;
# cross-attention (head-averaged map A, output y):
#   sum over rows of 2 JS(A_s, A_{s-1}), ||A_s - A_{s-1}||_1, ||y_s - y_{s-1}||_1, ||y_{s-1}||_1.


# Extractors: a module's output -> a private float32 copy of what is measured (a copy, because a later
# in-place update of the output, or a CUDA-graph replay reusing its buffer, must not change the reference).


def _main_output(output: Any) -> torch.Tensor:
    # Down blocks return (hidden_states, res_samples): the hidden states are the block's main output, the
    # input of the next block; the residuals are slices along the way.
    main = output[0] if isinstance(output, tuple) else output
    return main.detach().to(torch.float32, copy=True)


def _whole_output(module: torch.nn.Module) -> Callable[[Any], torch.Tensor]:
    # A whole model (the ControlNet) outputs what its layout names (all down residuals, the mid residual),
    # measured together, row by row of the batch.
    layout = module_layout(module)

    def extract(output: Any) -> torch.Tensor:
        # torch.cat already copies.
        tensors = layout.output_tensors(output)
        return torch.cat([t.detach().reshape(t.shape[0], -1).float() for t in tensors], dim=1)

    return extract


class _ModuleState:
    """The previous step's output (and attention map) of one module, with the norms computed when it was
    current, so each step computes them once instead of twice."""

    __slots__ = ("step", "output", "l1", "l2", "attention_map")

    def __init__(self) -> None:
        self.step = -1
        self.output: torch.Tensor | None = None
        self.l1: torch.Tensor | None = None
        self.l2: torch.Tensor | None = None
        self.attention_map: torch.Tensor | None = None

    def has_previous(self, step: int) -> bool:
        return self.output is not None and self.step == step - 1


def _kept(value: torch.Tensor | None, what: str) -> torch.Tensor:
    """What a module state kept of the previous step, once ``has_previous`` said there is one (the output
    and its norms and attention map are kept together)."""
    if value is None:
        raise ProfileError(f"the observer kept the previous step's output but no {what} with it.")
    return value


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return numerator / np.maximum(denominator, TINY)


class ProfileObserver:
    """Records, per pipeline call, every module's statistics against its output at the previous step.

    Step 0 has no previous step, so its values are NaN. A call generates :attr:`samples_per_call` samples
    (set it before the call); with CFG the batch is ``[uncond_1..B, cond_1..B]`` and each statistic is taken
    per sample over its uncond and cond rows, as a call of that sample alone would take it over its batch.

    Args:
        pipe: The pipeline; its run context must be attached (``hgc_tune.runtime.attach_run_context``).
        context: That run context.
    """

    def __init__(self, pipe: ControlNetPipeline, context: RunContext) -> None:
        self.pipe = pipe
        self.context = context
        self.blocks, self.attentions = module_groups(pipe)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._states: dict[str, _ModuleState] = {}
        # module key -> per step, the stacked raw quantities (see the comment on the metrics above) or None
        self._raw: dict[str, list[torch.Tensor | None]] = {}
        # attention key -> number of query rows of one sample's map (its rows x queries), known without a sync
        self._rows: dict[str, int] = {}
        self._num_steps = 0
        self.samples_per_call = 1
        self._attached = False

    @property
    def series_keys(self) -> list[tuple[str, str]]:
        """Every ``(metric, module_key)`` pair the observer records, blocks first."""
        pairs = [(m, k) for k in self.blocks for m in BLOCK_METRICS]
        return pairs + [(m, k) for k in self.attentions for m in ATTENTION_METRICS]

    def attach(self) -> None:
        """Register the hooks (exception-safe: a failure removes the ones already registered)."""
        if self._attached:
            raise RuntimeError("the profile observer is already attached")
        try:
            for key, module in self.blocks.items():
                # a whole ControlNet (`controlnet`, or `controlnet.nets.<i>` of several) returns its residuals
                extract = _whole_output(module) if is_whole_model_key(key) else _main_output
                self._handles.append(module.register_forward_hook(self._block_hook(key, extract)))
            for key, module in self.attentions.items():
                hook = self._attention_hook(key)
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
            self.context.add_begin_listener(self._begin)
            self._attached = True
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Remove every hook and the begin listener; idempotent."""
        while self._handles:
            self._handles.pop().remove()
        self.context.remove_begin_listener(self._begin)
        self._attached = False
        self._states.clear()

    def _begin(self, context: RunContext) -> None:
        self._num_steps = context.num_steps
        self._states = {key: _ModuleState() for key in [*self.blocks, *self.attentions]}
        self._raw = {key: [None] * self._num_steps for key in [*self.blocks, *self.attentions]}
        self._rows = {}

    def collect(self) -> list[dict[tuple[str, str], np.ndarray]]:
        """The last call's per-step values, per sample of the call: ``(metric, module_key) -> float32
        [num_steps]``.

        NaN where a module did not run or had no previous step. One host synchronisation for all of them;
        the ratios are taken here, in float64.
        """
        entries = [
            (key, step, v)
            for key, series in self._raw.items()
            for step, v in enumerate(series)
            if v is not None
        ]
        samples = self.samples_per_call
        host = np.empty(0)
        if entries:
            host = torch.cat([v.reshape(-1) for _, _, v in entries]).cpu().numpy().astype(np.float64)
        out = [
            {pair: np.full(self._num_steps, np.nan) for pair in self.series_keys} if self._raw else {}
            for _ in range(samples)
        ]
        offset = 0
        for key, step, vector in entries:
            raw = host[offset : offset + vector.numel()].reshape(-1, samples)
            offset += vector.numel()
            for i, series in enumerate(out):
                if key in self.blocks:
                    dot, l2, l2_prev, diff_l1, l1_prev = raw[:, i]
                    series[("cos", key)][step] = _ratio(dot, l2 * l2_prev)
                    series[("rel_l1", key)][step] = _ratio(diff_l1, l1_prev)
                else:
                    js_sum, map_diff_l1, out_diff_l1, out_l1_prev = raw[:, i]
                    rows = self._rows[key]
                    # Rounding can leave a tiny negative sum for identical maps; the divergence is never
                    # negative.
                    series[("js", key)][step] = max(js_sum / (2 * rows), 0.0)
                    # Every map row is a distribution (sums to 1), so ||A_{s-1}||_1 is the number of rows.
                    series[("map_rel_l1", key)][step] = map_diff_l1 / rows
                    series[("out_rel_l1", key)][step] = _ratio(out_diff_l1, out_l1_prev)
        return [{pair: values.astype(np.float32) for pair, values in series.items()} for series in out]

    def _current_step(self) -> int | None:
        step = self.context.step
        # Outside a pipeline call (or past its end) there is nothing to attribute the call to.
        if not self._raw or not 0 <= step < self._num_steps:
            return None
        return step

    def _block_hook(self, key: str, extract: Callable[[Any], torch.Tensor]):
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            step = self._current_step()
            if step is None:
                return
            samples = self.samples_per_call
            with torch.no_grad():
                current = extract(output)
                l1, l2 = sample_sums(current.abs(), samples), sample_sums(current * current, samples).sqrt()
                state = self._states[key]
                if state.has_previous(step):
                    previous = _kept(state.output, "output")
                    raw = [
                        sample_sums(current * previous, samples),
                        l2,
                        _kept(state.l2, "L2 norm"),
                        sample_sums((current - previous).abs(), samples),
                        _kept(state.l1, "L1 norm"),
                    ]
                    self._raw[key][step] = torch.stack(raw)
                state.step, state.output, state.l1, state.l2 = step, current, l1, l2

        return hook

    def _attention_hook(self, key: str):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            step = self._current_step()
            if step is None:
                return
            hidden_states = args[0] if args else kwargs["hidden_states"]
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
            samples = self.samples_per_call
            with torch.no_grad():
                attention_map = cross_attention_map(module, hidden_states, context, mask)
                current = _main_output(output)
                l1 = sample_sums(current.abs(), samples)
                state = self._states[key]
                if state.has_previous(step):
                    previous_map = _kept(state.attention_map, "attention map")
                    raw = [
                        sample_js_row_sums(attention_map, previous_map, samples),
                        sample_sums((attention_map - previous_map).abs(), samples),
                        sample_sums((current - _kept(state.output, "output")).abs(), samples),
                        _kept(state.l1, "L1 norm"),
                    ]
                    self._raw[key][step] = torch.stack(raw)
                    self._rows[key] = attention_map.numel() // attention_map.shape[-1] // samples
                state.step, state.output, state.l1, state.attention_map = step, current, l1, attention_map

        return hook
