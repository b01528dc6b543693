"""Token losses and the ACT loss head: LM loss, Q-halt and Q-continue losses, and metrics."""

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL_ID = -100


def _stablemax_s(x: torch.Tensor) -> torch.Tensor:
    # s(x) = 1/(1-x) for x < 0, x+1 otherwise: positive, increasing, and only linear for large x,
    # so it does not saturate like exp does. The clamp keeps the unused branch finite: at x = 1
    # (common in bfloat16) 1/(1-x) is inf, and where's backward would turn 0 * inf into NaN.
    return torch.where(x < 0, 1 / (1 - x.clamp(max=0)), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s_x = _stablemax_s(x)
    return torch.log(s_x / s_x.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token cross-entropy under stablemax, in float64; 0 at ignored positions."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    valid_mask = labels != ignore_index
    safe_labels = torch.where(valid_mask, labels, 0).to(torch.long)
    label_logprobs = torch.gather(logprobs, index=safe_labels.unsqueeze(-1), dim=-1).squeeze(-1)
    return -torch.where(valid_mask, label_logprobs, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token softmax cross-entropy in float32; 0 at ignored positions."""
    # reshape, not view: logits sliced past the puzzle positions are not contiguous.
    losses = F.cross_entropy(
        logits.to(torch.float32).reshape(-1, logits.shape[-1]), labels.to(torch.long).reshape(-1), ignore_index=ignore_index, reduction="none"
    )
    return losses.view(labels.shape)


LOSS_FUNCTIONS = {"stablemax_cross_entropy": stablemax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


class ACTLossHead(nn.Module):
    """Wraps the ACT model: runs one call and returns the loss and raw (summed) metrics.

    Loss = LM loss + 0.5 * (Q-halt loss + Q-continue loss), each summed over the batch; the LM loss
    of a sequence is its token losses averaged over labelled positions. Metrics count only the
    sequences that halted in this call and have at least one label.
    """

    def __init__(self, model: nn.Module, loss_type: str):
        super().__init__()
        if loss_type not in LOSS_FUNCTIONS:
            raise ValueError(f"Unknown loss_type '{loss_type}': use one of {', '.join(LOSS_FUNCTIONS)} (arch.loss.loss_type).")
        self.model = model
        self.loss_fn = LOSS_FUNCTIONS[loss_type]

    def initial_carry(self, *args, **kwargs):
        return self.model.initial_carry(*args, **kwargs)

    def forward(
        self, return_keys: Sequence[str], **model_kwargs
    ) -> Tuple[object, torch.Tensor, Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]:
        new_carry, outputs = self.model(**model_kwargs)
        labels = new_carry.current_data["labels"]

        with torch.no_grad():
            preds = torch.argmax(outputs["logits"], dim=-1)
            mask = labels != IGNORE_LABEL_ID
            loss_counts = mask.sum(-1)
            loss_divisor = loss_counts.clamp_min(1).unsqueeze(-1)  # sequences without labels: no NaN

            is_correct = mask & (preds == labels)
            seq_is_correct = is_correct.sum(-1) == loss_counts

            valid_metrics = new_carry.halted & (loss_counts > 0)
            metrics = {
                "count": valid_metrics.sum(),
                "accuracy": torch.where(valid_metrics, (is_correct.to(torch.float32) / loss_divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid_metrics & seq_is_correct).sum(),
                "q_halt_accuracy": (valid_metrics & ((outputs["q_halt_logits"] >= 0) == seq_is_correct)).sum(),
                "steps": torch.where(valid_metrics, new_carry.steps, 0).sum(),
            }

        lm_loss = (self.loss_fn(outputs["logits"], labels, ignore_index=IGNORE_LABEL_ID) / loss_divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(
            outputs["q_halt_logits"], seq_is_correct.to(outputs["q_halt_logits"].dtype), reduction="sum"
        )
        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = q_halt_loss.detach()

        q_loss = q_halt_loss
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
            metrics["q_continue_loss"] = q_continue_loss.detach()
            q_loss = q_halt_loss + q_continue_loss

        outputs["preds"] = preds
        detached_outputs = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return new_carry, lm_loss + 0.5 * q_loss, metrics, detached_outputs, new_carry.halted.all()
