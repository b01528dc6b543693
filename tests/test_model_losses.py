"""Token losses and the loss head's contract (keys, outputs, metrics on a hand-made case)."""

import pytest
import torch
import torch.nn.functional as F

from models.losses import ACTLossHead, softmax_cross_entropy, stablemax_cross_entropy
from tests.test_model_act import SMALL, make_batch, make_head


def test_stablemax_cross_entropy_follows_its_definition():
    logits = torch.tensor([[[-2.0, 0.0, 3.0], [1.0, -0.5, 0.25]]])
    labels = torch.tensor([[2, -100]])
    s = torch.where(logits < 0, 1 / (1 - logits), logits + 1).double()
    expected_first = -torch.log(s[0, 0, 2] / s[0, 0].sum())
    losses = stablemax_cross_entropy(logits, labels)
    assert losses.dtype == torch.float64
    assert torch.allclose(losses[0, 0], expected_first) and losses[0, 1] == 0


def test_stablemax_gradient_is_finite_where_a_logit_is_exactly_one():
    logits = torch.tensor([[[1.0, -1.0, 0.5]]], dtype=torch.bfloat16, requires_grad=True)
    stablemax_cross_entropy(logits, torch.tensor([[2]])).sum().backward()
    assert torch.isfinite(logits.grad.float()).all()


def test_softmax_cross_entropy_matches_torch():
    logits = torch.randn(2, 5, 4)
    labels = torch.randint(0, 4, (2, 5))
    labels[0, 0] = -100
    expected = F.cross_entropy(logits.view(-1, 4), labels.view(-1), ignore_index=-100, reduction="none").view(2, 5)
    assert torch.allclose(softmax_cross_entropy(logits, labels.to(torch.int32)), expected)


def test_unknown_loss_type_is_rejected():
    with pytest.raises(ValueError, match="stablemax_cross_entropy, softmax_cross_entropy"):
        ACTLossHead(make_head().model, "cross_entropy")


@pytest.mark.parametrize("loss_type", ["stablemax_cross_entropy", "softmax_cross_entropy"])
def test_loss_is_lm_plus_half_q_losses(loss_type):
    head = make_head().train()
    head = ACTLossHead(head.model, loss_type)
    batch = make_batch(SMALL)
    carry, loss, metrics, outputs, all_halted = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits", "target_q_continue", "missing"])
    assert set(outputs) == {"logits", "target_q_continue"} and not outputs["logits"].requires_grad
    assert torch.allclose(loss, metrics["lm_loss"] + 0.5 * (metrics["q_halt_loss"] + metrics["q_continue_loss"]))
    assert set(metrics) == {"count", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "lm_loss", "q_halt_loss", "q_continue_loss"}
    assert all_halted.dtype == torch.bool and all_halted.ndim == 0


def test_metrics_count_halted_labelled_sequences():
    head = make_head(halt_max_steps=1).eval()
    batch = make_batch(SMALL)
    with torch.no_grad():
        logits = head.model(head.initial_carry(batch), batch)[1]["logits"]
    preds = logits.argmax(-1)
    # Sequence 0: exactly right; 1: one labelled token wrong; 2: no labels at all.
    labels = preds.to(torch.int32).clone()
    labels[:, :2] = -100
    labels[1, 5] = (labels[1, 5] + 1) % SMALL["vocab_size"]
    labels[2] = -100
    batch["labels"] = labels

    with torch.no_grad():
        carry, loss, metrics, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["preds"])
    assert torch.equal(outputs["preds"], preds)
    assert metrics["count"] == 2
    assert metrics["exact_accuracy"] == 1
    assert torch.isclose(metrics["accuracy"], torch.tensor(1.0 + 5 / 6))
    assert metrics["steps"] == 2
    # q_halt starts at -5 (predicts "wrong"): right for sequence 1 only.
    assert metrics["q_halt_accuracy"] == 1
