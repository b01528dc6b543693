"""The model and optimisers on a CUDA GPU (skipped without one): float32 against the reference,
bfloat16 under torch.compile, the optimisers on device, the optimiser's share of a step, and the
training step replayed as CUDA graphs (cuda_graphs=true) against the compiled one.

Run with `-s` to see the attention backend, the optimiser chosen and the timings.
"""

import json
import time

import pytest
import torch

import pretrain
from benchmarks.train_step import SHAPES, shape_metadata, synthetic_batches
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from models.attention import FLASH_ATTN_4, _import_flash, attention_backend
from models.losses import ACTLossHead
from models.optimizers import AdamATan2, build_adam_atan2
from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed
from tests.test_model_reference import FIXTURE, GRAD_TOL, OUTPUT_TOL, relative_error
from tests.test_optimizers import BETAS, LRS, WEIGHT_DECAY, random_problem, transcribed_rule
from utils.config import load_config
from utils.distributed import DistributedContext

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = "cuda"


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE)


def on_device(batch: dict) -> dict:
    return {k: v.to(DEVICE) for k, v in batch.items()}


def build_on_device(reference, **arch_overrides) -> ACTLossHead:
    head = ACTLossHead(HierarchicalReasoningModel_ACTV1({**reference["arch"], **arch_overrides}), reference["loss_type"])
    head.load_state_dict(reference["state_dict"])
    return head.to(DEVICE)


def run_training_calls(step_fn, head, batch):
    carry, results = head.initial_carry(batch), []
    for _ in range(3):
        head.zero_grad(set_to_none=True)
        head.model.puzzle_emb.local_weights.grad = None
        carry, loss, metrics, outputs, _ = step_fn(carry=carry, batch=batch, return_keys=["logits", "q_halt_logits", "q_continue_logits"])
        loss.backward()
        grads = {name: p.grad.clone() for name, p in head.named_parameters()}
        results.append((loss.detach(), outputs, carry.halted.clone(), grads, head.model.puzzle_emb.local_weights.grad.clone()))
    return results


def test_float32_on_gpu_matches_reference(reference):
    head = build_on_device(reference).train()
    assert head.model.puzzle_emb.local_weights.is_leaf and head.model.puzzle_emb.local_weights.device.type == "cuda"
    results = run_training_calls(head, head, on_device(reference["batch"]))
    for (loss, outputs, halted, grads, emb_grad), expected in zip(results, reference["train"]):
        assert relative_error(loss.cpu(), expected["loss"]) <= OUTPUT_TOL
        for key in outputs:
            assert relative_error(outputs[key].cpu(), expected["outputs"][key]) <= OUTPUT_TOL, key
        assert torch.equal(halted.cpu(), expected["halted"])
        for name, grad in grads.items():
            assert relative_error(grad.cpu(), expected["grads"][name]) <= GRAD_TOL, name
        assert relative_error(emb_grad.cpu(), expected["puzzle_emb_grad"]) <= GRAD_TOL


def test_bfloat16_compiled_on_gpu_is_close_to_reference(reference):
    head = build_on_device(reference, forward_dtype="bfloat16").train()
    compiled = torch.compile(head, fullgraph=True)
    results = run_training_calls(compiled, head, on_device(reference["batch"]))
    errors = {}
    for call, ((loss, outputs, _, grads, _), expected) in enumerate(zip(results, reference["train"])):
        errors[f"loss{call}"] = relative_error(loss.cpu(), expected["loss"])
        errors[f"logits{call}"] = relative_error(outputs["logits"].float().cpu(), expected["outputs"]["logits"])
        errors[f"grads{call}"] = max(relative_error(g.cpu(), expected["grads"][n]) for n, g in grads.items())
    print(json.dumps({"test": "bf16_compiled_vs_fp32_reference", "backend": attention_backend(reference["batch"]["inputs"].shape[1] + head.model.inner.puzzle_emb_len, DEVICE, torch.bfloat16, 8), **errors}))
    # bfloat16 keeps 8 bits of mantissa: a few percent after a dozen blocks.
    assert all(error < 5e-2 for key, error in errors.items() if not key.startswith("grads"))
    assert all(error < 2e-1 for key, error in errors.items() if key.startswith("grads"))


def test_adam_atan2_on_gpu_equals_transcribed_rule():
    params, grads = random_problem()
    expected = transcribed_rule(params, grads, LRS, BETAS, WEIGHT_DECAY)
    ours = [torch.nn.Parameter(p.to(DEVICE)) for p in params]
    optimizer = AdamATan2(ours, lr=0.0, betas=BETAS, weight_decay=WEIGHT_DECAY)
    for step_grads, lr in zip(grads, LRS):
        for p, g in zip(ours, step_grads):
            p.grad = g.to(DEVICE)
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
    for mine, reference in zip(ours, expected):
        assert torch.allclose(mine.detach().cpu().double(), reference, rtol=1e-5, atol=1e-6)


def test_sign_sgd_on_gpu_sums_repeated_ids():
    from tests.test_sparse_embedding import LR, WD, expected_update, make_embedding, train_step

    embedding = make_embedding(batch_size=5).to(DEVICE)
    optimizer = CastedSparseEmbeddingSignSGD_Distributed(embedding.buffers(), world_size=1, lr=LR, weight_decay=WD)
    ids = torch.tensor([2, 0, 2, 5, 2], dtype=torch.int32)
    upstream = torch.randn(5, 4)
    before = embedding.weights.cpu()
    train_step(embedding, optimizer, ids.to(DEVICE), upstream.to(DEVICE))
    assert torch.allclose(embedding.weights.cpu(), expected_update(before, ids.long(), upstream), atol=1e-6)


def test_optimizer_is_a_small_share_of_a_training_step(capsys):
    """Default architecture on the Sudoku shape, batch 384, bfloat16, compiled (the original's 1-GPU run)."""
    config = dict(
        batch_size=384, seq_len=81, puzzle_emb_ndim=512, num_puzzle_identifiers=1001, vocab_size=11,
        H_cycles=2, L_cycles=2, H_layers=4, L_layers=4, hidden_size=512, expansion=4, num_heads=8,
        pos_encodings="rope", halt_max_steps=16, halt_exploration_prob=0.1, forward_dtype="bfloat16",
    )  # fmt: skip
    torch.manual_seed(0)
    head = ACTLossHead(HierarchicalReasoningModel_ACTV1(config), "stablemax_cross_entropy").to(DEVICE).train()
    step_fn = torch.compile(head)
    with capsys.disabled():
        adam = build_adam_atan2(head.parameters(), lr=1e-4, betas=BETAS, weight_decay=WEIGHT_DECAY)
    sparse = CastedSparseEmbeddingSignSGD_Distributed(head.model.puzzle_emb.buffers(), world_size=1, lr=1e-4, weight_decay=0.1)
    batch = dict(
        inputs=torch.randint(1, 11, (384, 81), dtype=torch.int32, device=DEVICE),
        labels=torch.randint(1, 11, (384, 81), dtype=torch.int32, device=DEVICE),
        puzzle_identifiers=torch.randint(0, 1001, (384,), dtype=torch.int32, device=DEVICE),
    )
    carry = head.initial_carry(batch)

    def train_step():
        nonlocal carry
        carry, loss, _, _, _ = step_fn(carry=carry, batch=batch, return_keys=[])
        (loss / 384).backward()
        sparse.step()
        adam.step()
        sparse.zero_grad()
        adam.zero_grad()

    def timed(fn, repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    for _ in range(3):  # compile and warm up
        train_step()
    step_time = timed(train_step, 10)

    # The optimiser steps alone, on the gradients of the last step.
    carry, loss, _, _, _ = step_fn(carry=carry, batch=batch, return_keys=[])
    (loss / 384).backward()
    adam_time = timed(adam.step, 20)
    sparse_time = timed(sparse.step, 20)

    report = dict(
        test="optimizer_share", device=torch.cuda.get_device_name(), attention_backend=attention_backend(82, DEVICE, torch.bfloat16, 64),
        optimizer=f"{type(adam).__module__}.{type(adam).__name__}", params=sum(p.numel() for p in head.parameters()),
        train_step_ms=round(step_time * 1e3, 2), adam_atan2_step_ms=round(adam_time * 1e3, 3), sign_sgd_step_ms=round(sparse_time * 1e3, 3),
        optimizer_share=round((adam_time + sparse_time) / step_time, 4),
    )  # fmt: skip
    with capsys.disabled():
        print(json.dumps(report))
    assert (adam_time + sparse_time) / step_time < 0.05


class OneSetLoader:
    """What pretrain.evaluate reads of a test loader: the set names, the batch count and (set, batch, effective size)."""

    def __init__(self, batches):
        self.metadata = type("Metadata", (), {"sets": ["all"]})()
        self.batches = batches

    def num_test_batches(self):
        return len(self.batches)

    def __iter__(self):
        return iter([("all", batch, len(batch["inputs"])) for batch in self.batches])


def train_and_evaluate(cuda_graphs: bool, steps: int = 6):
    """The real training step (pretrain.train_batch) on the benchmark's tiny shape, then pretrain.evaluate."""
    shape = SHAPES["tiny"]
    # Exploration off: the comparison is about the graphs' memory, and the two compiled programs may draw
    # their random numbers in another order.
    config = load_config(["data_path=synthetic", f"global_batch_size={shape.batch}", "wandb.mode=disabled", "compile=true",
                          f"cuda_graphs={str(cuda_graphs).lower()}", "lr_warmup_steps=1", "++arch.forward_dtype=bfloat16",
                          "++arch.halt_exploration_prob=0.0"] + [f"++arch.{item}" for item in shape.arch])
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device(DEVICE))
    state = pretrain.build_train_state(config, shape_metadata(shape, 1), context)
    assert isinstance(state.step_fn, pretrain.CudaGraphStep) == cuda_graphs
    batches = synthetic_batches(shape, shape.batch, 1)
    metrics = []
    for step in range(steps):
        pending = pretrain.train_batch(config, state, batches[step % len(batches)], config.global_batch_size, context)
        metrics.append(pretrain.finish_train_metrics(pending, config.global_batch_size))
    evaluation = pretrain.evaluate(config, state, OneSetLoader(batches[:2]), context, save_dir=None)
    return metrics, evaluation, {name: value.detach().float().cpu() for name, value in state.loss_head.state_dict().items()}


def test_cuda_graphs_train_and_evaluate_like_the_compiled_step():
    compiled_metrics, compiled_eval, compiled_weights = train_and_evaluate(cuda_graphs=False)
    graph_metrics, graph_eval, graph_weights = train_and_evaluate(cuda_graphs=True)
    # Several steps: the carry of each step feeds the next, so an overwritten carry would show.
    for expected, actual in zip(compiled_metrics, graph_metrics):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert actual[key] == pytest.approx(expected[key], rel=1e-2, abs=1e-4), key
    for key in compiled_eval["all"]:
        assert graph_eval["all"][key] == pytest.approx(compiled_eval["all"][key], rel=1e-2, abs=1e-4), key
    for name in compiled_weights:
        torch.testing.assert_close(graph_weights[name], compiled_weights[name], rtol=1e-2, atol=1e-3, msg=name)


def test_flash_attention_4_op_matches_sdpa_and_compiles_without_graph_breaks():
    try:
        flash_attn_4_func = _import_flash(FLASH_ATTN_4)
    except ImportError as error:
        pytest.skip(f"flash-attn-4 does not import: {error}")
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("FlashAttention 4 runs on Hopper and newer")
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    # The Sudoku layout: value is a slice of the qkv projection, query and key are RoPE's new tensors.
    qkv = torch.randn(64, 82, 24, 64, device=DEVICE, generator=generator, dtype=torch.bfloat16)
    query, key, value = qkv.split(8, dim=2)
    grad_out = torch.randn(64, 82, 8, 64, device=DEVICE, generator=generator, dtype=torch.bfloat16)

    def outputs_and_grads(attention, dtype):
        inputs = [tensor.detach().to(dtype).requires_grad_() for tensor in (query.contiguous(), key.contiguous(), value)]
        out = attention(*inputs)
        out.backward(grad_out.to(dtype))
        return [out.float()] + [tensor.grad.float() for tensor in inputs]

    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    expected = outputs_and_grads(sdpa, torch.float32)
    eager = outputs_and_grads(flash_attn_4_func, torch.bfloat16)
    compiled = outputs_and_grads(torch.compile(flash_attn_4_func, fullgraph=True), torch.bfloat16)
    for name, want, got_eager, got_compiled in zip(("out", "grad_query", "grad_key", "grad_value"), expected, eager, compiled):
        assert relative_error(got_eager, want) < 1e-2, name
        assert torch.equal(got_compiled, got_eager), name
