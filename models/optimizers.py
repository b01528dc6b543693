"""Adam-atan2 in pure PyTorch, and a builder that prefers the fused CUDA kernel when it works.

Adam-atan2 (Everett et al., 2024) replaces Adam's m / (sqrt(v) + eps) by atan2(m, sqrt(v)): bounded,
scale-invariant, and free of epsilon. Per parameter, at step t (weight decay decoupled):
    p = p * (1 - lr * wd)
    m = m + (1 - b1) * (g - m)
    v = v + (1 - b2) * (g * g - v)
    p = p - lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))

The `adam-atan2` package computes the same in a CUDA kernel, but it needs nvcc to build and breaks
on some PyTorch versions, so it is optional: `build_adam_atan2` checks it against this one.
"""

import math
from collections import defaultdict
from typing import Iterable, List, Optional, Tuple

import torch
from torch.optim import Optimizer


class AdamATan2(Optimizer):
    """Adam-atan2 with the `adam-atan2` package's constructor (and its defaults) and state keys.

    State per parameter: `step` (float32 scalar on the CPU, so that bias corrections are computed
    on the host without a device sync), `exp_avg`, `exp_avg_sq`. `foreach=True` (default) updates
    all parameters of one device, dtype and step count with multi-tensor kernels; `foreach=False`
    loops over tensors one by one (the reference path).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        foreach: bool = True,
    ):
        if lr < 0:
            raise ValueError(f"Invalid learning rate {lr}: must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid betas {betas}: both must be in [0, 1)")
        if weight_decay < 0:
            raise ValueError(f"Invalid weight_decay {weight_decay}: must be >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])

            # .get: groups loaded from the adam_atan2 package's state dicts have no "foreach".
            update = _multi_tensor_adam_atan2 if group.get("foreach", True) else _single_tensor_adam_atan2
            beta1, beta2 = group["betas"]
            update(params, grads, exp_avgs, exp_avg_sqs, steps, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"])
        return loss


def _single_tensor_adam_atan2(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, weight_decay):
    for p, g, m, v, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        step_t += 1
        step = step_t.item()
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)

        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.lerp_(g * g, 1 - beta2)
        p.sub_(torch.atan2(m, v.sqrt() / bias_correction2_sqrt), alpha=lr / bias_correction1)


def _multi_tensor_adam_atan2(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, weight_decay):
    # Parameters of one device, dtype and step count share every scalar of the update.
    buckets = defaultdict(list)
    for i, (p, step_t) in enumerate(zip(params, steps)):
        step_t += 1
        buckets[(p.device, p.dtype, step_t.item())].append(i)

    for (_device, _dtype, step), indices in buckets.items():
        ps: List[torch.Tensor] = [params[i] for i in indices]
        gs = [grads[i] for i in indices]
        ms = [exp_avgs[i] for i in indices]
        vs = [exp_avg_sqs[i] for i in indices]
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)

        torch._foreach_mul_(ps, 1 - lr * weight_decay)
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_lerp_(vs, torch._foreach_mul(gs, gs), 1 - beta2)

        denoms = torch._foreach_sqrt(vs)
        torch._foreach_div_(denoms, bias_correction2_sqrt)
        # There is no multi-tensor atan2: one kernel per tensor, written over the denominators.
        for m, denom in zip(ms, denoms):
            torch.atan2(m, denom, out=denom)
        torch._foreach_add_(ps, denoms, alpha=-lr / bias_correction1)


# Choosing the implementation ---------------------------------------------------------------------


def _tensors_of(params: list) -> List[torch.Tensor]:
    if params and isinstance(params[0], dict):
        return [p for group in params for p in group["params"]]
    return params


def _check_fused_against_ours(fused_class, device: torch.device, betas, weight_decay) -> Optional[str]:
    """Run two steps of the fused optimiser and ours on the same random tensors.

    Returns None when they agree, else the reason they do not.
    """
    generator = torch.Generator().manual_seed(0)
    shapes = [(37, 19), (64,), (3, 5, 7)]
    originals = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(2)]

    results = []
    for optimizer_class in (fused_class, AdamATan2):
        params = [torch.nn.Parameter(p.clone().to(device)) for p in originals]
        optimizer = optimizer_class(params, lr=1e-2, betas=betas, weight_decay=weight_decay)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.to(device)
            optimizer.step()
        results.append([p.detach().cpu() for p in params])

    for fused, ours in zip(*results):
        if not torch.allclose(fused, ours, rtol=1e-5, atol=1e-6):
            return f"differs from ours by up to {(fused - ours).abs().max().item():.3g}"
    return None


def build_adam_atan2(params: Iterable, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-2, log: bool = True) -> Optimizer:
    """The `adam_atan2` package's fused optimiser when the parameters are on CUDA and it imports and
    agrees with `AdamATan2` over two steps; otherwise `AdamATan2`. Prints one line saying which."""
    params = list(params)
    cuda_devices = [p.device for p in _tensors_of(params) if p.device.type == "cuda"]

    chosen, reason = AdamATan2, "parameters are not on CUDA"
    if cuda_devices:
        try:
            from adam_atan2 import AdamATan2 as FusedAdamATan2

            mismatch = _check_fused_against_ours(FusedAdamATan2, cuda_devices[0], betas, weight_decay)
            if mismatch is None:
                chosen, reason = FusedAdamATan2, "it imports and matches ours"
            else:
                reason = f"the adam_atan2 package {mismatch}"
        except Exception as error:  # not installed, not built for this torch/GPU, or fails at run time
            reason = f"the adam_atan2 package is unusable ({type(error).__name__}: {error})".splitlines()[0]

    if log:
        name = "fused CUDA AdamATan2 (adam_atan2 package)" if chosen is not AdamATan2 else "PyTorch multi-tensor AdamATan2 (models/optimizers.py)"
        print(f"Optimiser: {name}; {reason}.")
    return chosen(params, lr=lr, betas=betas, weight_decay=weight_decay)
