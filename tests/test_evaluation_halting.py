"""Test-time compute: the ACT wrapper's evaluation segments and adaptive halting, through the loop
that evaluate.py and solve.py run (pretrain.evaluate_batch), for HRM and TRM."""

import pytest
import torch

import pretrain
from evaluate import set_evaluation_halting
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from models.losses import ACTLossHead
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
from utils.checkpoint import TrainState

SMALL = dict(
    batch_size=4, seq_len=8, puzzle_emb_ndim=16, num_puzzle_identifiers=4, vocab_size=6,
    H_cycles=2, L_cycles=2, H_layers=1, L_layers=1, hidden_size=16, expansion=2, num_heads=2,
    pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.0, forward_dtype="float32",
)  # fmt: skip
MODELS = {"hrm": HierarchicalReasoningModel_ACTV1, "trm": TinyRecursiveReasoningModel_ACTV1}


def make_head(arch: str, **overrides) -> ACTLossHead:
    torch.manual_seed(0)
    config = {**SMALL, **({"puzzle_emb_len": 1} if arch == "trm" else {}), **overrides}
    return ACTLossHead(MODELS[arch](config), "stablemax_cross_entropy").eval()


def make_batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    shape = (SMALL["batch_size"], SMALL["seq_len"])
    return dict(
        inputs=torch.randint(0, SMALL["vocab_size"], shape, generator=generator, dtype=torch.int32),
        labels=torch.randint(0, SMALL["vocab_size"], shape, generator=generator, dtype=torch.int32),
        puzzle_identifiers=torch.randint(0, SMALL["num_puzzle_identifiers"], (SMALL["batch_size"],), generator=generator, dtype=torch.int32),
    )


def count_inner_calls(head: ACTLossHead) -> list:
    calls = []
    head.model.inner.register_forward_hook(lambda module, args, output: calls.append(1))
    return calls


def run_batch(head: ACTLossHead, batch: dict, step_fn=None):
    state = TrainState(loss_head=head, step_fn=head if step_fn is None else step_fn, optimizers=[], base_lrs=[], carries=None, step=0, total_steps=0)
    with torch.inference_mode():
        return pretrain.evaluate_batch(state, batch, ["preds", "logits", "q_halt_logits"])


def set_q_head(head: ACTLossHead, halt_bias: float, continue_bias: float) -> None:
    with torch.no_grad():
        head.model.inner.q_head.weight.zero_()
        head.model.inner.q_head.bias.copy_(torch.tensor([halt_bias, continue_bias]))


@pytest.mark.parametrize("arch", ["hrm", "trm"])
@pytest.mark.parametrize("segments", [None, 1, 5, 8])
def test_the_segment_count_sets_the_inner_calls(arch, segments):
    head = make_head(arch)
    set_q_head(head, halt_bias=10.0, continue_bias=-10.0)  # would halt at once: fixed-count evaluation ignores it
    calls = count_inner_calls(head)
    set_evaluation_halting(head.model, segments, adaptive=False)
    carry, metrics, _ = run_batch(head, make_batch())
    expected = segments or SMALL["halt_max_steps"]
    assert len(calls) == expected
    assert torch.all(carry.steps == expected) and carry.halted.all()
    assert metrics["steps"].item() == expected * metrics["count"].item()


def test_more_segments_extend_the_same_computation():
    # The first 3 of 5 segments are the 3 segments of training's halt_max_steps: the count only moves the end.
    head, batch = make_head("hrm"), make_batch()
    set_evaluation_halting(head.model, 3, adaptive=False)
    _, _, three = run_batch(head, batch)
    set_evaluation_halting(head.model, 5, adaptive=False)
    with torch.inference_mode():
        carry = head.initial_carry(batch)
        for _ in range(3):
            carry, _, _, outputs, all_halted = head(carry=carry, batch=batch, return_keys=["logits"])
    assert not all_halted
    assert torch.equal(outputs["logits"], three["logits"])


@pytest.mark.parametrize("arch, halt_bias, continue_bias", [("hrm", 2.0, -2.0), ("trm", 2.0, 5.0)])
def test_adaptive_halting_stops_an_easy_batch_after_one_segment(arch, halt_bias, continue_bias):
    # HRM's rule is q_halt > q_continue; TRM's (no_ACT_continue) q_halt > 0, whatever q_continue says.
    head = make_head(arch)
    set_q_head(head, halt_bias, continue_bias)
    calls = count_inner_calls(head)
    set_evaluation_halting(head.model, 8, adaptive=True)
    carry, metrics, _ = run_batch(head, make_batch())
    assert len(calls) == 1
    assert torch.all(carry.steps == 1)
    assert metrics["steps"].item() / metrics["count"].item() == 1.0


@pytest.mark.parametrize("arch, halt_bias, continue_bias", [("hrm", -2.0, 2.0), ("trm", -2.0, -5.0)])
def test_adaptive_halting_runs_to_the_cap_when_no_sequence_halts(arch, halt_bias, continue_bias):
    head = make_head(arch)
    set_q_head(head, halt_bias, continue_bias)
    calls = count_inner_calls(head)
    set_evaluation_halting(head.model, 6, adaptive=True)
    carry, metrics, _ = run_batch(head, make_batch())
    assert len(calls) == 6 and torch.all(carry.steps == 6)
    assert metrics["count"].item() > 0 and metrics["steps"].item() == 6 * metrics["count"].item()


def halting_schedule(head: ACTLossHead, stop_at: torch.Tensor, monkeypatch) -> list:
    """Make the Q head of row r say halt from the inner model's call stop_at[r] on (TRM's rule)."""
    inner = head.model.inner
    real_forward, calls = inner.forward, []

    def forward(carry, batch):
        calls.append(1)
        new_carry, logits, (q_halt, q_continue) = real_forward(carry, batch)
        return new_carry, logits, (torch.where(stop_at <= len(calls), 10.0, -10.0), q_continue)

    monkeypatch.setattr(inner, "forward", forward)
    return calls


def test_each_sequence_keeps_the_answer_of_the_segment_it_stopped_at(monkeypatch):
    stop_at = torch.tensor([1, 3, 2, 9])  # the last row never halts within the cap of 5
    head = make_head("trm")
    calls = halting_schedule(head, stop_at, monkeypatch)
    set_evaluation_halting(head.model, 5, adaptive=True)
    carry, metrics, outputs = run_batch(head, make_batch())
    assert len(calls) == 5
    assert carry.steps.tolist() == [1, 3, 2, 5]
    assert metrics["steps"].item() == 1 + 3 + 2 + 5 and metrics["count"].item() == 4

    # Each row's answer is the one a fixed evaluation of its step count gives.
    monkeypatch.undo()
    for row, steps in enumerate(carry.steps.tolist()):
        set_evaluation_halting(head.model, steps, adaptive=False)
        _, _, fixed = run_batch(head, make_batch())
        torch.testing.assert_close(outputs["logits"][row], fixed["logits"][row], rtol=1e-5, atol=1e-6)
        assert torch.equal(outputs["preds"][row], fixed["preds"][row])


def test_adaptive_halting_compiles_without_graph_breaks():
    head = make_head("trm")
    set_q_head(head, halt_bias=2.0, continue_bias=0.0)
    set_evaluation_halting(head.model, 4, adaptive=True)
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    carry, metrics, _ = run_batch(head, make_batch(), step_fn=compiled)
    assert torch.all(carry.steps == 1)


def test_training_ignores_the_evaluation_settings():
    batch = make_batch()
    plain, changed = make_head("hrm").train(), make_head("hrm").train()
    set_evaluation_halting(changed.model, 1, adaptive=True)
    for head in (plain, changed):
        set_q_head(head, halt_bias=-2.0, continue_bias=2.0)
    results = []
    for head in (plain, changed):
        torch.manual_seed(1)
        carry = head.initial_carry(batch)
        for _ in range(SMALL["halt_max_steps"]):
            carry, loss, _, _, _ = head(carry=carry, batch=batch, return_keys=[])
        results.append((carry.steps.clone(), carry.halted.clone(), loss.detach()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert torch.equal(results[0][2], results[1][2])
    assert results[1][1].all()  # halted at halt_max_steps, not after the evaluation cap of 1
