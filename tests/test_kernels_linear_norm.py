"""Fused projection + residual add + RMSNorm kernel against its PyTorch reference and the layers it replaces.

Without a CUDA GPU the kernel runs in Triton's CPU interpreter (see conftest.py), which gives
garbage for bfloat16, so the shared tests use float32 and float16; bfloat16 is checked on a GPU.
"""

import pytest
import torch

pytest.importorskip("triton")

from models.kernels.linear_norm import linear_add_rms_norm, linear_add_rms_norm_reference  # noqa: E402
from models.layers import CastedLinear, rms_norm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-5

TOLERANCES = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
}

# (M, N, K). M = 37 and 130 end in a partial row block and K = 48 and 16 in a partial K block (with
# the interpreter's 32-row, 32-wide blocks); M = 64 fills its blocks exactly; N = 16 is the smallest
# tile tl.dot takes.
SHAPES = [(37, 32, 32), (130, 64, 96), (130, 32, 48), (64, 64, 32), (37, 16, 16)]


def random_inputs(rows: int, n: int, k: int, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=generator)
    # The layer's init scale, so the projection is O(1), like the normalised residual stream.
    weight = torch.randn(n, k, generator=generator) * k**-0.5
    residual = torch.randn(rows, n, generator=generator)
    return x.to(DEVICE, dtype), weight.to(DEVICE, dtype), residual.to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows, n, k", SHAPES)
def test_matches_reference(rows, n, k, dtype):
    x, weight, residual = random_inputs(rows, n, k, dtype)
    out = linear_add_rms_norm(x, weight, residual, EPS)
    assert out.shape == (rows, n) and out.dtype == dtype
    torch.testing.assert_close(out, linear_add_rms_norm_reference(x, weight, residual, EPS), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows, n, k", [(37, 32, 96), (130, 64, 32)])
@torch.no_grad()
def test_matches_layers(rows, n, k, dtype):
    """The block's own computation: rms_norm(hidden + proj(inner)) with the real CastedLinear."""
    torch.manual_seed(0)
    projection = CastedLinear(k, n, bias=False).to(DEVICE)
    x, _, residual = random_inputs(rows, n, k, dtype)
    out = linear_add_rms_norm(x, projection.weight.to(dtype), residual, EPS)
    torch.testing.assert_close(out, rms_norm(residual + projection(x), EPS), **TOLERANCES[dtype])


def test_rows_are_normalised_independently():
    # Rows of very different scale: each must come out with RMS 1, whatever its block neighbours
    # (eps small enough not to matter even for the smallest rows).
    x, weight, residual = random_inputs(37, 64, 32, torch.float32)
    scales = torch.logspace(-2, 3, 37, device=DEVICE)[:, None]
    out = linear_add_rms_norm(x * scales, weight, residual * scales, eps=1e-12)
    torch.testing.assert_close(out.square().mean(-1), torch.ones(37, device=DEVICE), rtol=1e-4, atol=1e-4)


def test_writes_every_output_element(monkeypatch):
    x, weight, residual = random_inputs(130, 64, 48, torch.float32)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: real_empty(*args, **kwargs).fill_(float("nan")))
    out = linear_add_rms_norm(x, weight, residual, EPS)
    monkeypatch.undo()
    assert not out.isnan().any()
    torch.testing.assert_close(out, linear_add_rms_norm_reference(x, weight, residual, EPS), **TOLERANCES[torch.float32])


def test_empty_batch():
    x, weight, residual = random_inputs(0, 32, 48, torch.float32)
    assert linear_add_rms_norm(x, weight, residual, EPS).shape == (0, 32)


def bad_inputs():
    x, weight, residual = random_inputs(37, 32, 32, torch.float32)
    return [
        (x[None], weight, residual, "2-D"),
        (x, weight.half(), residual, "same dtype"),
        (x, weight, residual.half(), "same dtype"),
        (x.double(), weight.double(), residual.double(), "dtype must be one of"),
        (x, weight[:, :16].contiguous(), residual, r"weight must be \[N, K\]"),
        (x, weight, residual[:36], r"residual must be \[M, N\]"),
        (x, weight[:16], residual, r"residual must be \[M, N\]"),
        (x, weight[:24], residual[:, :24].contiguous(), "N must be a power of two"),
        (x, weight[:8], residual[:, :8].contiguous(), "N must be a power of two"),
        (x, weight.repeat(64, 1), residual.repeat(1, 64), "N must be a power of two"),
        (x[:, :24].contiguous(), weight[:, :24].contiguous(), residual, "K must be a positive multiple of 16"),
        (x.t().contiguous().t(), weight, residual, "contiguous"),
        (x, weight, residual.t().contiguous().t(), "contiguous"),
        (x, weight.clone().requires_grad_(), residual, "no backward"),
    ]


@pytest.mark.parametrize("case", range(len(bad_inputs())))
def test_rejects_unsupported_input(case):
    x, weight, residual, message = bad_inputs()[case]
    with pytest.raises(ValueError, match=message):
        linear_add_rms_norm(x, weight, residual, EPS)


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    out, expected = out.float(), expected.float()
    return ((out - expected).norm() / expected.norm()).item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("k", [512, 1536])
@torch.no_grad()
def test_bfloat16_model_shapes_on_gpu(k):
    # The model's hidden size 512; K = 512 is o_proj, K = 1536 the MLP's down_proj.
    x, weight, residual = random_inputs(4096, 512, k, torch.bfloat16)
    out = linear_add_rms_norm(x, weight, residual, EPS)
    assert relative_error(out, linear_add_rms_norm_reference(x, weight, residual, EPS)) < 1e-2
