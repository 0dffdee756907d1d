"""Hand-computed MACs of toy modules in both conventions, and the SDPA / baddbmm formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hgc_tune.errors import HgcTuneError
from hgc_tune.macs._count import count_module_macs
from hgc_tune.macs._sdpa import baddbmm_macs, sdpa_macs


def test_sdpa_macs_hand_computed():
    # q [B=1, H=2, Lq=5, d=3], k [1, 2, Lk=7, 3], v [1, 2, 7, dv=4]: 1·2·5·7·3 + 1·2·5·7·4 = 210 + 280.
    assert sdpa_macs((1, 2, 5, 3), (1, 2, 7, 3), (1, 2, 7, 4)) == 490
    # SD1.5 cross-attention at 64x64 latent, CFG batch: 2·8·4096·77·40 twice.
    assert sdpa_macs((2, 8, 4096, 40), (2, 8, 77, 40), (2, 8, 77, 40)) == 2 * (2 * 8 * 4096 * 77 * 40)
    # Rank 3 (heads folded into the batch) and grouped-query k/v (fewer heads): q's leading dims count.
    assert sdpa_macs((6, 5, 3), (6, 7, 3), (6, 7, 3)) == 6 * 5 * 7 * 3 * 2
    assert sdpa_macs((1, 4, 5, 3), (1, 2, 7, 3), (1, 2, 7, 3)) == 4 * 5 * 7 * 3 * 2


@pytest.mark.parametrize(
    ("q", "k", "v", "word"),
    [
        ((1, 2, 5, 3), (1, 2, 7, 4), (1, 2, 7, 4), "k_shape"),
        ((1, 2, 5, 3), (1, 2, 7, 3), (1, 2, 6, 3), "v_shape"),
        ((5,), (1, 7, 3), (1, 7, 3), "q_shape"),
    ],
)
def test_sdpa_macs_rejects_inconsistent_shapes(q, k, v, word):
    with pytest.raises(HgcTuneError, match=word):
        sdpa_macs(q, k, v)


def test_baddbmm_macs_hand_computed():
    assert baddbmm_macs((2, 3, 4), (2, 4, 5)) == 2 * 3 * 4 * 5


def test_conv2d_macs():
    conv = torch.nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, groups=2)
    table = count_module_macs(conv, (torch.zeros(1, 4, 9, 9),), name="conv")
    # Hout = Wout = (9 + 2 - 3) // 2 + 1 = 5; Cout·Cin/groups·kh·kw·Hout·Wout = 6·2·3·3·5·5.
    assert table == {"conv": {"paper": 2700, "complete": 2700}}


def test_linear_macs():
    linear = torch.nn.Linear(5, 7)
    table = count_module_macs(linear, (torch.zeros(1, 6, 5),), name="fc")
    assert table == {"fc": {"paper": 5 * 7 * 6, "complete": 5 * 7 * 6}}


class _CrossAttention(torch.nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = torch.nn.Linear(dim, dim, bias=False)
        self.to_k = torch.nn.Linear(dim, dim, bias=False)
        self.to_v = torch.nn.Linear(dim, dim, bias=False)
        self.to_out = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        )
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.attn = _CrossAttention(8, heads=2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attn(self.proj(x), context)


def test_attention_macs_both_conventions_and_nesting():
    x, context = torch.zeros(1, 6, 8), torch.zeros(1, 3, 8)
    table = count_module_macs(_Block(), (x, context), name="block")
    # Projections: q and out on 6 tokens, k and v on 3 context tokens, 8x8 each.
    q_out, kv = 8 * 8 * 6, 8 * 8 * 3
    attention = 2 * q_out + 2 * kv  # 1152
    # SDPA: q [1, 2, 6, 4], k/v [1, 2, 3, 4]: 1·2·6·3·4 (QKᵀ) + 1·2·6·3·4 (AV) = 288.
    sdpa = 288
    assert table["block.attn.to_q"] == {"paper": q_out, "complete": q_out}
    assert table["block.attn.to_k"] == {"paper": kv, "complete": kv}
    assert table["block.attn"] == {"paper": attention, "complete": attention + sdpa}
    assert table["block.proj"] == {"paper": 8 * 8 * 6, "complete": 8 * 8 * 6}
    assert table["block"] == {"paper": attention + 384, "complete": attention + 384 + sdpa}


class _ClassicAttention(torch.nn.Module):
    """QKᵀ with baddbmm and AV with bmm, as diffusers' classic AttnProcessor does."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = torch.baddbmm(torch.zeros(q.shape[0], q.shape[1], k.shape[1]), q, k.transpose(1, 2))
        return torch.bmm(scores.softmax(-1), v)


def test_baddbmm_counts_in_complete_only():
    q, k, v = torch.zeros(2, 3, 4), torch.zeros(2, 5, 4), torch.zeros(2, 5, 6)
    table = count_module_macs(_ClassicAttention(), (q, k, v), name="attn")
    # fvcore counts bmm (AV: 2·3·5·6 = 180) but not baddbmm (QKᵀ: 2·3·4·5 = 120).
    assert table == {"attn": {"paper": 180, "complete": 300}}


def test_call_adapts_the_signature_and_name_is_checked():
    linear = torch.nn.Linear(4, 2)
    table = count_module_macs(linear, (torch.zeros(1, 3, 4),), name="fc", call=lambda m, x: m(x * 2)[0])
    assert table["fc"]["paper"] == 4 * 2 * 3
    with pytest.raises(HgcTuneError, match="name"):
        count_module_macs(linear, (torch.zeros(1, 4),), name="a.b")


def test_operators_fvcore_skips_are_recorded_per_module():
    from hgc_tune.macs._count import affected_conventions, trace_module_macs

    class _Running(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.cumprod(self.fc(x), dim=-1)

    class _Outer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _Running()

        def forward(self, x):
            return self.inner(x).flip(-1)

    trace = trace_module_macs(_Outer(), (torch.zeros(1, 4),), name="outer")
    assert trace.macs["outer"] == {"paper": 16, "complete": 16}  # the linear layer only
    assert trace.unsupported == {
        "outer": {"aten::cumprod": 1, "aten::flip": 1},
        "outer.inner": {"aten::cumprod": 1},
    }
    assert affected_conventions("aten::cumprod") == ("paper", "complete")
    assert affected_conventions("aten::baddbmm") == ("complete",)
