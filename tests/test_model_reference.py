"""Our model, ACT wrapper and loss head against vectors recorded from the original HRM (CPU, float32)."""

import os

import pytest
import torch

from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from models.losses import ACTLossHead

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "hrm_reference_public.pt")
OUTPUT_TOL = 1e-4
GRAD_TOL = 1e-3


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.double(), reference.double()
    return ((ours - reference).norm() / reference.norm().clamp_min(1e-12)).item()


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE)


def build_loss_head(reference) -> ACTLossHead:
    head = ACTLossHead(HierarchicalReasoningModel_ACTV1(reference["arch"]), reference["loss_type"])
    head.load_state_dict(reference["state_dict"])
    return head


def assert_close(ours: dict, reference: dict, what: str, tolerance: float = OUTPUT_TOL) -> None:
    assert set(ours) >= set(reference), f"{what}: missing {set(reference) - set(ours)}"
    for key, value in reference.items():
        error = relative_error(ours[key], value)
        assert error <= tolerance, f"{what}[{key}] relative error {error:.3g} (tolerance {tolerance:.3g})"


def assert_compiled_training_call_matches(head: torch.nn.Module, reference: dict) -> None:
    """The first recorded training call through torch.compile without graph breaks (the "aot_eager"
    backend traces forward and backward without generating code): outputs, halting and gradients."""
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    batch = reference["batch"]
    expected = reference["train"][0]

    carry, loss, metrics, outputs, _ = compiled(carry=head.initial_carry(batch), batch=batch, return_keys=list(expected["outputs"]))
    loss.backward()

    assert relative_error(loss, expected["loss"]) <= OUTPUT_TOL
    assert_close(metrics, expected["metrics"], "compiled metrics")
    assert_close(outputs, expected["outputs"], "compiled outputs")
    assert torch.equal(carry.halted, expected["halted"])
    for name, p in head.named_parameters():
        assert relative_error(p.grad, expected["grads"][name]) <= GRAD_TOL, name
    assert relative_error(head.model.puzzle_emb.local_weights.grad, expected["puzzle_emb_grad"]) <= GRAD_TOL


def test_state_dict_keys_match_original(reference):
    head = build_loss_head(reference)
    ours = head.state_dict()
    assert list(ours) == list(reference["state_dict"])
    for key, value in reference["state_dict"].items():
        assert ours[key].shape == value.shape and ours[key].dtype == value.dtype


def test_three_training_calls_match(reference):
    head = build_loss_head(reference).train()
    puzzle_emb = head.model.puzzle_emb
    batch = reference["batch"]
    carry = head.initial_carry(batch)
    for call, expected in enumerate(reference["train"]):
        head.zero_grad(set_to_none=True)
        puzzle_emb.local_weights.grad = None

        carry, loss, metrics, outputs, all_halted = head(carry=carry, batch=batch, return_keys=list(expected["outputs"]))
        loss.backward()

        what = f"train call {call}"
        assert relative_error(loss, expected["loss"]) <= OUTPUT_TOL, what
        assert set(metrics) == set(expected["metrics"]), what
        assert_close(metrics, expected["metrics"], what + " metrics")
        assert_close(outputs, expected["outputs"], what + " outputs")
        assert torch.equal(carry.halted, expected["halted"]), what
        assert torch.equal(carry.steps, expected["steps"]), what
        assert isinstance(all_halted, torch.Tensor) and all_halted.dtype == torch.bool and all_halted.ndim == 0
        assert bool(all_halted) == bool(expected["halted"].all())

        grads = {name: p.grad for name, p in head.named_parameters()}
        assert set(grads) == set(expected["grads"]), what
        for name, grad in expected["grads"].items():
            error = relative_error(grads[name], grad)
            assert error <= GRAD_TOL, f"{what} grad {name} relative error {error:.3g}"
        error = relative_error(puzzle_emb.local_weights.grad, expected["puzzle_emb_grad"])
        assert error <= GRAD_TOL, f"{what} puzzle embedding grad relative error {error:.3g}"


def test_evaluation_matches(reference):
    head = build_loss_head(reference).eval()
    batch = reference["batch"]
    with torch.no_grad():
        carry = head.initial_carry(batch)
        for call, expected in enumerate(reference["eval"]):
            carry, loss, metrics, outputs, all_halted = head(carry=carry, batch=batch, return_keys=list(expected["outputs"]))
            what = f"eval call {call}"
            assert relative_error(loss, expected["loss"]) <= OUTPUT_TOL, what
            assert set(metrics) == set(expected["metrics"]), what
            assert_close(metrics, expected["metrics"], what + " metrics")
            assert_close(outputs, expected["outputs"], what + " outputs")
            # Eval runs every sequence for exactly halt_max_steps segments.
            assert bool(all_halted) == (call == len(reference["eval"]) - 1)
            assert torch.all(carry.steps == call + 1)


def test_compiled_model_matches_reference(reference):
    # torch.compile must trace the whole forward without graph breaks (no host syncs, no branching on
    # tensor values).
    assert_compiled_training_call_matches(build_loss_head(reference).train(), reference)
