"""The ends of a recurrent reasoning model's segment: what HRM-style inner models have in common.

An inner model embeds the puzzle (tokens, puzzle-embedding positions in front, positions), refines
two carried states z_H and z_L for one segment, and reads the answer (LM head, from z_H after the
puzzle positions) and the halt/continue Q values (Q head, from z_H at position 0) off the result.
Subclasses build their reasoning modules and define the refinement (`cycles`); this base builds the
embeddings and heads, the initial states, and the carry.
"""

import abc
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.common import trunc_normal_init_
from models.layers import CastedEmbedding, CastedLinear, CosSin, RotaryEmbedding
from models.sparse_embedding import CastedSparseEmbedding


@dataclass
class InnerCarry:
    z_H: torch.Tensor  # [batch, puzzle_emb_len + seq_len, hidden]
    z_L: torch.Tensor


class RecurrentInner(nn.Module, abc.ABC):
    """Embeddings, heads and initial states of an inner model; subclasses add the reasoning modules.

    `config` has the arch keys (hidden_size, vocab_size, seq_len, puzzle_emb_ndim,
    num_puzzle_identifiers, batch_size, num_heads, pos_encodings "rope" | "learned" | "none",
    rope_theta, forward_dtype). `puzzle_emb_len` positions in front of the tokens hold the puzzle
    embedding, zero-padded (all zeros where puzzle_emb_ndim is 0).

    A subclass's __init__ calls this one, builds its reasoning modules, then
    `register_initial_states()`: the order in which the original draws its random weights.
    """

    def __init__(self, config, puzzle_emb_len: int):
        super().__init__()
        self.config = config
        self.forward_dtype = getattr(torch, config.forward_dtype)
        self.puzzle_emb_len = puzzle_emb_len

        hidden = config.hidden_size
        self.embed_scale = math.sqrt(hidden)
        embed_init_std = 1.0 / self.embed_scale

        self.embed_tokens = CastedEmbedding(config.vocab_size, hidden, init_std=embed_init_std, cast_to=self.forward_dtype)
        self.lm_head = CastedLinear(hidden, config.vocab_size, bias=False)
        self.q_head = CastedLinear(hidden, 2, bias=True)

        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedSparseEmbedding(
                config.num_puzzle_identifiers, config.puzzle_emb_ndim, batch_size=config.batch_size, init_std=0, cast_to=self.forward_dtype
            )

        total_len = config.seq_len + puzzle_emb_len
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(dim=hidden // config.num_heads, max_position_embeddings=total_len, base=config.rope_theta)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(total_len, hidden, init_std=embed_init_std, cast_to=self.forward_dtype)

        # Q head starts by strongly preferring "continue" (sigmoid(-5) ~ 0.007 for both logits).
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    def register_initial_states(self) -> None:
        """The starting states of a fresh sequence: fixed random vectors, saved with the model."""
        hidden = self.config.hidden_size
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(hidden), std=1).to(self.forward_dtype), persistent=True)
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(hidden), std=1).to(self.forward_dtype), persistent=True)

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        hidden = self.config.hidden_size
        embedding = self.embed_tokens(inputs.to(torch.int32))

        if self.puzzle_emb_len > 0:
            if self.config.puzzle_emb_ndim > 0:
                puzzle_embedding = self.puzzle_emb(puzzle_identifiers)
            else:
                puzzle_embedding = embedding.new_zeros(embedding.shape[0], 0)
            pad_count = self.puzzle_emb_len * hidden - puzzle_embedding.shape[-1]
            if pad_count > 0:
                puzzle_embedding = F.pad(puzzle_embedding, (0, pad_count))
            embedding = torch.cat((puzzle_embedding.view(-1, self.puzzle_emb_len, hidden), embedding), dim=-2)

        if self.config.pos_encodings == "learned":
            # Scale the sum by 1/sqrt(2) to keep the forward variance of one embedding.
            embedding = (1 / math.sqrt(2)) * (embedding + self.embed_pos.embedding_weight.to(self.forward_dtype))

        return self.embed_scale * embedding

    def empty_carry(self, batch_size: int, device: torch.device) -> InnerCarry:
        # Placeholder states: every sequence is reset from H_init/L_init before its first use.
        shape = (batch_size, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        return InnerCarry(
            z_H=torch.zeros(shape, dtype=self.forward_dtype, device=device),
            z_L=torch.zeros(shape, dtype=self.forward_dtype, device=device),
        )

    def reset_carry(self, reset_flag: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        flag = reset_flag.view(-1, 1, 1)
        return InnerCarry(z_H=torch.where(flag, self.H_init, carry.z_H), z_L=torch.where(flag, self.L_init, carry.z_L))

    @abc.abstractmethod
    def cycles(
        self, z_H: torch.Tensor, z_L: torch.Tensor, input_embeddings: torch.Tensor, cos_sin: Optional[CosSin]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One segment's refinement of (z_H, z_L); the returned states carry the gradient to train."""

    def forward(self, carry: InnerCarry, batch: Dict[str, torch.Tensor]) -> Tuple[InnerCarry, torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        cos_sin = self.rotary_emb() if self.config.pos_encodings == "rope" else None
        input_embeddings = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, z_L = self.cycles(carry.z_H, carry.z_L, input_embeddings, cos_sin)

        new_carry = InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return new_carry, logits, (q_logits[..., 0], q_logits[..., 1])
