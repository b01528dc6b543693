"""Choosing an optional kernel: the first candidate that runs on the device and matches PyTorch.

Optional kernels (FlashAttention in models/attention.py, quack's fused products in models/fused/)
may be missing, fail to compile on a given GPU, or compute something else. Each is used only after
it has run once on small random inputs on the device at hand and agreed with the PyTorch code it
replaces. The answer is cached, so the check runs once per process and key.
"""

import warnings
from typing import Callable, Dict, Hashable, Mapping, Optional, Tuple

import torch

# A kernel agrees with its PyTorch reference below this relative error: far above the bfloat16
# rounding that separates a correct kernel from PyTorch, far below what a wrong layout, sign or
# missing term gives.
TOLERANCE = 2e-2

_choices: Dict[Hashable, Optional[str]] = {}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """|value - reference| / |reference| over all elements, in float32."""
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


def check_against_references(cases: Mapping[str, Tuple[Callable, Callable, tuple]]) -> None:
    """Run each (kernel, reference, arguments) case and compare every output of the kernel with the
    reference's; raise, naming the case, where one differs by TOLERANCE or more."""
    for name, (kernel, reference, args) in cases.items():
        outputs, expected = kernel(*args), reference(*args)
        if not isinstance(outputs, tuple):
            outputs, expected = (outputs,), (expected,)
        for out, want in zip(outputs, expected, strict=True):
            error = relative_error(out, want)
            if not error < TOLERANCE:
                raise RuntimeError(f"{name} differs from PyTorch by {error:.3g} (relative)")


def choose_kernel(what: str, device: torch.device, key: Hashable, candidates: Callable[[], Mapping[str, Callable[[], None]]]) -> Optional[str]:
    """The name of the first candidate whose check passes on `device`, or None; decided once per
    (what, device, key), e.g. key = (dtype, head_dim), and cached.

    `candidates()` gives each candidate's check in order of preference: a function that imports the
    kernel, runs it on small random inputs and raises where it differs from its reference. It is
    called only the first time. A check that raises ImportError (the package is not installed) is
    skipped silently: the next candidate is the intended fallback. One that fails otherwise (a
    compiler or driver failure on this GPU, or wrong results) is skipped with a warning.
    """
    cache_key = (what, device.type, device.index, key)
    if cache_key not in _choices:
        _choices[cache_key] = _first_passing(candidates(), what, device)
    return _choices[cache_key]


def _first_passing(checks: Mapping[str, Callable[[], None]], what: str, device: torch.device) -> Optional[str]:
    for name, check in checks.items():
        try:
            check()
        except ImportError:
            continue
        except Exception as error:  # any failure of an optional kernel leaves the next candidate or PyTorch
            warnings.warn(f"{what} '{name}' skipped on {device} ({type(error).__name__}: {error}).")
            continue
        return name
    return None
