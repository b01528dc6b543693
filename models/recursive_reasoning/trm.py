"""Tiny Recursive Model (TRM) with adaptive computation time (ACT), version 1.

One small network, L_level, refines two states: the answer z_H ("y") and a latent z_L ("z"). A
recursion updates the latent L_cycles times from the answer and the input, then the answer from the
latent. One segment (one call of the inner model) runs H_cycles recursions, all but the last
without gradient; the last backpropagates through all of its updates. The ACT wrapper
(models/act.py) carries (z_H, z_L) across calls; by default it halts on the Q head's q_halt alone,
with no second segment (no_ACT_continue).

Built on HRM's parts: its layers (models/layers.py), its reasoning-module stack and config, the
shared embeddings, heads and carry (models/recurrent_inner.py) and the shared ACT wrapper.
"""

from typing import ClassVar, Literal, Optional, Tuple

import torch
from pydantic import field_validator, model_validator
from torch import nn

from models.act import ACTCarry, ACTWrapper
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1Config, HierarchicalReasoningModel_ACTV1ReasoningModule
from models.layers import Attention, CosSin, SwiGLU, rms_norm
from models.recurrent_inner import InnerCarry, RecurrentInner


class TinyRecursiveReasoningModel_ACTV1Config(HierarchicalReasoningModel_ACTV1Config):
    """HRM's keys with TRM's meanings and defaults, plus mlp_t and puzzle_emb_len."""

    model_name: ClassVar[str] = "TRM"

    H_layers: int = 0  # ignored: TRM has one network, of L_layers blocks
    pos_encodings: Literal["rope", "learned", "none"]
    # Mix positions with a SwiGLU across the token axis instead of attention (TRM's Sudoku recipe).
    mlp_t: bool = False
    # Positions in front of the tokens for the puzzle embedding; 0: ceil(puzzle_emb_ndim / hidden_size).
    puzzle_emb_len: int = 16
    no_ACT_continue: bool = True

    # HRM's check without H_layers, which TRM ignores (its recipes set 0).
    @field_validator("batch_size", "seq_len", "num_puzzle_identifiers", "vocab_size", "H_cycles", "L_cycles",
                     "L_layers", "hidden_size", "num_heads", "halt_max_steps")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _check_puzzle_positions(self) -> "TinyRecursiveReasoningModel_ACTV1Config":
        if self.puzzle_emb_len < 0:
            raise ValueError(f"puzzle_emb_len={self.puzzle_emb_len} must be >= 0 (0: as many positions as the puzzle embedding needs)")
        needed = -(self.puzzle_emb_ndim // -self.hidden_size)
        if self.puzzle_emb_len and self.puzzle_emb_len < needed:
            raise ValueError(
                f"puzzle_emb_ndim={self.puzzle_emb_ndim} does not fit in puzzle_emb_len={self.puzzle_emb_len} positions of "
                f"hidden_size={self.hidden_size}: set puzzle_emb_len to at least {needed}, or to 0 for exactly that many"
            )
        return self

    @property
    def puzzle_positions(self) -> int:
        """P: the positions in front of the tokens."""
        return self.puzzle_emb_len or -(self.puzzle_emb_ndim // -self.hidden_size)


# The carries under the original's names.
TinyRecursiveReasoningModel_ACTV1InnerCarry = InnerCarry
TinyRecursiveReasoningModel_ACTV1Carry = ACTCarry


class TinyRecursiveReasoningModel_ACTV1Block(nn.Module):
    """Post-norm block: mix positions (attention, or with mlp_t a SwiGLU across them), then a SwiGLU
    across channels; each added to its input and RMS-normalised."""

    def __init__(self, config: TinyRecursiveReasoningModel_ACTV1Config):
        super().__init__()
        self.mixes_with_mlp = config.mlp_t
        if config.mlp_t:
            self.mlp_t = SwiGLU(hidden_size=config.seq_len + config.puzzle_positions, expansion=config.expansion)
        else:
            self.self_attn = Attention(hidden_size=config.hidden_size, num_heads=config.num_heads)
        self.mlp = SwiGLU(hidden_size=config.hidden_size, expansion=config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
        if self.mixes_with_mlp:
            # [batch, positions, hidden] -> [batch, hidden, positions]: the SwiGLU, its residual and
            # the RMSNorm all act on the position axis.
            transposed = hidden_states.transpose(1, 2)
            hidden_states = rms_norm(transposed + self.mlp_t(transposed), self.norm_eps).transpose(1, 2)
        else:
            hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin=cos_sin, hidden_states=hidden_states), self.norm_eps)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class TinyRecursiveReasoningModel_ACTV1_Inner(RecurrentInner):
    """One segment: H_cycles recursions of L_level over (answer z_H, latent z_L)."""

    def __init__(self, config: TinyRecursiveReasoningModel_ACTV1Config):
        super().__init__(config, puzzle_emb_len=config.puzzle_positions)
        # HRM's stack of blocks, each step adding its input injection first: L_level(h, x) = blocks(h + x).
        self.L_level = HierarchicalReasoningModel_ACTV1ReasoningModule(
            [TinyRecursiveReasoningModel_ACTV1Block(config) for _ in range(config.L_layers)]
        )
        self.register_initial_states()

    def _recursion(
        self, z_H: torch.Tensor, z_L: torch.Tensor, input_embeddings: torch.Tensor, cos_sin: Optional[CosSin]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        for _ in range(self.config.L_cycles):
            z_L = self.L_level(z_L, z_H + input_embeddings, cos_sin)
        z_H = self.L_level(z_H, z_L, cos_sin)
        return z_H, z_L

    def cycles(
        self, z_H: torch.Tensor, z_L: torch.Tensor, input_embeddings: torch.Tensor, cos_sin: Optional[CosSin]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self._recursion(z_H, z_L, input_embeddings, cos_sin)
        # The last recursion with gradient, through every one of its updates.
        return self._recursion(z_H, z_L, input_embeddings, cos_sin)


class TinyRecursiveReasoningModel_ACTV1(ACTWrapper):
    """TRM's inner model in the shared ACT wrapper (models/act.py): carry, resets, halting, Q targets."""

    def __init__(self, config_dict: dict):
        config = TinyRecursiveReasoningModel_ACTV1Config.from_dict(config_dict)
        super().__init__(config, TinyRecursiveReasoningModel_ACTV1_Inner(config))
