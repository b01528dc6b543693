"""Layers: attention (SDPA path) against plain softmax attention, RoPE, RMSNorm, init, backends."""

import importlib.util
import math
import sys

import pytest
import torch

from models.common import trunc_normal_init_
from models.layers import (
    Attention,
    CastedEmbedding,
    CastedLinear,
    RotaryEmbedding,
    SwiGLU,
    _find_backend,
    apply_rotary_pos_emb,
    attention_backend,
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


def test_backend_is_sdpa_off_gpu_or_in_float32():
    assert attention_backend(82, "cpu") == "sdpa"
    # No CUDA query or flash-attn import for these: they are ruled out before.
    assert _find_backend("cpu", 0, torch.bfloat16, 64, 901) == "sdpa"
    assert _find_backend("cuda", 0, torch.float32, 64, 901) == "sdpa"
    assert _find_backend("cuda", 0, torch.bfloat16, 60, 901) == "sdpa"


def test_cpu_use_never_imports_flash_attention(monkeypatch):
    import models.layers as layers
    from tests.test_model_act import SMALL, make_batch, make_head

    # A recorder in place of the one function that imports flash-attn; an empty backend cache so this
    # run chooses its backend afresh instead of reusing another test's choice; and the packages made
    # unimportable, so an import that bypasses _import_flash fails here whether or not they are installed.
    imported_backends = []
    monkeypatch.setattr(layers, "_import_flash", lambda backend: imported_backends.append(backend))
    monkeypatch.setattr(layers, "_backend_cache", {})
    for package in ("flash_attn", "flash_attn_interface"):
        monkeypatch.setitem(sys.modules, package, None)

    head = make_head().train()
    batch = make_batch(SMALL)
    head(carry=head.initial_carry(batch), batch=batch, return_keys=[])[1].backward()
    assert imported_backends == []
    # The forward pass did choose an attention backend, so the recorder was on its path.
    assert layers._backend_cache and set(layers._backend_cache.values()) == {"sdpa"}


def test_flash_backends_are_chosen_by_gpu_generation(monkeypatch):
    import models.layers as layers

    installed = {"flash_attn_3": False, "flash_attn_4": False, "flash_attn_2": True}
    monkeypatch.setattr(layers, "_import_flash", lambda backend: (lambda *a, **k: None) if installed[backend] else None)
    monkeypatch.setattr(layers, "_flash_works", lambda *args: True)

    def chosen(capability, seq_len=901):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
        return _find_backend("cuda", 0, torch.bfloat16, 64, seq_len)

    assert [chosen(capability) for capability in [(9, 0), (8, 0), (7, 5)]] == ["flash_attn_2", "flash_attn_2", "sdpa"]
    installed["flash_attn_4"] = True
    assert [chosen(capability) for capability in [(10, 0), (9, 0), (8, 0)]] == ["flash_attn_4", "flash_attn_4", "flash_attn_2"]
    # FlashAttention 4 only where it was measured faster than SDPA: long sequences (maze, ARC), not Sudoku's 82.
    assert [chosen((9, 0), seq_len) for seq_len in (901, 512, 511, 82)] == ["flash_attn_4", "flash_attn_4", "flash_attn_2", "flash_attn_2"]
    installed["flash_attn_2"] = False
    assert [chosen((9, 0), seq_len) for seq_len in (901, 82)] == ["flash_attn_4", "sdpa"]
    installed["flash_attn_3"] = True
    assert [chosen(capability) for capability in [(10, 0), (9, 0)]] == ["flash_attn_4", "flash_attn_3"]


def _sdpa_in_flash_layout(query, key, value, causal=False):
    out = torch.nn.functional.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)


def test_a_flash_package_that_fails_or_disagrees_is_skipped_with_a_warning(monkeypatch):
    import models.layers as layers

    def raises(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    def wrong(query, key, value, causal=False):
        return torch.zeros_like(query), None  # FA3's tuple form, with wrong values

    cpu = torch.device("cpu")
    assert layers._flash_works("flash_attn_2", _sdpa_in_flash_layout, cpu, torch.bfloat16, 64)
    with pytest.warns(UserWarning, match="flash_attn_4 imports but fails on cpu .RuntimeError: no kernel image"):
        assert not layers._flash_works("flash_attn_4", raises, cpu, torch.bfloat16, 64)
    with pytest.warns(UserWarning, match="flash_attn_3 differs from PyTorch SDPA by 1 .relative."):
        assert not layers._flash_works("flash_attn_3", wrong, cpu, torch.bfloat16, 64)

    # _find_backend goes on to the next candidate when one fails its check.
    monkeypatch.setattr(layers, "_import_flash", lambda backend: {"flash_attn_4": raises, "flash_attn_2": _sdpa_in_flash_layout}.get(backend))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    monkeypatch.setattr(layers, "_flash_works", lambda backend, func, device, dtype, head_dim: func is not raises)
    assert _find_backend("cuda", 0, torch.bfloat16, 64, 901) == "flash_attn_2"


def test_flash_dispatch_passes_batch_seq_heads_layout(monkeypatch):
    """The flash path hands [batch, seq, heads, head_dim] tensors over as they are; FA3 may return a tuple."""
    import models.layers as layers

    def fake_flash(q, k, v, causal):
        assert q.shape == (2, 10, 4, 8) and not causal
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2), None

    torch.manual_seed(0)
    attention = Attention(hidden_size=32, num_heads=4)
    x = torch.randn(2, 10, 32)
    expected = attention(None, x)
    monkeypatch.setattr(layers, "_select_backend", lambda *args: "flash_attn_3")
    monkeypatch.setitem(layers._flash_funcs, "flash_attn_3", fake_flash)
    assert torch.allclose(attention(None, x), expected, atol=1e-6)


def _stand_in_flash_attn_4_interface():
    """The two entry points of flash-attn-4 that models.flash_attn_4 calls, written with PyTorch."""
    def probabilities(query, key, softmax_lse):
        scores = torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(query.shape[-1])
        return (scores - softmax_lse[..., None]).exp()

    def forward(query, key, value, causal, return_lse):
        assert not causal and return_lse
        softmax_lse = (torch.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(query.shape[-1])).logsumexp(dim=-1)
        out = torch.einsum("bhqk,bkhd->bqhd", probabilities(query, key, softmax_lse), value)
        return out, softmax_lse, None, None, None

    def backward(query, key, value, out, grad_out, softmax_lse, causal):
        # The softmax-attention backward as FlashAttention computes it, from the saved log-sum-exp.
        assert not causal and out.shape == grad_out.shape == query.shape
        probs = probabilities(query, key, softmax_lse)
        grad_value = torch.einsum("bhqk,bqhd->bkhd", probs, grad_out)
        grad_probs = torch.einsum("bqhd,bkhd->bhqk", grad_out, value)
        row_dot = (grad_out * out).sum(-1).transpose(1, 2)[..., None]
        grad_scores = probs * (grad_probs - row_dot) / math.sqrt(query.shape[-1])
        return torch.einsum("bhqk,bkhd->bqhd", grad_scores, key), torch.einsum("bhqk,bqhd->bkhd", grad_scores, query), grad_value

    interface = type(sys)("flash_attn.cute.interface")
    interface._flash_attn_fwd, interface._flash_attn_bwd = forward, backward
    return interface


@pytest.mark.skipif(bool(importlib.util.find_spec("flash_attn")), reason="flash-attn is installed: the GPU test checks the real package")
def test_flash_attention_4_ops_give_attention_and_its_gradients_under_compile(monkeypatch):
    """models.flash_attn_4 wraps the package's forward and backward as custom ops with autograd; a
    stand-in package checks the wiring (saved tensors, gradient order, fake shapes) on the CPU."""
    interface = _stand_in_flash_attn_4_interface()
    for name, module in (("flash_attn", type(sys)("flash_attn")), ("flash_attn.cute", type(sys)("flash_attn.cute")),
                         ("flash_attn.cute.interface", interface)):
        monkeypatch.setitem(sys.modules, name, module)
    try:
        from models.flash_attn_4 import flash_attn_4_func
        torch.manual_seed(0)
        qkv = torch.randn(2, 10, 12, 8)
        grad_out = torch.randn(2, 10, 4, 8)

        def outputs_and_grads(attention):
            # value stays a strided slice of qkv, as in the model
            inputs = [tensor.detach().requires_grad_() for tensor in qkv.split(4, dim=2)]
            out = attention(*inputs)
            out.backward(grad_out)
            return [out] + [tensor.grad for tensor in inputs]

        def sdpa(query, key, value, causal=False):
            return torch.nn.functional.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)).transpose(1, 2)

        expected = outputs_and_grads(sdpa)
        for attention in (flash_attn_4_func, torch.compile(flash_attn_4_func, backend="aot_eager", fullgraph=True)):
            for name, want, got in zip(("out", "grad_query", "grad_key", "grad_value"), expected, outputs_and_grads(attention)):
                assert torch.allclose(got, want, atol=1e-5), name
        with pytest.raises(ValueError, match="non-causal"):
            flash_attn_4_func(*qkv.split(4, dim=2), causal=True)
    finally:
        # Later imports must meet the real (here: missing) package, as layers._import_flash does.
        sys.modules.pop("models.flash_attn_4", None)
