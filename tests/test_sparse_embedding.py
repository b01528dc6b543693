"""The puzzle embedding and its sign-SGD optimiser, in one process and across two (gloo)."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.sparse_embedding import CastedSparseEmbedding, CastedSparseEmbeddingSignSGD_Distributed

NUM_IDS, DIM, LR, WD = 6, 4, 0.01, 0.5


def make_embedding(batch_size: int) -> CastedSparseEmbedding:
    embedding = CastedSparseEmbedding(NUM_IDS, DIM, batch_size=batch_size, init_std=1.0, cast_to=torch.float32)
    with torch.no_grad():
        embedding.weights.copy_(torch.arange(NUM_IDS * DIM, dtype=torch.float32).view(NUM_IDS, DIM) / 10)
    return embedding


def expected_update(weights: torch.Tensor, ids: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """The rule, written plainly: per used id, sum its gradients, then decay and step by the sign."""
    weights = weights.clone()
    for row in ids.unique():
        g = grads[ids == row].sum(0)
        weights[row] = weights[row] * (1 - LR * WD) - LR * torch.sign(g)
    return weights


def train_step(embedding, optimizer, ids, upstream):
    embedding.train()
    (embedding(ids) * upstream).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_forward_copies_rows_in_training_and_reads_the_table_in_eval():
    embedding = make_embedding(batch_size=3)
    ids = torch.tensor([4, 1, 4], dtype=torch.int32)
    out = embedding.train()(ids)
    assert out is embedding.local_weights and out.requires_grad
    assert torch.equal(out, embedding.weights[ids.long()]) and torch.equal(embedding.local_ids, ids)
    with torch.no_grad():
        assert torch.equal(embedding.eval()(torch.tensor([5, 0])), embedding.weights[[5, 0]])
    assert set(embedding.state_dict()) == {"weights"}


def test_zero_init_and_cast():
    embedding = CastedSparseEmbedding(3, 2, batch_size=2, init_std=0, cast_to=torch.bfloat16)
    assert torch.all(embedding.weights == 0) and embedding.weights.dtype == torch.float32
    assert embedding.train()(torch.tensor([0, 2])).dtype == torch.bfloat16


def test_wrong_training_batch_size_is_explained():
    with pytest.raises(ValueError, match="batch_size=3"):
        make_embedding(batch_size=3).train()(torch.tensor([0, 1]))


def test_sign_sgd_equals_its_rule_with_repeated_ids():
    embedding = make_embedding(batch_size=5)
    optimizer = CastedSparseEmbeddingSignSGD_Distributed(embedding.buffers(), world_size=1, lr=LR, weight_decay=WD)
    ids = torch.tensor([2, 0, 2, 5, 2], dtype=torch.int32)
    # Row 2 appears three times with gradients that cancel in sign only when summed.
    upstream = torch.tensor([[1.0, -1.0, 0.5, 0.0], [0.3, 0.3, -0.3, 0.0], [-3.0, 0.5, 0.25, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, -1.0, 0.0]])
    before = embedding.weights.clone()
    train_step(embedding, optimizer, ids, upstream)
    after = expected_update(before, ids.long(), upstream)
    assert torch.allclose(embedding.weights, after, atol=1e-7)
    # Unused rows are left alone (no decay either), zero gradients give no step.
    assert torch.equal(embedding.weights[[1, 3, 4]], before[[1, 3, 4]])
    assert embedding.weights[0, 3] == before[0, 3] * (1 - LR * WD)


def test_micro_batches_set_aside_update_like_one_batch():
    # Gradient accumulation: row 2 appears in both micro-batches, and only the sum over both gives
    # its sign (the first micro-batch alone would step it the other way).
    ids = torch.tensor([2, 0, 2, 5, 2, 1], dtype=torch.int32)
    upstream = torch.tensor([[1.0, -1.0, 0.5, 0.0], [0.3, 0.3, -0.3, 0.0], [2.0, 0.5, 0.25, 0.0],
                             [1.0, 1.0, 1.0, 1.0], [-4.0, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    embedding = make_embedding(batch_size=3)
    optimizer = CastedSparseEmbeddingSignSGD_Distributed(embedding.buffers(), world_size=1, lr=LR, weight_decay=WD)
    before = embedding.weights.clone()
    embedding.train()
    for rows in (slice(0, 3), slice(3, 6)):
        optimizer.set_aside_gradients()  # nothing to set aside before the first micro-batch
        (embedding(ids[rows]) * upstream[rows]).sum().backward()
    optimizer.step()
    assert torch.allclose(embedding.weights, expected_update(before, ids.long(), upstream), atol=1e-7)
    assert embedding.weights[2, 0] > before[2, 0] * (1 - LR * WD)
    assert optimizer._set_aside == {}


def test_lr_is_read_from_the_param_group_each_step():
    embedding = make_embedding(batch_size=2)
    optimizer = CastedSparseEmbeddingSignSGD_Distributed(embedding.buffers(), world_size=1, lr=0, weight_decay=WD)
    before = embedding.weights.clone()
    train_step(embedding, optimizer, torch.tensor([1, 3]), torch.ones(2, DIM))
    assert torch.equal(embedding.weights, before)  # lr 0: neither decay nor step
    optimizer.param_groups[0]["lr"] = LR
    train_step(embedding, optimizer, torch.tensor([1, 3]), torch.ones(2, DIM))
    assert torch.allclose(embedding.weights[1], before[1] * (1 - LR * WD) - LR)


def test_moving_the_module_keeps_local_weights_a_leaf():
    embedding = make_embedding(batch_size=2).double()
    assert embedding.local_weights.is_leaf and embedding.local_weights.requires_grad
    optimizer = CastedSparseEmbeddingSignSGD_Distributed(embedding.buffers(), world_size=1, lr=LR, weight_decay=WD)
    train_step(embedding, optimizer, torch.tensor([0, 1]), torch.ones(2, DIM, dtype=torch.float64))
    assert embedding.weights.dtype == torch.float64


def test_optimizer_needs_the_embedding_buffers():
    with pytest.raises(ValueError, match="puzzle_emb.buffers()"):
        CastedSparseEmbeddingSignSGD_Distributed([torch.zeros(3, 2)], world_size=1).step()


# Two processes -----------------------------------------------------------------------------------

GLOBAL_IDS = torch.tensor([3, 1, 3, 0, 1, 3], dtype=torch.int32)  # repeats within and across ranks
GLOBAL_UPSTREAM = torch.randn(6, DIM, generator=torch.Generator().manual_seed(0))


def _two_process_worker(rank: int, port: int, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        embedding = make_embedding(batch_size=3)
        optimizer = CastedSparseEmbeddingSignSGD_Distributed(embedding.buffers(), world_size=2, lr=LR, weight_decay=WD)
        rows = slice(3 * rank, 3 * rank + 3)
        train_step(embedding, optimizer, GLOBAL_IDS[rows], GLOBAL_UPSTREAM[rows])
        results[rank] = embedding.weights.clone()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_update_like_one_process_on_the_whole_batch():
    single = make_embedding(batch_size=6)
    optimizer = CastedSparseEmbeddingSignSGD_Distributed(single.buffers(), world_size=1, lr=LR, weight_decay=WD)
    train_step(single, optimizer, GLOBAL_IDS, GLOBAL_UPSTREAM)

    results = mp.Manager().dict()
    mp.spawn(_two_process_worker, args=(_free_port(), results), nprocs=2, join=True)
    for rank in range(2):
        assert torch.equal(results[rank], single.weights), f"rank {rank}"
    assert not torch.equal(single.weights, make_embedding(batch_size=1).weights)
