"""The fused RoPE + attention Triton kernel (models/kernels/rope_attention.py) against PyTorch.

Without a CUDA GPU the kernel runs in Triton's CPU interpreter (tests/conftest.py), whose single
config (BLOCK_M 32, BLOCK_N 16) makes the sequence lengths here span one to ten key blocks, most
ending in a partial block. With a GPU the same tests run the compiled kernel, plus bfloat16 at the
real HRM shapes.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from models.kernels.rope_attention import rope_attention, rope_attention_reference  # noqa: E402
from models.layers import Attention, RotaryEmbedding  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPO_ROOT = Path(__file__).resolve().parents[1]
TOLERANCES = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=1e-2, rtol=1e-2)}
# (batch, num_heads, seq_len, head_dim)
SHAPES = [(1, 2, 5, 32), (2, 1, 20, 64), (1, 2, 82, 64), (1, 1, 150, 32)]


def random_qkv(batch, num_heads, seq_len, head_dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq_len, 3 * num_heads * head_dim, generator=generator).to(DEVICE, dtype)


def random_tables(seq_len, head_dim, seed=1):
    """cos/sin tables whose two halves differ, unlike RoPE's, so a kernel mixing them up fails."""
    generator = torch.Generator().manual_seed(seed)
    cos, sin = torch.randn(2, seq_len, head_dim, generator=generator).to(DEVICE)
    return cos, sin


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.double(), reference.double()
    return ((ours - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("rope", [True, False], ids=["rope", "no_rope"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "B{}_H{}_S{}_D{}".format(*shape))
def test_matches_reference(shape, rope, dtype):
    batch, num_heads, seq_len, head_dim = shape
    qkv = random_qkv(*shape, dtype)
    cos, sin = random_tables(seq_len, head_dim) if rope else (None, None)
    out = rope_attention(qkv, num_heads, cos, sin)
    assert out.shape == (batch, seq_len, num_heads * head_dim) and out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out, rope_attention_reference(qkv, num_heads, cos, sin), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("rope", [True, False], ids=["rope", "no_rope"])
@pytest.mark.parametrize("shape", [(2, 2, 20, 32), (1, 1, 82, 64)], ids=lambda shape: "B{}_H{}_S{}_D{}".format(*shape))
def test_matches_attention_module(shape, rope, dtype):
    """Between qkv_proj and o_proj, the kernel computes what models.layers.Attention does."""
    batch, num_heads, seq_len, head_dim = shape
    torch.manual_seed(0)
    attn = Attention(hidden_size=num_heads * head_dim, num_heads=num_heads).to(DEVICE)
    hidden = torch.randn(batch, seq_len, num_heads * head_dim, device=DEVICE, dtype=dtype)
    cos_sin = RotaryEmbedding(dim=head_dim, max_position_embeddings=seq_len, base=10000.0).to(DEVICE)() if rope else None
    with torch.no_grad():
        out = rope_attention(attn.qkv_proj(hidden), num_heads, *(cos_sin or (None, None)))
        torch.testing.assert_close(attn.o_proj(out), attn(cos_sin, hidden), **TOLERANCES[dtype])


def _bad_inputs():
    def qkv(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=DEVICE).to(dtype)

    def table(seq_len, head_dim, dtype=torch.float32):
        return torch.randn(seq_len, head_dim, device=DEVICE).to(dtype)

    return {
        "rank": ((qkv(4, 192), 2, None, None), "qkv must be [batch, seq, 3 * num_heads * head_dim]"),
        "num_heads": ((qkv(1, 4, 192), 0, None, None), "num_heads must be positive, got 0"),
        "width": ((qkv(1, 4, 193), 2, None, None), "not divisible by 3 * num_heads = 6"),
        "head_dim_16": ((qkv(1, 4, 96), 2, None, None), "head_dim 16 is not supported"),
        "head_dim_48": ((qkv(1, 4, 288), 2, None, None), "head_dim 48 is not supported"),
        "dtype": ((qkv(1, 4, 192, dtype=torch.float64), 2, None, None), "dtype torch.float64 is not supported"),
        "non_contiguous": ((qkv(1, 4, 384)[..., ::2], 2, None, None), "qkv must be contiguous"),
        "cos_only": ((qkv(1, 4, 192), 2, table(4, 32), None), "cos and sin must be given together"),
        "sin_only": ((qkv(1, 4, 192), 2, None, table(4, 32)), "cos and sin must be given together"),
        "cos_rows": ((qkv(1, 4, 192), 2, table(5, 32), table(4, 32)), "cos must be [seq, head_dim] = [4, 32], got [5, 32]"),
        "sin_cols": ((qkv(1, 4, 192), 2, table(4, 32), table(4, 64)), "sin must be [seq, head_dim] = [4, 32], got [4, 64]"),
        "cos_dtype": ((qkv(1, 4, 192), 2, table(4, 32, torch.float16), table(4, 32)), "cos must be float32"),
        "sin_non_contiguous": ((qkv(1, 4, 192), 2, table(4, 32), table(32, 4).t()), "sin must be contiguous"),
        "requires_grad": ((qkv(1, 4, 192).requires_grad_(), 2, None, None), "has no backward"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_raises_value_error(case):
    args, message = _bad_inputs()[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        rope_attention(*args)


def test_import_without_triton_raises_import_error():
    # A None entry in sys.modules makes `import triton` raise as if it were not installed.
    code = (
        "import sys\n"
        "sys.modules['triton'] = None\n"
        "try:\n"
        "    import models.kernels.rope_attention\n"
        "except ImportError:\n"
        "    sys.exit(0)\n"
        "sys.exit('imported without triton')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_tensor_is_refused_on_gpu_machine():
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        rope_attention(torch.randn(1, 4, 192), 2, None, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rope", [True, False], ids=["rope", "no_rope"])
@pytest.mark.parametrize("batch, seq_len", [(64, 82), (4, 901)], ids=["sudoku", "maze"])
def test_bfloat16_real_shapes_on_gpu(batch, seq_len, rope):
    num_heads, head_dim = 8, 64
    qkv = random_qkv(batch, num_heads, seq_len, head_dim, torch.bfloat16)
    cos, sin = RotaryEmbedding(dim=head_dim, max_position_embeddings=seq_len, base=10000.0).to(DEVICE)() if rope else (None, None)
    out = rope_attention(qkv, num_heads, cos, sin)
    assert relative_error(out, rope_attention_reference(qkv, num_heads, cos, sin)) < 1e-2
