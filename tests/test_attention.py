"""Attention backends (models/attention.py): which one is chosen where, the check that skips a broken
one, the [batch, seq, heads, head_dim] dispatch, forcing a backend, and the FlashAttention 4 ops.

The FlashAttention packages need a CUDA GPU; here they are stand-ins, and the GPU generation is
faked. tests/test_model_gpu.py runs the real FlashAttention 4 package where it is installed.
"""

import importlib.util
import math
import sys
import warnings

import pytest
import torch

from models import attention, kernel_choice
from models.attention import attention_backend
from models.layers import Attention

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    """Each test chooses its backends afresh and leaves no imported function behind."""
    monkeypatch.setattr(kernel_choice, "_choices", {})
    monkeypatch.setattr(attention, "_flash_funcs", {})


def sdpa_in_flash_layout(query, key, value, causal=False):
    out = torch.nn.functional.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)


def test_backend_is_sdpa_off_gpu_or_in_float32():
    assert attention_backend(82, "cpu") == "sdpa"
    # No CUDA query or flash-attn import for these: they are ruled out before.
    assert attention._flash_checks(CPU, torch.bfloat16, 64, 901) == {}
    assert attention._flash_checks(CUDA, torch.float32, 64, 901) == {}
    assert attention._flash_checks(CUDA, torch.bfloat16, 60, 901) == {}


def test_cpu_use_never_imports_flash_attention(monkeypatch):
    from tests.test_model_act import SMALL, make_batch, make_head

    # A recorder in place of the one function that imports flash-attn, and the packages made
    # unimportable, so an import that bypasses _import_flash fails here whether or not they are installed.
    imported_backends = []
    monkeypatch.setattr(attention, "_import_flash", lambda backend: imported_backends.append(backend))
    for package in ("flash_attn", "flash_attn_interface"):
        monkeypatch.setitem(sys.modules, package, None)

    head = make_head().train()
    batch = make_batch(SMALL)
    head(carry=head.initial_carry(batch), batch=batch, return_keys=[])[1].backward()
    assert imported_backends == []
    # The forward pass did choose an attention backend (none of FlashAttention's), so the recorder was on its path.
    assert list(kernel_choice._choices.values()) == [None]
    assert list(kernel_choice._choices)[0][:2] == ("Attention backend", "cpu")


def test_flash_backends_are_chosen_by_gpu_generation(monkeypatch):
    installed = {"flash_attn_3": False, "flash_attn_4": False, "flash_attn_2": True}

    def check(backend, device, dtype, head_dim):
        if not installed[backend]:
            raise ImportError(f"No module named '{backend}'")

    monkeypatch.setattr(attention, "_check_flash", check)

    def chosen(capability, seq_len=901):
        monkeypatch.setattr(kernel_choice, "_choices", {})
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
        return attention._select_backend("cuda", 0, torch.bfloat16, 64, seq_len)

    assert [chosen(capability) for capability in [(9, 0), (8, 0), (7, 5)]] == ["flash_attn_2", "flash_attn_2", "sdpa"]
    installed["flash_attn_4"] = True
    assert [chosen(capability) for capability in [(10, 0), (9, 0), (8, 0)]] == ["flash_attn_4", "flash_attn_4", "flash_attn_2"]
    # FlashAttention 4 only where it was measured faster than SDPA: long sequences (maze, ARC), not Sudoku's 82.
    assert [chosen((9, 0), seq_len) for seq_len in (901, 512, 511, 82)] == ["flash_attn_4", "flash_attn_4", "flash_attn_2", "flash_attn_2"]
    installed["flash_attn_2"] = False
    assert [chosen((9, 0), seq_len) for seq_len in (901, 82)] == ["flash_attn_4", "sdpa"]
    installed["flash_attn_3"] = True
    assert [chosen(capability) for capability in [(10, 0), (9, 0)]] == ["flash_attn_4", "flash_attn_3"]


def test_a_flash_package_that_fails_or_disagrees_is_skipped_with_a_warning(monkeypatch):
    def raises(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    def wrong(query, key, value, causal=False):
        return torch.zeros_like(query), None  # FA3's tuple form, with wrong values

    packages = {"flash_attn_2": sdpa_in_flash_layout, "flash_attn_3": wrong, "flash_attn_4": raises}
    monkeypatch.setattr(attention, "_import_flash", lambda backend: packages[backend])
    # The check itself: it raises for a backend that fails or disagrees, and keeps one that agrees.
    attention._check_flash("flash_attn_2", CPU, torch.bfloat16, 64)
    assert attention._flash_funcs == {"flash_attn_2": sdpa_in_flash_layout}
    with pytest.raises(RuntimeError, match="no kernel image"):
        attention._check_flash("flash_attn_4", CPU, torch.bfloat16, 64)
    with pytest.raises(RuntimeError, match=r"flash_attn_3 differs from PyTorch by 1 \(relative\)"):
        attention._check_flash("flash_attn_3", CPU, torch.bfloat16, 64)

    # The choice goes on to the next candidate after a warning; the checks run on the CPU here.
    real_check = attention._check_flash
    monkeypatch.setattr(attention, "_check_flash", lambda backend, device, dtype, head_dim: real_check(backend, CPU, dtype, head_dim))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert attention._select_backend("cuda", 0, torch.bfloat16, 64, 901) == "flash_attn_2"
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 2
    assert messages[0].startswith("Attention backend 'flash_attn_3' skipped on cuda:0 (RuntimeError: flash_attn_3 differs")
    assert messages[1].startswith("Attention backend 'flash_attn_4' skipped on cuda:0 (RuntimeError: no kernel image")


def test_flash_dispatch_passes_batch_seq_heads_layout(monkeypatch):
    """The flash path hands [batch, seq, heads, head_dim] tensors over as they are; FA3 may return a tuple."""
    def fake_flash(q, k, v, causal):
        assert q.shape == (2, 10, 4, 8) and not causal
        return sdpa_in_flash_layout(q, k, v), None

    torch.manual_seed(0)
    layer = Attention(hidden_size=32, num_heads=4)
    x = torch.randn(2, 10, 32)
    expected = layer(None, x)
    monkeypatch.setattr(attention, "_select_backend", lambda *args: "flash_attn_3")
    monkeypatch.setitem(attention._flash_funcs, "flash_attn_3", fake_flash)
    assert torch.allclose(layer(None, x), expected, atol=1e-6)


def test_a_forced_backend_is_used_and_reported_until_the_block_ends(monkeypatch):
    calls = []

    def fake_flash(q, k, v, causal):
        calls.append(q.shape)
        return sdpa_in_flash_layout(q, k, v)

    monkeypatch.setattr(attention, "_import_flash", lambda backend: fake_flash)
    torch.manual_seed(0)
    layer = Attention(hidden_size=32, num_heads=4)
    x = torch.randn(2, 10, 32)
    expected = layer(None, x)
    with attention.forced_backend("flash_attn_2"):
        assert attention_backend(10, "cpu", torch.float32, 8) == "flash_attn_2"
        assert torch.allclose(layer(None, x), expected, atol=1e-6)
    assert calls == [(2, 10, 4, 8)]
    assert attention_backend(10, "cpu", torch.float32, 8) == "sdpa"


def test_forcing_a_flash_backend_that_is_not_installed_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    with pytest.raises(ImportError):
        with attention.forced_backend("flash_attn_2"):
            pass
    assert attention_backend(10, "cpu") == "sdpa"


def _stand_in_flash_attn_4_interface():
    """The two entry points of flash-attn-4 that models.attention's ops call, written with PyTorch."""
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
    """models.attention wraps flash-attn-4's forward and backward as custom ops with autograd; a
    stand-in package checks the wiring (saved tensors, gradient order, fake shapes) on the CPU."""
    with pytest.raises(ImportError):
        attention._import_flash("flash_attn_4")
    interface = _stand_in_flash_attn_4_interface()
    for name, module in (("flash_attn", type(sys)("flash_attn")), ("flash_attn.cute", type(sys)("flash_attn.cute")),
                         ("flash_attn.cute.interface", interface)):
        monkeypatch.setitem(sys.modules, name, module)
    flash_attn_4_func = attention._import_flash("flash_attn_4")
    assert flash_attn_4_func is attention.flash_attn_4_func
    torch.manual_seed(0)
    qkv = torch.randn(2, 10, 12, 8)
    grad_out = torch.randn(2, 10, 4, 8)

    def outputs_and_grads(attend):
        # value stays a strided slice of qkv, as in the model
        inputs = [tensor.detach().requires_grad_() for tensor in qkv.split(4, dim=2)]
        out = attend(*inputs)
        out.backward(grad_out)
        return [out] + [tensor.grad for tensor in inputs]

    expected = outputs_and_grads(sdpa_in_flash_layout)
    for attend in (flash_attn_4_func, torch.compile(flash_attn_4_func, backend="aot_eager", fullgraph=True)):
        for name, want, got in zip(("out", "grad_query", "grad_key", "grad_value"), expected, outputs_and_grads(attend)):
            assert torch.allclose(got, want, atol=1e-5), name
    with pytest.raises(ValueError, match="non-causal"):
        flash_attn_4_func(*qkv.split(4, dim=2), causal=True)
