"""Per-module MACs of one call of a module, in both conventions, from one fvcore trace.

One trace serves both conventions: the complete-only products (SDPA, baddbmm) are recorded under their own
operator names, and the paper count of a module is its complete count minus those operators. Nested modules
therefore sum the same way in both conventions (fvcore's ``owner`` ancestor mode attributes every operator to
the module that ran it and to all of that module's parents).

Operators fvcore has no handle for are skipped by its count. They are recorded per module (fvcore's
``unsupported_ops``) and go into the MAC table, rather than into a log line nobody keeps; see
:func:`affected_conventions` for what a skipped operator leaves out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from fvcore.nn import FlopCountAnalysis

from hgc_tune.errors import HgcTuneError
from hgc_tune.macs._sdpa import COMPLETE_ONLY_OPS, baddbmm_flop_jit, sdpa_flop_jit

__all__ = ["CONVENTIONS", "affected_conventions", "count_module_macs", "trace_module_macs"]

CONVENTIONS: tuple[str, ...] = ("paper", "complete")

# Operators that appear in SD / ControlNet / CLIP / VAE traces and hold no multiply-accumulate (elementwise
# arithmetic, activations, reductions, copies): declared zero-MAC, so they change no count and are not
# reported as skipped. Any other operator without a handle is recorded as unsupported, which is the signal
# that a model runs a product nobody counts.
_ZERO_MAC_OPS: tuple[str, ...] = (
    "aten::abs",
    "aten::add",
    "aten::add_",
    "aten::argmax",
    "aten::clone",
    "aten::cos",
    "aten::cumsum",
    "aten::div",
    "aten::div_",
    "aten::embedding",
    "aten::erf",
    "aten::exp",
    "aten::fill_",
    "aten::gelu",
    "aten::le",
    "aten::log",
    "aten::lt",
    "aten::mean",
    "aten::mul",
    "aten::mul_",
    "aten::ne",
    "aten::neg",
    "aten::pow",
    "aten::repeat",
    "aten::repeat_interleave",
    "aten::rsqrt",
    "aten::rsub",
    "aten::sigmoid",
    "aten::silu",
    "aten::sin",
    "aten::softmax",
    "aten::sqrt",
    "aten::sub",
    "aten::sum",
    "aten::tanh",
    "aten::tril",
    "aten::triu",
    "aten::where",
)


def affected_conventions(op: str) -> tuple[str, ...]:
    """The conventions whose count misses operator ``op`` when fvcore skips it (has no handle for it).

    ``complete`` is ``paper`` plus the attention products (SDPA, baddbmm), so a skipped attention product is
    missing from ``complete`` only (``paper`` leaves it out by definition), and any other skipped operator
    from both.

    Example:
        >>> affected_conventions("aten::scaled_dot_product_attention")
        ('complete',)
        >>> affected_conventions("aten::cumprod")
        ('paper', 'complete')
    """
    name = op.split("::", 1)[-1]
    return ("complete",) if name in COMPLETE_ONLY_OPS else CONVENTIONS


class _Trace(NamedTuple):
    macs: dict[str, dict[str, int]]
    # Module key -> operator -> how often fvcore met it without a handle (only modules with any).
    unsupported: dict[str, dict[str, int]]
    outputs: Any


class _Traced(torch.nn.Module):
    """Holds the traced module under ``name`` so fvcore's module keys come out as ``name.dotted.path``.

    jit tracing takes positional tensors only; ``call`` adapts them to the module's real signature (keyword
    arguments, ``return_dict=False``, a method such as ``vae.decode``).
    """

    def __init__(self, name: str, module: torch.nn.Module, call: Callable[..., Any]) -> None:
        super().__init__()
        self.add_module(name, module)
        self._hgc_name = name
        self._hgc_call = call
        self.hgc_outputs: Any = None

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.hgc_outputs = self._hgc_call(getattr(self, self._hgc_name), *inputs)
        return tuple(_flatten(self.hgc_outputs))


def _flatten(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _flatten(item)]
    return []


def _default_call(module: torch.nn.Module, *inputs: torch.Tensor) -> Any:
    return module(*inputs)


def trace_module_macs(
    module: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    name: str,
    call: Callable[..., Any] | None = None,
) -> _Trace:
    """Like :func:`count_module_macs`, and also return the operators fvcore skipped, per module key (only
    modules that ran any), and what ``call`` returned during the trace."""
    if not isinstance(name, str) or not name.isidentifier():
        raise HgcTuneError(f"`name` must be a Python identifier (no dots), but got name={name!r}.")
    wrapper = _Traced(name, module, call or _default_call)
    analysis = FlopCountAnalysis(wrapper, tuple(inputs))
    analysis.set_op_handle(**dict.fromkeys(_ZERO_MAC_OPS))
    analysis.set_op_handle(
        "aten::scaled_dot_product_attention", sdpa_flop_jit, "aten::baddbmm", baddbmm_flop_jit
    )
    # The traced call runs one path of the model (e.g. the VAE's decoder, not its encoder): modules it does
    # not reach are expected, and warnings from the model code under tracing say nothing about MACs.
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    # Skipped operators are recorded below (and shown by `hgc-tune macs`), not logged.
    analysis.unsupported_ops_warnings(False)
    with torch.no_grad():
        by_module = analysis.by_module_and_operator()
    table: dict[str, dict[str, int]] = {}
    unsupported: dict[str, dict[str, int]] = {}
    for key, ops in by_module.items():
        # The root ("") is the wrapper: it counts everything `call` ran, including work done outside the
        # module's own `__call__` (e.g. in `vae.decode`), so it stands for the module under `name`.
        if key == name:
            continue
        complete = int(sum(ops.values()))
        extra = int(sum(ops.get(op, 0) for op in COMPLETE_ONLY_OPS))
        table[key or name] = {"paper": complete - extra, "complete": complete}
        skipped = analysis.unsupported_ops(key)
        if skipped:
            unsupported[key or name] = {op: int(n) for op, n in sorted(skipped.items())}
    return _Trace(table, unsupported, wrapper.hgc_outputs)


def count_module_macs(
    module: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    name: str,
    call: Callable[..., Any] | None = None,
) -> dict[str, dict[str, int]]:
    """Count the MACs of one call of ``module`` and of each of its submodules, in both conventions.

    The module runs once under ``torch.no_grad()`` while fvcore traces it (the MACs follow from the traced
    shapes, the values do not matter). ``paper`` is fvcore's default count: one multiply-accumulate = 1,
    convolutions, linear layers, matmul/bmm/einsum, and its norm and upsampling estimates;
    ``scaled_dot_product_attention`` is not counted. ``complete`` adds the attention products QKᵀ and AV
    (:func:`~hgc_tune.macs._sdpa.sdpa_macs`, and ``baddbmm`` for the classic attention processor).

    Args:
        module: The module to trace. It is not modified.
        inputs: Positional tensor inputs of the call.
        name: The key of the module itself; submodules are keyed ``name.dotted.path`` like fvcore's
            ``by_module()`` (every module fvcore reports, including those the call does not reach, at 0).
        call: ``call(module, *inputs)`` runs the module when its signature needs more than positional
            tensors; it defaults to ``module(*inputs)``. Work it does outside the module's ``__call__`` is
            counted in the ``name`` entry only.

    Returns:
        Module key -> ``{"paper": int, "complete": int}``. Operators fvcore skips are not in it (see
        :func:`count_pipeline_macs`, whose table records them).

    Example:
        >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        >>> count_module_macs(conv, (torch.zeros(1, 3, 16, 16),), name="conv")
        {'conv': {'paper': 55296, 'complete': 55296}}
    """
    return trace_module_macs(module, inputs, name=name, call=call).macs
