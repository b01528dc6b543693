"""Fused SwiGLU kernel against its PyTorch reference and against the SwiGLU layer it replaces.

Without a CUDA GPU the kernel runs in Triton's CPU interpreter (see conftest.py), which gives
garbage for bfloat16, so the shared tests use float32 and float16; bfloat16 is checked on a GPU.
"""

import pytest
import torch

pytest.importorskip("triton")

from models.kernels import swiglu_reference  # noqa: E402
from models.kernels.swiglu import swiglu  # noqa: E402
from models.layers import CastedLinear, SwiGLU  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

TOLERANCES = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
}

# M = 37 and 130 end in a partial row block; I = 48 ends in a partial column block; H = 48 ends in
# a partial K block (with the interpreter's 32-wide blocks).
SHAPES = [(37, 32, 32), (130, 64, 48), (130, 48, 32), (64, 32, 48)]


def random_inputs(rows: int, hidden: int, inner: int, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=generator)
    # The layer's init scale, so gate and up are O(1) like in the model.
    weight = torch.randn(2 * inner, hidden, generator=generator) * hidden**-0.5
    return x.to(DEVICE, dtype), weight.to(DEVICE, dtype)


def swiglu_layer(hidden: int, inner: int) -> SwiGLU:
    """The real SwiGLU layer with its inner size set to `inner` (its constructor rounds up to 256)."""
    layer = SwiGLU(hidden, expansion=1.0)
    layer.gate_up_proj = CastedLinear(hidden, 2 * inner, bias=False)
    layer.down_proj = CastedLinear(inner, hidden, bias=False)
    return layer.to(DEVICE)


def layer_activation(layer: SwiGLU, x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up as the layer's own forward computes it: the input of its down projection."""
    captured = []
    handle = layer.down_proj.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        layer(x)
    finally:
        handle.remove()
    return captured[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows, hidden, inner", SHAPES)
def test_matches_reference(rows, hidden, inner, dtype):
    x, weight = random_inputs(rows, hidden, inner, dtype)
    # The kernel's output is allocated first, so elements it fails to write cannot hold the reference's values.
    out = swiglu(x, weight)
    expected = swiglu_reference(x, weight)
    assert out.shape == (rows, inner) and out.dtype == dtype
    torch.testing.assert_close(out, expected, **TOLERANCES[dtype])


def bitwise_equal_fraction(out: torch.Tensor, expected: torch.Tensor) -> float:
    return (out == expected).float().mean().item()


def test_rounds_gate_and_up_to_input_dtype():
    # Tolerances cannot tell whether gate and up were rounded to float16 before the activation (the
    # difference is under one float16 ulp), but bit-for-bit agreement can: with the rounding nearly
    # every element matches the reference exactly, without it about two thirds do.
    x, weight = random_inputs(130, 64, 48, torch.float16)
    assert bitwise_equal_fraction(swiglu(x, weight), swiglu_reference(x, weight)) > 0.99


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows, hidden, inner", [(37, 32, 48), (130, 64, 32)])
@torch.no_grad()
def test_matches_swiglu_layer(rows, hidden, inner, dtype):
    torch.manual_seed(0)
    layer = swiglu_layer(hidden, inner)
    x, _ = random_inputs(rows, hidden, inner, dtype)
    out = swiglu(x, layer.gate_up_proj.weight.to(dtype))
    torch.testing.assert_close(out, layer_activation(layer, x), **TOLERANCES[dtype])


def test_writes_every_output_element(monkeypatch):
    x, weight = random_inputs(130, 64, 48, torch.float32)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: real_empty(*args, **kwargs).fill_(float("nan")))
    out = swiglu(x, weight)
    monkeypatch.undo()
    assert not out.isnan().any()
    torch.testing.assert_close(out, swiglu_reference(x, weight), **TOLERANCES[torch.float32])


def test_empty_batch():
    x, weight = random_inputs(0, 32, 48, torch.float32)
    assert swiglu(x, weight).shape == (0, 48)


BAD_INPUT_CASES = ["3-D x", "dtype mismatch", "float64", "H mismatch", "odd weight rows", "H = 24", "I = 24", "strided x", "needs grad"]


def bad_inputs():
    """(x, weight, expected message) for each of BAD_INPUT_CASES."""
    x, weight = random_inputs(37, 32, 32, torch.float32)
    return [
        (x[None], weight, "2-D"),
        (x, weight.half(), "same dtype"),
        (x.double(), weight.double(), "dtype must be one of"),
        (x, weight[:, :16].contiguous(), r"weight must be \[2\*I, H\]"),
        (x, weight[:63], r"weight must be \[2\*I, H\]"),
        (x[:, :24].contiguous(), weight[:, :24].contiguous(), "multiples of 16"),
        (x, weight[:48], "multiples of 16"),
        (x.t().contiguous().t(), weight, "contiguous"),
        (x, weight.clone().requires_grad_(), "no backward"),
    ]


@pytest.mark.parametrize("case", range(len(BAD_INPUT_CASES)), ids=BAD_INPUT_CASES)
def test_rejects_unsupported_input(case):
    x, weight, message = bad_inputs()[case]
    with pytest.raises(ValueError, match=message):
        swiglu(x, weight)


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    out, expected = out.float(), expected.float()
    return ((out - expected).norm() / expected.norm()).item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_bfloat16_model_shape_on_gpu():
    torch.manual_seed(0)
    # The model's MLP: hidden 512, expansion 4 -> inner 1536.
    layer = SwiGLU(512, expansion=4.0).to(DEVICE)
    weight = layer.gate_up_proj.weight.to(torch.bfloat16)
    assert weight.shape == (2 * 1536, 512)
    x = torch.randn(4096, 512, device=DEVICE, dtype=torch.bfloat16)
    out = swiglu(x, weight)
    expected = swiglu_reference(x, weight)
    assert relative_error(out, expected) < 1e-2
    # Looser than on the CPU: the GPU's approximate exp and its summation order are further from PyTorch's.
    assert bitwise_equal_fraction(out, expected) > 0.95
    assert relative_error(out, layer_activation(layer, x)) < 1e-2
