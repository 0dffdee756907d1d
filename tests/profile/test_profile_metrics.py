"""Similarity and drift measures on toy tensors, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from hgc_tune.profile._metrics import (
    attention_probs,
    cosine_similarity,
    cross_attention_map,
    flat_dot,
    js_divergence,
    js_row_sum,
    l1_distance,
    l1_norm,
    l2_norm,
    relative_l1,
)


def test_cosine_similarity_hand_values():
    assert cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(
        1 / math.sqrt(2)
    )
    assert cosine_similarity(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, -2.0, -3.0])).item() == (
        pytest.approx(-1.0)
    )
    # Whole tensors are flattened: [[1,0],[0,1]] . [[0,1],[1,0]] = 0.
    eye = torch.eye(2)
    assert cosine_similarity(eye, eye.flip(0)).item() == pytest.approx(0.0)
    # A batch of two: (1*3 + 2*4) / (sqrt(5) * 5) = 11 / (5 sqrt 5).
    a, b = torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [4.0]])
    assert cosine_similarity(a, b).item() == pytest.approx(11 / (5 * math.sqrt(5)))


def test_cosine_similarity_is_zero_dim_float32():
    value = cosine_similarity(torch.ones(2, 3, dtype=torch.float16), torch.ones(2, 3, dtype=torch.float16))
    assert value.shape == () and value.dtype == torch.float32
    assert value.item() == pytest.approx(1.0)


def test_relative_l1_hand_values():
    # |2-1| + |0-1| + |-1-1| = 4, ||prev||_1 = 3.
    value = relative_l1(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert value.item() == pytest.approx(4 / 3)
    assert relative_l1(torch.tensor([5.0, -5.0]), torch.tensor([5.0, -5.0])).item() == 0.0
    # Relative to the PREVIOUS value, so it is not symmetric: |0-2| / |2| = 1 but |2-0| / |0| is huge.
    assert relative_l1(torch.tensor([0.0]), torch.tensor([2.0])).item() == pytest.approx(1.0)
    assert relative_l1(torch.tensor([2.0]), torch.tensor([0.0])).item() > 1e30
    assert relative_l1(torch.zeros(3), torch.zeros(3)).item() == 0.0


def test_js_divergence_of_disjoint_distributions_is_ln2():
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert js_divergence(p, q).item() == pytest.approx(math.log(2))


def test_js_divergence_hand_value_and_scipy():
    p, q = [0.5, 0.5], [0.9, 0.1]
    m = [0.7, 0.3]
    kl_pm = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    kl_qm = 0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    hand = 0.5 * (kl_pm + kl_qm)
    assert m == [0.5 * (a + b) for a, b in zip(p, q, strict=True)]
    value = js_divergence(torch.tensor(p), torch.tensor(q)).item()
    assert value == pytest.approx(hand, rel=1e-6)
    assert value == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-6)
    assert js_divergence(torch.tensor(p), torch.tensor(p)).item() == 0.0


def test_js_divergence_averages_over_rows():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(77), size=(2, 5))
    q = rng.dirichlet(np.ones(77), size=(2, 5))
    expected = np.mean([jensenshannon(p[b, i], q[b, i]) ** 2 for b in range(2) for i in range(5)])
    value = js_divergence(torch.tensor(p, dtype=torch.float32), torch.tensor(q, dtype=torch.float32)).item()
    assert value == pytest.approx(expected, rel=1e-4)
    # One disjoint row and one identical row: (ln 2 + 0) / 2.
    rows_p = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    rows_q = torch.tensor([[0.0, 1.0], [0.3, 0.7]])
    assert js_divergence(rows_p, rows_q).item() == pytest.approx(math.log(2) / 2)


def _attention(**kwargs):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4, **kwargs)
    return attn.eval()


def _output_from_probs(attn, probs: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    batch = context.shape[0]
    value = attn.to_v(context).view(batch, -1, attn.heads, 4).transpose(1, 2)
    mixed = (probs @ value).transpose(1, 2).reshape(batch, -1, attn.heads * 4)
    return attn.to_out[1](attn.to_out[0](mixed))


@pytest.mark.parametrize("kwargs", [{}, {"cross_attention_norm": "layer_norm"}, {"qk_norm": "layer_norm"}])
def test_attention_probs_reproduce_the_module_output(kwargs):
    attn = _attention(**kwargs)
    hidden, context = torch.randn(2, 5, 8), torch.randn(2, 7, 6)
    with torch.no_grad():
        probs = attention_probs(attn, hidden, context)
        assert probs.shape == (2, 2, 5, 7)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 5))
        if attn.norm_q is None:
            # Without q/k norms the output is the softmax-weighted values: the maps are the module's own.
            torch.testing.assert_close(_output_from_probs(attn, probs, context), attn(hidden, context))
        else:
            manual_q = attn.norm_q(attn.to_q(hidden).view(2, 5, 2, 4).transpose(1, 2))
            manual_k = attn.norm_k(attn.to_k(context).view(2, 7, 2, 4).transpose(1, 2))
            expected = (manual_q @ manual_k.transpose(-1, -2) * attn.scale).softmax(-1)
            torch.testing.assert_close(probs, expected)
            torch.testing.assert_close(_output_from_probs(attn, probs, context), attn(hidden, context))


def test_attention_probs_apply_an_additive_mask():
    attn = _attention()
    hidden, context = torch.randn(2, 5, 8), torch.randn(2, 7, 6)
    mask = torch.zeros(2, 1, 7)
    mask[:, :, 4:] = -10000.0  # the bias diffusers builds from an encoder attention mask
    with torch.no_grad():
        probs = attention_probs(attn, hidden, context, mask)
        assert probs[..., 4:].max().item() < 1e-6
        torch.testing.assert_close(_output_from_probs(attn, probs, context), attn(hidden, context, mask))


def test_cross_attention_map_averages_heads():
    attn = _attention()
    hidden, context = torch.randn(1, 3, 8), torch.randn(1, 7, 6)
    with torch.no_grad():
        probs = attention_probs(attn, hidden, context)
        attention_map = cross_attention_map(attn, hidden, context)
    assert attention_map.shape == (1, 3, 7)
    torch.testing.assert_close(attention_map, 0.5 * (probs[:, 0] + probs[:, 1]))
    torch.testing.assert_close(attention_map.sum(-1), torch.ones(1, 3))


def test_building_blocks_hand_values():
    a, b = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.0, 2.0, 1.0])
    assert l1_norm(a).item() == 6.0
    assert l2_norm(torch.tensor([3.0, -4.0])).item() == 5.0
    assert l1_distance(a, b).item() == 1.0 + 4.0 + 2.0
    assert flat_dot(a.reshape(3, 1), b.reshape(3, 1)).item() == 0.0 - 4.0 + 3.0
    # Two rows: disjoint (2 JS = 2 ln 2) and identical (0).
    p = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    q = torch.tensor([[0.0, 1.0], [0.3, 0.7]])
    assert js_row_sum(p, q).item() == pytest.approx(2 * math.log(2))


def test_js_divergence_is_accurate_for_nearly_equal_maps():
    """Consecutive steps have nearly equal maps: float32 must not drown the divergence in cancellation
    (the textbook form sum p (log p - log m) is off by 10x at eps = 1e-4)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 64, 77) * 2
    for eps in (1.0, 1e-2, 1e-4, 1e-5):
        p = logits.softmax(-1)
        q = (logits + eps * torch.randn_like(logits)).softmax(-1)
        rows = zip(p.double().numpy().reshape(-1, 77), q.double().numpy().reshape(-1, 77), strict=True)
        expected = np.mean([jensenshannon(a, b) ** 2 for a, b in rows])
        assert js_divergence(p, q).item() == pytest.approx(expected, rel=1e-5), eps
