"""Hierarchical Reasoning Model with adaptive computation time (ACT), version 1.

Two recurrent transformer modules refine two states: a fast low-level state z_L and a slow
high-level state z_H. One segment (one call of the inner model) runs H_cycles high-level updates,
each after L_cycles low-level updates, and backpropagates only through the last of each (the
one-step gradient approximation). The ACT wrapper carries (z_H, z_L) across calls and decides per
sequence when to stop, with a Q-head trained to predict whether the answer is already right.
"""

from typing import ClassVar, List, Literal, Optional, Tuple, Union

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from torch import nn

from models.act import ACTCarry, ACTWrapper
from models.layers import Attention, CosSin, SwiGLU, rms_norm
from models.recurrent_inner import InnerCarry, RecurrentInner


# What arch.fused_kernels may list: the kernel families and mlp_t layouts of models/fused/.
FUSED_KERNEL_CHOICES = ("block", "swiglu", "mlp", "mlp_t_padded", "mlp_t_left")


class HierarchicalReasoningModel_ACTV1Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_name: ClassVar[str] = "HRM"  # in messages

    batch_size: int
    seq_len: int
    puzzle_emb_ndim: int = 0
    num_puzzle_identifiers: int
    vocab_size: int

    H_cycles: int
    L_cycles: int
    H_layers: int
    L_layers: int

    hidden_size: int
    expansion: float
    num_heads: int
    pos_encodings: Literal["rope", "learned"]
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    halt_max_steps: int
    halt_exploration_prob: float
    # True: halt on q_halt > 0 alone, without the second segment for the q_continue target (models/act.py).
    no_ACT_continue: bool = False

    forward_dtype: str = "bfloat16"
    # Opt-in speed code (models/fused/), which pretrain.py applies to the built model; the model itself
    # ignores this key. true: every fused kernel family; or a list of families and mlp_t layouts.
    fused_kernels: Union[bool, List[str]] = False

    @field_validator("batch_size", "seq_len", "num_puzzle_identifiers", "vocab_size", "H_cycles", "L_cycles",
                     "H_layers", "L_layers", "hidden_size", "num_heads", "halt_max_steps")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @field_validator("fused_kernels")
    @classmethod
    def _known_fused_kernels(cls, value: Union[bool, List[str]]) -> Union[bool, List[str]]:
        unknown = [name for name in value if name not in FUSED_KERNEL_CHOICES] if isinstance(value, list) else []
        if unknown:
            raise ValueError(f"unknown {unknown}: give true (every kernel family), false, or a list of {', '.join(FUSED_KERNEL_CHOICES)}")
        return value

    @field_validator("forward_dtype")
    @classmethod
    def _float_dtype(cls, value: str) -> str:
        if not isinstance(getattr(torch, value, None), torch.dtype) or not getattr(torch, value).is_floating_point:
            raise ValueError(f"'{value}' is not a torch floating-point dtype; use e.g. 'bfloat16' (GPU) or 'float32' (CPU)")
        return value

    @model_validator(mode="after")
    def _check_shapes(self) -> "HierarchicalReasoningModel_ACTV1Config":
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        if self.puzzle_emb_ndim < 0:
            raise ValueError(f"puzzle_emb_ndim={self.puzzle_emb_ndim} must be >= 0 (0 disables the puzzle embedding)")
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            raise ValueError(f"halt_exploration_prob={self.halt_exploration_prob} must be in [0, 1]")
        return self

    @classmethod
    def from_dict(cls, config_dict: dict):
        unknown = sorted(set(config_dict) - set(cls.model_fields))
        if unknown:
            raise ValueError(
                f"Unknown {cls.model_name} config keys: {', '.join(unknown)}. Valid keys are {', '.join(cls.model_fields)}; "
                "remove the unknown ones or fix their spelling (in config/arch/*.yaml or the arch.* overrides)."
            )
        return cls(**config_dict)


# The carries under the original's names.
HierarchicalReasoningModel_ACTV1InnerCarry = InnerCarry
HierarchicalReasoningModel_ACTV1Carry = ACTCarry


class HierarchicalReasoningModel_ACTV1Block(nn.Module):
    """Post-norm transformer block: x = rms(x + attn(x)); x = rms(x + mlp(x))."""

    def __init__(self, config: HierarchicalReasoningModel_ACTV1Config):
        super().__init__()
        self.self_attn = Attention(hidden_size=config.hidden_size, num_heads=config.num_heads)
        self.mlp = SwiGLU(hidden_size=config.hidden_size, expansion=config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin=cos_sin, hidden_states=hidden_states), self.norm_eps)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class HierarchicalReasoningModel_ACTV1ReasoningModule(nn.Module):
    """A stack of blocks that first adds its input injection to the state it updates."""

    def __init__(self, layers: List[HierarchicalReasoningModel_ACTV1Block]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, input_injection: torch.Tensor, cos_sin: Optional[CosSin]) -> torch.Tensor:
        hidden_states = hidden_states + input_injection
        for layer in self.layers:
            hidden_states = layer(cos_sin=cos_sin, hidden_states=hidden_states)
        return hidden_states


class HierarchicalReasoningModel_ACTV1_Inner(RecurrentInner):
    """One segment: the nested H/L recurrence between the shared input embedding and heads
    (models/recurrent_inner.py)."""

    def __init__(self, config: HierarchicalReasoningModel_ACTV1Config):
        # The puzzle embedding takes ceil(puzzle_emb_ndim / hidden) positions in front of the tokens.
        super().__init__(config, puzzle_emb_len=-(config.puzzle_emb_ndim // -config.hidden_size))
        self.H_level = HierarchicalReasoningModel_ACTV1ReasoningModule([HierarchicalReasoningModel_ACTV1Block(config) for _ in range(config.H_layers)])
        self.L_level = HierarchicalReasoningModel_ACTV1ReasoningModule([HierarchicalReasoningModel_ACTV1Block(config) for _ in range(config.L_layers)])
        self.register_initial_states()

    def cycles(
        self, z_H: torch.Tensor, z_L: torch.Tensor, input_embeddings: torch.Tensor, cos_sin: Optional[CosSin]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        H_cycles, L_cycles = self.config.H_cycles, self.config.L_cycles

        # All updates but the final L and H ones run without gradient.
        with torch.no_grad():
            for h in range(H_cycles):
                for l in range(L_cycles):
                    if not (h == H_cycles - 1 and l == L_cycles - 1):
                        z_L = self.L_level(z_L, z_H + input_embeddings, cos_sin)
                if h != H_cycles - 1:
                    z_H = self.H_level(z_H, z_L, cos_sin)

        # One-step gradient: backpropagate through the last L and H updates only.
        z_L = self.L_level(z_L, z_H + input_embeddings, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)
        return z_H, z_L


class HierarchicalReasoningModel_ACTV1(ACTWrapper):
    """HRM's inner model in the shared ACT wrapper (models/act.py): carry, resets, halting, Q targets."""

    def __init__(self, config_dict: dict):
        config = HierarchicalReasoningModel_ACTV1Config.from_dict(config_dict)
        super().__init__(config, HierarchicalReasoningModel_ACTV1_Inner(config))
