"""The MACs of ``scaled_dot_product_attention``, which fvcore's default count leaves out.

fvcore counts matrix products it has a handle for (``aten::linear``, ``aten::matmul``, ``aten::bmm``, ...)
but has none for ``aten::scaled_dot_product_attention`` (nor ``aten::baddbmm``, which diffusers' classic
attention processor uses for QKᵀ), so the attention products of every modern attention implementation are
missing from its count. The ``complete`` convention adds them back with the formulas below.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hgc_tune.errors import HgcTuneError

__all__ = ["sdpa_macs", "baddbmm_macs", "SDPA_OP", "BADDBMM_OP", "COMPLETE_ONLY_OPS"]

# Operator names under which the complete-only products are recorded in fvcore's per-operator counters; the
# paper convention is "everything except these".
SDPA_OP = "scaled_dot_product_attention"
BADDBMM_OP = "baddbmm"
COMPLETE_ONLY_OPS: tuple[str, ...] = (SDPA_OP, BADDBMM_OP)


def _shape(value: Sequence[int], name: str) -> tuple[int, ...]:
    shape = tuple(int(v) for v in value)
    if len(shape) < 2 or any(v < 0 for v in shape):
        raise HgcTuneError(
            f"`{name}` must be a shape of rank >= 2 with non-negative sizes, but got {name}={tuple(value)}."
        )
    return shape


def sdpa_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """Multiply-accumulates of ``F.scaled_dot_product_attention(q, k, v)``: QKᵀ plus AV.

    For ``q`` of shape ``[B, H, Lq, d]`` and ``k``/``v`` of shapes ``[B, H, Lk, d]``/``[B, H, Lk, dv]`` this
    is ``B·H·Lq·Lk·d + B·H·Lq·Lk·dv``. Leading dimensions are taken from ``q`` (they are the output's; with
    grouped-query attention ``k``/``v`` have fewer heads but every query head still does its products).
    The softmax and the scaling are elementwise and hold no MACs.

    Args:
        q_shape: Shape of the queries, ``[..., Lq, d]``.
        k_shape: Shape of the keys, ``[..., Lk, d]``.
        v_shape: Shape of the values, ``[..., Lk, dv]``.

    Returns:
        The number of multiply-accumulates.

    Example:
        >>> sdpa_macs((2, 8, 4096, 40), (2, 8, 77, 40), (2, 8, 77, 40))
        403701760
    """
    q = _shape(q_shape, "q_shape")
    k = _shape(k_shape, "k_shape")
    v = _shape(v_shape, "v_shape")
    if k[-1] != q[-1]:
        raise HgcTuneError(
            f"the last dimension of `k_shape` must equal that of `q_shape` ({q[-1]}), but got k_shape={k}."
        )
    if v[-2] != k[-2]:
        raise HgcTuneError(f"`v_shape` must have as many tokens as `k_shape` ({k[-2]}), but got v_shape={v}.")
    batch = math.prod(q[:-2])
    lq, d = q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    return batch * lq * lk * d + batch * lq * lk * dv


def baddbmm_macs(batch1_shape: Sequence[int], batch2_shape: Sequence[int]) -> int:
    """Multiply-accumulates of ``torch.baddbmm(input, batch1, batch2)``: ``B·n·m·p``.

    ``batch1`` is ``[B, n, m]`` and ``batch2`` is ``[B, m, p]``.

    The added ``input`` (and its ``beta``/``alpha`` scaling) is elementwise and holds no MACs.
    """
    a = _shape(batch1_shape, "batch1_shape")
    b = _shape(batch2_shape, "batch2_shape")
    return math.prod(a[:-1]) * a[-1] * b[-1]


def _jit_shape(value: Any, op: str) -> list[int]:
    shape = value.type().sizes() if value.isCompleteTensor() else None
    if shape is None:
        raise HgcTuneError(f"cannot count the MACs of {op}: the trace holds no shape for one of its inputs.")
    return shape


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """fvcore op handle for ``aten::scaled_dot_product_attention`` (inputs: q, k, v, ...)."""
    q, k, v = (_jit_shape(value, SDPA_OP) for value in inputs[:3])
    return Counter({SDPA_OP: sdpa_macs(q, k, v)})


def baddbmm_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """fvcore op handle for ``aten::baddbmm`` (inputs: input, batch1, batch2, beta, alpha)."""
    a, b = (_jit_shape(value, BADDBMM_OP) for value in inputs[1:3])
    return Counter({BADDBMM_OP: baddbmm_macs(a, b)})
