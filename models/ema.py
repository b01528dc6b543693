"""Exponential moving average (EMA) of a model's trained weights, as TRM's `ema=true`.

After every optimiser step, for each parameter that is trained (requires_grad):

    shadow = (1 - mu) * param + mu * shadow

Buffers are not averaged: the puzzle embedding (a buffer, trained by its own sign-SGD) and the
initial states keep their trained values. The update is one multi-tensor lerp over all parameters.
Evaluation swaps the shadow into the model's own parameters and back, copying in place, so every
parameter keeps its memory: a compiled step (and its CUDA graphs) stays valid.
"""

import contextlib
from typing import Dict, Iterator

import torch
from torch import nn


class EMAHelper:
    def __init__(self, module: nn.Module, mu: float):
        if not 0 < mu < 1:
            raise ValueError(f"EMA rate mu={mu} must be in (0, 1)")
        self.mu = mu
        trained = [(name, parameter) for name, parameter in module.named_parameters() if parameter.requires_grad]
        self.names = [name for name, _ in trained]
        self.parameters = [parameter for _, parameter in trained]
        self.shadow = [parameter.detach().clone() for parameter in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        # lerp(shadow, param, 1 - mu) = shadow + (1 - mu) * (param - shadow)
        torch._foreach_lerp_(self.shadow, self.parameters, 1 - self.mu)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The shadow of each trained parameter, under the parameter's state-dict key."""
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        if sorted(state) != sorted(self.names):
            missing, unexpected = sorted(set(self.names) - set(state)), sorted(set(state) - set(self.names))
            raise ValueError(f"the EMA weights do not fit this model: missing {missing}, unexpected {unexpected}")
        for name, shadow in zip(self.names, self.shadow):
            if state[name].shape != shadow.shape:
                raise ValueError(f"the EMA weight {name} has shape {tuple(state[name].shape)}, this model {tuple(shadow.shape)}")
            shadow.copy_(state[name])

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The shadow in the model's parameters inside the block; the trained values back after it."""
        trained = [parameter.detach().clone() for parameter in self.parameters]
        torch._foreach_copy_(self.parameters, self.shadow)
        try:
            yield
        finally:
            torch._foreach_copy_(self.parameters, trained)
