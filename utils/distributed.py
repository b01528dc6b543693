"""One process-group and device set-up for every way of launching: `python` or `torchrun`,
CPU or GPU; and the few collectives the training loop needs."""

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Sequence

import torch
import torch.distributed as dist

# Gradients are summed in buckets of about this many bytes: few large collectives instead of one per
# parameter, without materialising a second copy of all gradients at once.
GRADIENT_BUCKET_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> DistributedContext:
    """Read torchrun's environment (absent for a plain `python` launch) and pick the device.

    GPUs use NCCL, one per local rank; without CUDA every process runs on the CPU over gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session() -> Iterator[DistributedContext]:
    """`setup_distributed()` for the duration of a `with` block. On success every process waits for
    the others before the group goes (a process that leaves while a peer still uses the connection
    can abort that peer); after an error it leaves at once, since the peers may be anywhere."""
    context = setup_distributed()
    try:
        yield context
    except BaseException:
        teardown_distributed()
        raise
    barrier(context)
    teardown_distributed()


def end_process(exit_code: int = 0) -> None:
    """Leave a finished torchrun process without Python's interpreter finalisation.

    After the group is gone and all output written, PyTorch's gloo processes sometimes abort in a C++
    destructor during finalisation ("terminate called without an active exception", exit code 134),
    which makes torchrun report a finished run as failed. A single process exits normally.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)


def all_reduce_gradients(parameters: Sequence[torch.nn.Parameter], world_size: int) -> None:
    """Sum every parameter's gradient over all ranks, bucket by bucket."""
    if world_size <= 1:
        return
    bucket: List[torch.Tensor] = []
    bucket_bytes = 0
    for parameter in parameters:
        if parameter.grad is None:
            continue
        bucket.append(parameter.grad)
        bucket_bytes += parameter.grad.numel() * parameter.grad.element_size()
        if bucket_bytes >= GRADIENT_BUCKET_BYTES:
            _all_reduce_bucket(bucket)
            bucket, bucket_bytes = [], 0
    if bucket:
        _all_reduce_bucket(bucket)


def _all_reduce_bucket(gradients: List[torch.Tensor]) -> None:
    by_dtype = {}
    for gradient in gradients:
        by_dtype.setdefault(gradient.dtype, []).append(gradient)
    for same_dtype in by_dtype.values():
        flat = torch.cat([gradient.reshape(-1) for gradient in same_dtype])
        dist.all_reduce(flat)
        offset = 0
        for gradient in same_dtype:
            gradient.copy_(flat[offset : offset + gradient.numel()].view_as(gradient))
            offset += gradient.numel()


def broadcast_object(value: Any, context: DistributedContext) -> Any:
    """Rank 0's `value` on every rank."""
    if not context.is_distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def run_on_main(function: Callable[[], Any], context: DistributedContext) -> Any:
    """`function()` on rank 0, whose result it returns there (None on the other ranks). If it raises,
    every rank raises its error: no rank is left waiting for rank 0 in the next collective."""
    result, failure = None, None
    if context.is_main:
        try:
            result = function()
        except Exception as error:  # raised again below, on every rank
            failure = error
    failure = broadcast_object(failure, context)
    if failure is not None:
        raise failure
    return result


def gather_objects(value: Any, context: DistributedContext) -> List[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not context.is_distributed:
        return [value]
    gathered: List[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()
