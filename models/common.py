"""Weight initialisation shared by the model's layers and the puzzle embedding."""

import math

import torch


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """Fill `tensor` in place from a normal truncated to [lower*std, upper*std], as JAX does.

    PyTorch's `trunc_normal_` cuts the tails off a normal of the given std, so the result has a
    smaller std than asked for. JAX (and the original HRM) widen the normal first so that the
    truncated distribution has exactly `std`. Samples are drawn by inverting the normal CDF on a
    uniform draw between the CDF values of the bounds.
    """
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()

        sqrt2 = math.sqrt(2)
        # Uniform range in erf space that maps onto [lower, upper] of a standard normal.
        erf_lower = math.erf(lower / sqrt2)
        erf_upper = math.erf(upper / sqrt2)
        mass = (erf_upper - erf_lower) / 2

        # Variance of a standard normal truncated to [lower, upper], to correct the std.
        pdf_lower = math.exp(-0.5 * lower**2) / math.sqrt(2 * math.pi)
        pdf_upper = math.exp(-0.5 * upper**2) / math.sqrt(2 * math.pi)
        truncated_var = 1 - (upper * pdf_upper - lower * pdf_lower) / mass - ((pdf_upper - pdf_lower) / mass) ** 2
        corrected_std = std / math.sqrt(truncated_var)

        tensor.uniform_(erf_lower, erf_upper)
        tensor.erfinv_()
        tensor.mul_(sqrt2 * corrected_std)
        tensor.clamp_(lower * corrected_std, upper * corrected_std)
    return tensor
