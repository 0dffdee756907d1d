"""Step-to-step similarity and drift measures, and the recomputation of cross-attention maps.

Two layers. The building blocks (:func:`l1_norm`, :func:`l2_norm`, :func:`l1_distance`, :func:`flat_dot`,
:func:`js_row_sum`) each reduce whole tensors (all batch entries; with CFG both the uncond and the cond
half) to one 0-d float32 tensor on the tensors' device, in one or a few kernels and without a host
synchronisation. The measures (:func:`cosine_similarity`, :func:`relative_l1`, :func:`js_divergence`) are
the ratios of those blocks; the profiler records the blocks per step and takes the same ratios on the host,
once per pipeline call, which saves a division kernel per measure in every hook.

:func:`sample_sums` and :func:`sample_js_row_sums` take the same sums per sample of a batched call: a batch
of ``B`` samples is laid out ``[uncond_1..B, cond_1..B]`` under classifier-free guidance (``[x_1..B]``
without), so sample ``i``'s rows are ``i, i + B, ...``; each gives a ``[B]`` vector whose entry ``i`` is
what the whole-tensor block gives for sample ``i`` generated alone (up to float summation order).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "TINY",
    "attention_probs",
    "cosine_similarity",
    "cross_attention_map",
    "flat_dot",
    "js_divergence",
    "js_row_sum",
    "l1_distance",
    "l1_norm",
    "l2_norm",
    "relative_l1",
    "sample_js_row_sums",
    "sample_sums",
]

# Guards the denominators: a previous output that is exactly zero gives a finite (huge) relative change
# instead of a division by zero, and 0 / 0 gives 0.
TINY = torch.finfo(torch.float32).tiny
# The largest float32 below 1: atanh(d) and log(1 - d^2) stay finite.
_BELOW_ONE = 1.0 - 2.0**-24


def l1_norm(tensor: torch.Tensor) -> torch.Tensor:
    """``||x||_1`` of a tensor taken as a flat vector (0-d float32)."""
    return torch.linalg.vector_norm(tensor.float(), ord=1)


def l2_norm(tensor: torch.Tensor) -> torch.Tensor:
    """``||x||_2`` of a tensor taken as a flat vector (0-d float32)."""
    return torch.linalg.vector_norm(tensor.float())


def l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a - b||_1`` of two same-shaped tensors taken as flat vectors (0-d float32)."""
    return torch.linalg.vector_norm(a.float() - b.float(), ord=1)


def flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a, b>`` of two same-shaped tensors taken as flat vectors (0-d float32)."""
    return torch.dot(a.reshape(-1).float(), b.reshape(-1).float())


def js_row_sum(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``sum over rows of 2 JS(p_row, q_row)``: twice the Jensen-Shannon divergence of every distribution
    along the last axis, summed (0-d float32). :func:`js_divergence` divides by ``2 * rows``.

    With ``s = p + q`` and ``d = (p - q) / s``, ``2 JS = KL(p || m) + KL(q || m) = sum (s / 2) g(d)`` where
    ``g(d) = (1 + d) log(1 + d) + (1 - d) log(1 - d) = 2 d atanh(d) + log(1 - d^2) >= 0``. Consecutive
    denoising steps have nearly equal maps (``d ~ 0``, ``g ~ d^2``): the textbook form
    ``sum p (log p - log m)`` cancels to first order there and float32 loses the result (off by 10x at
    JS ~ 1e-9), while this form stays within about 1e-6 relative. ``|d|`` is kept below 1 by one float32
    ulp, so a key whose probability is exactly 0 on one side (``g(1) = 2 log 2``) is off by about 1e-6 too.
    """
    p, q = p.float(), q.float()
    total = p + q
    d = ((p - q) / total.clamp_min(TINY)).clamp(-_BELOW_ONE, _BELOW_ONE)  # d = 0 where p = q = 0
    g = torch.add(torch.log1p(-(d * d)), d * torch.atanh(d), alpha=2.0)
    return 0.5 * flat_dot(total, g)


def sample_sums(tensor: torch.Tensor, samples: int) -> torch.Tensor:
    """Per-sample sums ``[samples]`` (float32) of a batched tensor whose dim 0 holds ``k`` consecutive groups
    of ``samples`` rows (``k = 2`` under classifier-free guidance: ``[uncond_1..B, cond_1..B]``): entry ``i``
    sums every element of rows ``i, i + B, ...``."""
    rows = tensor.shape[0] if tensor.ndim else 1
    if samples < 1 or rows % samples:
        raise ValueError(f"a batch of {rows} rows cannot hold {samples} samples in equal groups.")
    return tensor.float().reshape(rows // samples, samples, -1).sum(dim=(0, 2))


def sample_js_row_sums(p: torch.Tensor, q: torch.Tensor, samples: int) -> torch.Tensor:
    """:func:`js_row_sum` per sample (``[samples]``; see :func:`sample_sums` for the batch layout)."""
    p, q = p.float(), q.float()
    total = p + q
    d = ((p - q) / total.clamp_min(TINY)).clamp(-_BELOW_ONE, _BELOW_ONE)
    g = torch.add(torch.log1p(-(d * d)), d * torch.atanh(d), alpha=2.0)
    return 0.5 * sample_sums(total * g, samples)


def cosine_similarity(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two tensors taken as flat vectors: ``<a, b> / (||a||_2 ||b||_2)``.

    Args:
        current: The output at step ``s``.
        previous: The output at step ``s - 1`` (same shape).

    Returns:
        A 0-d float32 tensor in ``[-1, 1]``.
    """
    norms = l2_norm(current) * l2_norm(previous)
    return flat_dot(current, previous) / norms.clamp_min(TINY)


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Relative L1 change ``||x_s - x_{s-1}||_1 / ||x_{s-1}||_1`` of two tensors taken as flat vectors.

    Args:
        current: ``x_s``.
        previous: ``x_{s-1}`` (same shape).

    Returns:
        A 0-d float32 tensor, ``>= 0``.
    """
    return l1_distance(current, previous) / l1_norm(previous).clamp_min(TINY)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log, so in ``[0, ln 2]``) between the distributions along the last
    axis, averaged over every other axis (e.g. over queries and batch of ``[batch, queries, keys]`` maps).

    ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``. This is the square of
    :func:`scipy.spatial.distance.jensenshannon` (which returns the distance, the square root). See
    :func:`js_row_sum` for the numerically stable evaluation.

    Args:
        p: Probabilities, rows summing to 1 along the last axis.
        q: Same shape as ``p``.

    Returns:
        A 0-d float32 tensor.
    """
    rows = p.numel() // max(p.shape[-1], 1) if p.ndim else 1
    # Rounding can leave a tiny negative value for identical rows; the divergence itself is never negative.
    return (js_row_sum(p, q) / (2 * rows)).clamp_min(0.0)


def attention_probs(
    attn: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Recompute the attention probabilities of a diffusers ``Attention`` module for one call.

    Mirrors the query/key path of diffusers' ``AttnProcessor2_0`` (group norm, cross norm, ``to_q``/``to_k``,
    head split, ``norm_q``/``norm_k``, additive or boolean mask) and evaluates
    ``softmax(q k^T * attn.scale)`` explicitly; the module's own output is untouched. For cross-attention
    this is cheap: there are only as many keys as text tokens (77 for CLIP).

    Args:
        attn: A ``diffusers.models.attention_processor.Attention`` module.
        hidden_states: The module's input ``[batch, queries, channels]`` (or ``[batch, channels, h, w]``).
        encoder_hidden_states: The context ``[batch, keys, context_channels]``; ``None`` means
            self-attention.
        attention_mask: The ``attention_mask`` the module was called with, if any.

    Returns:
        Float32 probabilities ``[batch, heads, queries, keys]``.
    """
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    batch = hidden_states.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    if encoder_hidden_states is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = attn.to_q(hidden_states)
    key = attn.to_k(context)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
    if attention_mask is not None:
        num_keys = key.shape[-2]
        mask = attn.prepare_attention_mask(attention_mask, num_keys, batch)
        mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    return scores.softmax(dim=-1)


def cross_attention_map(
    attn: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The head-averaged attention map ``[batch, queries, keys]`` of one call (rows sum to 1).

    See :func:`attention_probs` for the arguments.
    """
    return attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask).mean(dim=1)
