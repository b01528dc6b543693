"""Non-finite numbers (NaN, ±inf) in weights, optimiser state and checkpoints, found on the device.

Both checks read every tensor once through fused kernels (torch._foreach_norm). They use the max
norm: it is NaN or inf exactly when a value is, where a 2-norm also overflows on large finite values.
"""

from typing import Any, Dict, Iterable, List, Tuple

import torch


class NonFiniteError(RuntimeError):
    """A NaN or infinite number in the loss, the weights or an evaluation; the message names the step
    and the checkpoint to continue from."""


def any_non_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A 0-d float tensor on the tensors' device, 1.0 if any value of any tensor is NaN or infinite,
    else 0.0. Nothing is read back to the host, so the device need not finish first."""
    by_device: Dict[torch.device, List[torch.Tensor]] = {}
    for tensor in tensors:
        by_device.setdefault(tensor.device, []).append(tensor.detach())
    flags = [(~torch.isfinite(torch.stack(torch._foreach_norm(group, float("inf"))))).any() for group in by_device.values()]
    return torch.stack([flag.to(flags[0].device) for flag in flags]).any().float()


def floating_tensors(tree: Any, path: str = "") -> List[Tuple[str, torch.Tensor]]:
    """The floating-point tensors in nested dicts, lists and tuples, each with its path ('model.lm_head.weight')."""
    if isinstance(tree, torch.Tensor):
        return [(path, tree)] if tree.is_floating_point() and tree.numel() > 0 else []
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return []
    found = []
    for key, value in items:
        found += floating_tensors(value, f"{path}.{key}" if path else str(key))
    return found


def non_finite_paths(tree: Any) -> List[str]:
    """The paths of the tensors in `tree` that hold a NaN or an infinity (one host read per device)."""
    named = floating_tensors(tree)
    by_device: Dict[torch.device, List[Tuple[str, torch.Tensor]]] = {}
    for name, tensor in named:
        by_device.setdefault(tensor.device, []).append((name, tensor))
    found = []
    for group in by_device.values():
        norms = torch.stack(torch._foreach_norm([tensor.detach() for _, tensor in group], float("inf")))
        found += [name for (name, _), finite in zip(group, torch.isfinite(norms).tolist()) if not finite]
    return found
