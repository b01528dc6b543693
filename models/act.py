"""Adaptive computation time (ACT): the wrapper that HRM and TRM share.

The inner model runs one segment: it refines its carried states and reads an answer and two Q
values (halt, continue) off them. This wrapper carries the states from call to call and decides,
per sequence, when to stop. In training a sequence stops when its Q head says so (or at
halt_max_steps); in evaluation every sequence runs exactly halt_max_steps segments, so that the
batch's sequences stay aligned.

Evaluation may think longer or shorter than training did: `eval_max_steps` replaces halt_max_steps
there. With `eval_adaptive_halting` each sequence stops where its Q head says so, eval_max_steps (or
halt_max_steps) being the cap; a stopped sequence then waits, its answer kept, until the whole
batch has stopped (each evaluation batch starts from `initial_carry`).

Two halting rules, chosen by the config's `no_ACT_continue`:
- false (HRM's original): halt where q_halt > q_continue; q_continue learns a Q-learning target
  that one more, gradient-free, segment on the new carry provides.
- true (TRM's default): halt where q_halt > 0, with q_halt learning whether the answer is right; no
  second segment and no q_continue target (so no q_continue loss in the loss head).
"""

from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn


@dataclass
class ACTCarry:
    inner_carry: Any  # the inner model's states, from its empty_carry / reset_carry / forward
    steps: torch.Tensor  # int32 [batch]: segments run on the current data
    halted: torch.Tensor  # bool [batch]: finished; replaced by new data at the next call
    current_data: Dict[str, torch.Tensor]


class ACTWrapper(nn.Module):
    """Per call: reset finished sequences, run one segment of `inner`, decide who halts.

    `config` has halt_max_steps, halt_exploration_prob and no_ACT_continue. `inner` has
    `empty_carry(batch_size, device)`, `reset_carry(flags, carry)`, and
    `forward(carry, batch) -> (carry, logits, (q_halt_logits, q_continue_logits))`.
    """

    def __init__(self, config, inner: nn.Module):
        super().__init__()
        self.config = config
        self.inner = inner
        # Evaluation settings, set by the code that evaluates (not part of the config or the state dict).
        self.eval_max_steps: Optional[int] = None  # None: halt_max_steps
        self.eval_adaptive_halting = False

    @property
    def evaluation_steps(self) -> int:
        """The most segments a sequence runs in evaluation."""
        return self.eval_max_steps or self.config.halt_max_steps

    def q_says_halt(self, q_halt_logits: torch.Tensor, q_continue_logits: torch.Tensor) -> torch.Tensor:
        """The Q head's halting rule, chosen by `no_ACT_continue`."""
        if self.config.no_ACT_continue:
            return q_halt_logits > 0
        return q_halt_logits > q_continue_logits

    @property
    def puzzle_emb(self) -> nn.Module:
        return self.inner.puzzle_emb

    def initial_carry(self, batch: Dict[str, torch.Tensor]) -> ACTCarry:
        batch_size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return ACTCarry(
            inner_carry=self.inner.empty_carry(batch_size, device),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            # All halted, so the first call loads every sequence from the batch and resets its state.
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: ACTCarry, batch: Dict[str, torch.Tensor]) -> Tuple[ACTCarry, Dict[str, torch.Tensor]]:
        adaptive = not self.training and self.eval_adaptive_halting
        # Sequences that halted last call start over on the new batch's rows; in adaptive evaluation
        # those that stopped after a segment or more stay stopped instead.
        halted = carry.halted
        if adaptive:
            stopped = carry.halted & (carry.steps > 0)
            halted = carry.halted & ~stopped
        start_carry = self.inner.reset_carry(halted, carry.inner_carry)
        steps = torch.where(halted, 0, carry.steps)
        current_data = {k: torch.where(halted.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v) for k, v in carry.current_data.items()}

        inner_carry, logits, (q_halt_logits, q_continue_logits) = self.inner(start_carry, current_data)
        outputs = {"logits": logits, "q_halt_logits": q_halt_logits, "q_continue_logits": q_continue_logits}

        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= (self.config.halt_max_steps if self.training else self.evaluation_steps)
            halted = is_last_step

            # Eval runs every sequence for evaluation_steps segments, so batches stay aligned (unless adaptive).
            if self.training and self.config.halt_max_steps > 1:
                halted = halted | self.q_says_halt(q_halt_logits, q_continue_logits)

                # Exploration: with probability halt_exploration_prob, a sequence must run for at
                # least a random number of steps in [2, halt_max_steps].
                explore = torch.rand_like(q_halt_logits) < self.config.halt_exploration_prob
                min_halt_steps = explore * torch.randint_like(steps, low=2, high=self.config.halt_max_steps + 1)
                halted = halted & (steps >= min_halt_steps)

                if not self.config.no_ACT_continue:
                    # Q-learning target for "continue": the value of the next segment's best action,
                    # from one more (gradient-free) segment on the new carry.
                    _, _, (next_q_halt, next_q_continue) = self.inner(inner_carry, current_data)
                    outputs["target_q_continue"] = torch.sigmoid(
                        torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue))
                    )
            elif adaptive:
                # A halted sequence keeps its step count and the state its last segment started
                # from, so the next call runs that segment again: the same answer and Q values.
                steps = torch.where(stopped, carry.steps, steps)
                halted = stopped | is_last_step | self.q_says_halt(q_halt_logits, q_continue_logits)
                inner_carry = _select_rows(halted, start_carry, inner_carry)

        return ACTCarry(inner_carry, steps, halted, current_data), outputs


def _select_rows(rows: torch.Tensor, chosen: Any, other: Any) -> Any:
    """An inner carry (a dataclass of [batch, ...] tensors) with `chosen`'s rows where `rows` is true, `other`'s elsewhere."""
    values = {}
    for field in fields(chosen):
        value = getattr(chosen, field.name)
        values[field.name] = torch.where(rows.view((-1,) + (1,) * (value.ndim - 1)), value, getattr(other, field.name))
    return type(chosen)(**values)
