"""Layers: attention (SDPA path) against plain softmax attention, RoPE, RMSNorm, SwiGLU, init."""

import math

import pytest
import torch

from models.common import trunc_normal_init_
from models.layers import (
    Attention,
    CastedEmbedding,
    CastedLinear,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary_pos_emb,
    rms_norm,
)


def plain_attention(attention: Attention, x: torch.Tensor, cos_sin=None) -> torch.Tensor:
    """Softmax attention written out head by head, from the module's weights."""
    batch, seq, hidden = x.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    q, k, v = (x @ attention.qkv_proj.weight.T).split(hidden, dim=-1)
    q, k, v = (t.view(batch, seq, heads, head_dim) for t in (q, k, v))
    if cos_sin is not None:
        cos, sin = cos_sin
        angle = torch.atan2(sin, cos)[:, : head_dim // 2]  # rotate-half: pairs (i, i + head_dim/2)
        rotation = torch.polar(torch.ones_like(angle), angle)[None, :, None, :]
        q, k = (
            torch.view_as_real(torch.complex(t[..., : head_dim // 2], t[..., head_dim // 2 :]) * rotation).permute(0, 1, 2, 4, 3).reshape(t.shape)
            for t in (q, k)
        )
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    return out.reshape(batch, seq, hidden) @ attention.o_proj.weight.T


@pytest.mark.parametrize("use_rope", [False, True])
def test_sdpa_attention_equals_plain_softmax_attention(use_rope):
    torch.manual_seed(0)
    attention = Attention(hidden_size=32, num_heads=4)
    x = torch.randn(2, 10, 32)
    cos_sin = RotaryEmbedding(dim=8, max_position_embeddings=10, base=10000)() if use_rope else None
    assert torch.allclose(attention(cos_sin, x), plain_attention(attention, x, cos_sin), atol=1e-5, rtol=1e-5)


def test_rope_is_identity_at_position_zero_and_preserves_norm():
    cos, sin = RotaryEmbedding(dim=8, max_position_embeddings=6, base=10000)()
    q, k = torch.randn(2, 6, 3, 8), torch.randn(2, 6, 3, 8)
    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.allclose(q_rot[:, 0], q[:, 0]) and torch.allclose(k_rot[:, 0], k[:, 0])
    assert torch.allclose(q_rot.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # Relative: the score between positions i and j depends only on j - i.
    same = torch.randn(8).expand(2, 6, 3, 8)
    q_same, k_same = apply_rotary_pos_emb(same, same, cos, sin)
    scores = torch.einsum("bihd,bjhd->bhij", q_same, k_same)
    assert torch.allclose(scores[..., 0, 1], scores[..., 3, 4], atol=1e-5)


def test_rope_in_bfloat16_returns_bfloat16():
    cos, sin = RotaryEmbedding(dim=8, max_position_embeddings=4, base=10000)()
    q = torch.randn(1, 4, 2, 8, dtype=torch.bfloat16)
    q_rot, _ = apply_rotary_pos_emb(q, q, cos, sin)
    assert q_rot.dtype == torch.bfloat16 and cos.dtype == torch.float32


def test_rms_norm_computes_in_float32_and_keeps_dtype():
    x = torch.randn(4, 16) * 3
    y = rms_norm(x, 1e-5)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(4), atol=1e-4)
    assert rms_norm(x.bfloat16(), 1e-5).dtype == torch.bfloat16


def test_casted_layers_keep_float32_weights_and_cast_at_use():
    linear = CastedLinear(8, 4, bias=True)
    assert linear.weight.dtype == torch.float32 and torch.all(linear.bias == 0)
    assert linear(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    embedding = CastedEmbedding(5, 8, init_std=0.1, cast_to=torch.bfloat16)
    assert embedding(torch.tensor([0, 4], dtype=torch.int32)).dtype == torch.bfloat16


def test_swiglu_inner_size_rounds_up_to_256():
    assert SwiGLU(hidden_size=512, expansion=4).down_proj.weight.shape == (512, 1536)
    assert SwiGLU(hidden_size=32, expansion=4).gate_up_proj.weight.shape == (512, 32)


def test_trunc_normal_init_has_the_requested_std_and_bounds():
    torch.manual_seed(0)
    x = trunc_normal_init_(torch.empty(200_000), std=0.5)
    assert abs(x.std().item() - 0.5) < 0.005
    assert x.abs().max().item() <= 2 * 0.5 / 0.8796 + 1e-6  # ±2 corrected std (truncation shrinks std by 0.8796)
    assert torch.all(trunc_normal_init_(torch.ones(3), std=0) == 0)
    lecun = CastedLinear(400, 300, bias=False).weight
    assert abs(lecun.std().item() - 400**-0.5) < 0.002
