"""The puzzle embedding: one learned vector per puzzle identifier, trained by sign-SGD on the rows
that the batch uses.

The table can be large (ARC has about a million identifiers), so it is a buffer, not a parameter:
no dense gradient or Adam state exists for it. In training, the batch's rows are copied into a small
leaf tensor `local_weights` that collects the gradient; `CastedSparseEmbeddingSignSGD_Distributed`
then writes the update back into the rows of `weights` that were used.
"""

from typing import Dict, Iterable, List, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from models.common import trunc_normal_init_


class CastedSparseEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std), persistent=True)
        # Per-batch copies of the used rows and their ids; rebuilt every step, so not saved.
        self.register_buffer("local_weights", torch.zeros(batch_size, embedding_dim, requires_grad=True), persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def _apply(self, fn, recurse=True):
        # Moving the module (.to / .cuda) copies `local_weights` through an autograd op, which would
        # leave a non-leaf tensor that never receives `.grad`. Make it a leaf again.
        super()._apply(fn, recurse)
        self.local_weights = self.local_weights.detach().requires_grad_(True)
        return self

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[inputs].to(self.cast_to)

        if inputs.shape[0] != self.local_weights.shape[0]:
            raise ValueError(
                f"Training batch has {inputs.shape[0]} sequences but the puzzle embedding was built for "
                f"batch_size={self.local_weights.shape[0]}: build the model with the per-process batch size."
            )
        with torch.no_grad():
            self.local_weights.copy_(self.weights[inputs])
            self.local_ids.copy_(inputs)
        return self.local_weights.to(self.cast_to)


class CastedSparseEmbeddingSignSGD_Distributed(Optimizer):
    """Sign-SGD with decoupled weight decay on the embedding rows used in the batch.

    `params` are the buffers of one `CastedSparseEmbedding` (`embedding.buffers()`). With
    world_size > 1 the local gradients and ids of every process are all-gathered, so every process
    applies the same update to its copy of the table. With gradient accumulation, `set_aside_gradients`
    keeps each earlier micro-batch's rows for the step, which then treats them like the rows of
    further processes. Gradients of rows used more than once (in any micro-batch, on any process) are
    summed before taking the sign:
        w = w * (1 - lr * weight_decay) - lr * sign(sum of g)
    """

    def __init__(self, params: Iterable[torch.Tensor], world_size: int, lr: Union[float, torch.Tensor] = 1e-3, weight_decay: float = 1e-2):
        if world_size < 1:
            raise ValueError(f"world_size={world_size} must be >= 1")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, world_size=world_size))
        # Per parameter group: (row gradients, ids) of the earlier micro-batches of this step.
        self._set_aside: Dict[int, List[Tuple[torch.Tensor, torch.Tensor]]] = {}

    def load_state_dict(self, state_dict) -> None:
        # The process count belongs to this run, not to the checkpoint: a run resumed over another
        # number of processes must gather the rows of its own processes.
        world_size = self.defaults["world_size"]
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["world_size"] = world_size

    @staticmethod
    def _split_group(params):
        """Tell apart local_weights (requires grad), local_ids (1-D) and weights (2-D)."""
        local_weights = [p for p in params if p.requires_grad]
        local_ids = [p for p in params if not p.requires_grad and p.ndim == 1]
        weights = [p for p in params if not p.requires_grad and p.ndim == 2]
        if len(params) != 3 or not (len(local_weights) == len(local_ids) == len(weights) == 1):
            raise ValueError(
                "CastedSparseEmbeddingSignSGD_Distributed expects the three buffers of one CastedSparseEmbedding "
                "(weights, local_weights, local_ids) per parameter group: pass `model.puzzle_emb.buffers()`."
            )
        return local_weights[0], local_ids[0], weights[0]

    @torch.no_grad()
    def set_aside_gradients(self) -> None:
        """Gradient accumulation: keep the row gradients and ids of the micro-batch just back-propagated
        for the next `step`, and clear the gradient: the next micro-batch's forward pass overwrites
        the rows and ids in the embedding's buffers."""
        for index, group in enumerate(self.param_groups):
            local_weights, local_ids, _ = self._split_group(group["params"])
            if local_weights.grad is not None:
                self._set_aside.setdefault(index, []).append((local_weights.grad.clone(), local_ids.clone()))
                local_weights.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            local_weights, local_ids, weights = self._split_group(group["params"])
            pieces = self._set_aside.pop(index, [])
            if local_weights.grad is not None:
                pieces.append((local_weights.grad, local_ids))
            if not pieces:
                continue
            grad = pieces[0][0] if len(pieces) == 1 else torch.cat([piece_grad for piece_grad, _ in pieces])
            ids = pieces[0][1] if len(pieces) == 1 else torch.cat([piece_ids for _, piece_ids in pieces])
            _sparse_emb_signsgd_dist(grad, ids, weights, lr=group["lr"], weight_decay=group["weight_decay"], world_size=group["world_size"])
        return loss


def _all_gather(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate every process's `tensor` along dim 0, in rank order."""
    gathered = torch.empty((world_size * tensor.shape[0],) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    # PyTorch 2.13 renamed all_gather_into_tensor to all_gather_single (same arguments).
    all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    all_gather_single(gathered, tensor.contiguous())
    return gathered


def _sparse_emb_signsgd_dist(local_grad: torch.Tensor, local_ids: torch.Tensor, weights: torch.Tensor, lr, weight_decay: float, world_size: int) -> None:
    grad, ids = local_grad, local_ids
    if world_size > 1:
        grad, ids = _all_gather(grad, world_size), _all_gather(ids, world_size)

    # Sum the gradients of repeated ids. Each position is mapped to the first position holding the
    # same id (argmax returns the first True), gradients are added at that representative, and every
    # position reads its group's sum back. Unlike `unique`, this has fixed shapes: no host sync.
    same_id = ids.unsqueeze(0) == ids.unsqueeze(1)
    first = same_id.to(torch.uint8).argmax(dim=1)
    summed = torch.zeros_like(grad).index_add_(0, first, grad)[first]

    rows = weights[ids]
    rows = rows * (1 - lr * weight_decay) - lr * torch.sign(summed)
    # Repeated ids write identical rows, so the order of the writes does not matter.
    weights[ids] = rows.to(weights.dtype)
