"""TRM's config, layouts and positions; the shared ACT wrapper's two halting rules, for TRM and HRM."""

import pytest
import torch

from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from models.losses import ACTLossHead
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1, TinyRecursiveReasoningModel_ACTV1Carry
from tests.test_model_act import SMALL as SMALL_HRM
from tests.test_model_act import make_batch, set_q_head

SMALL_TRM = dict(
    batch_size=4, seq_len=8, puzzle_emb_ndim=16, num_puzzle_identifiers=4, vocab_size=6,
    H_cycles=2, L_cycles=2, L_layers=2, hidden_size=16, expansion=2, num_heads=2, puzzle_emb_len=2,
    pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.0, forward_dtype="float32",
)  # fmt: skip
MODELS = {"trm": (TinyRecursiveReasoningModel_ACTV1, SMALL_TRM), "hrm": (HierarchicalReasoningModel_ACTV1, {**SMALL_HRM, "batch_size": 4})}


def make_head(model: str = "trm", seed: int = 0, **overrides) -> ACTLossHead:
    model_class, config = MODELS[model]
    torch.manual_seed(seed)
    return ACTLossHead(model_class({**config, **overrides}), "stablemax_cross_entropy")


def count_inner_calls(head: ACTLossHead) -> list:
    calls = []
    head.model.inner.register_forward_hook(lambda module, args, output: calls.append(1))
    return calls


@pytest.mark.parametrize("model", ["trm", "hrm"])
@pytest.mark.parametrize("no_ACT_continue, training_calls", [(True, 1), (False, 2)])
def test_no_ACT_continue_runs_the_inner_model_once_per_call(model, no_ACT_continue, training_calls):
    head = make_head(model, no_ACT_continue=no_ACT_continue).train()
    batch = make_batch(MODELS[model][1])
    calls = count_inner_calls(head)
    carry = head.initial_carry(batch)
    for call in range(1, 3):
        carry, loss, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=["target_q_continue"])
        loss.backward()
        assert len(calls) == call * training_calls
        # The second pass exists only to give q_continue its target, and its loss.
        assert ("target_q_continue" in outputs) == (not no_ACT_continue)
        assert ("q_continue_loss" in metrics) == (not no_ACT_continue)
        q_loss = metrics["q_halt_loss"] + metrics.get("q_continue_loss", 0)
        assert torch.allclose(loss, metrics["lm_loss"] + 0.5 * q_loss)

    # Evaluation never runs the second pass.
    head.eval()
    calls.clear()
    with torch.no_grad():
        head(carry=head.initial_carry(batch), batch=batch, return_keys=[])
    assert len(calls) == 1


def test_model_defaults_for_no_ACT_continue():
    assert make_head("trm").model.config.no_ACT_continue is True
    assert make_head("hrm").model.config.no_ACT_continue is False


def spread_q_head(head: ACTLossHead, batch: dict) -> torch.Tensor:
    """Give q_halt different values per sequence, centred so that half the batch has q_halt > 0, and
    q_continue a bias of 10 that q_halt never exceeds; returns each sequence's q_halt."""
    inner = head.model.inner
    with torch.no_grad():
        inner.q_head.weight.copy_(torch.linspace(-0.5, 0.5, inner.q_head.weight.numel()).view(2, -1))
        inner.q_head.bias.zero_()
        q_halt = head.model(head.model.initial_carry(batch), batch)[1]["q_halt_logits"]
        middle = q_halt.sort().values[len(q_halt) // 2 - 1 : len(q_halt) // 2 + 1].mean()
        inner.q_head.bias.copy_(torch.tensor([-middle.item(), 10.0]))
    return q_halt - middle


@pytest.mark.parametrize("model", ["trm", "hrm"])
def test_no_ACT_continue_halts_where_q_halt_is_positive(model):
    batch = make_batch(MODELS[model][1])
    head = make_head(model, no_ACT_continue=True).train()
    q_halt = spread_q_head(head, batch)
    expected = q_halt > 0
    assert expected.sum() == 2 and torch.all(q_halt.abs() > 1e-4)  # two of four sequences, not on the edge

    carry, _, _, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["q_halt_logits", "q_continue_logits"])
    assert torch.equal(carry.halted, expected)
    assert torch.all(outputs["q_continue_logits"] > outputs["q_halt_logits"])  # q_halt > q_continue would halt none
    # The halted ones restart on the next call; the others carry on to step 2.
    carry, _, _, _, _ = head(carry=carry, batch=batch, return_keys=[])
    assert torch.equal(carry.steps, torch.where(expected, 1, 2).to(torch.int32))

    # The same weights under q_halt > q_continue: no sequence halts.
    head.model.config.no_ACT_continue = False
    carry, _, _, _, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=[])
    assert not carry.halted.any()


def test_trm_with_no_ACT_continue_false_learns_the_q_continue_target():
    # The original TRM crashes on this path; here it is HRM's: target from a second segment.
    head = make_head("trm", no_ACT_continue=False, halt_max_steps=2).train()
    set_q_head(head, halt_bias=-3.0, continue_bias=2.0)  # never halts on its own
    batch = make_batch(SMALL_TRM)
    carry = head.initial_carry(batch)
    carry, loss, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=["target_q_continue"])
    assert torch.allclose(outputs["target_q_continue"], torch.sigmoid(torch.tensor(2.0)).expand(4))  # max(halt, continue)
    expected_loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.full((4,), 2.0), outputs["target_q_continue"], reduction="sum")
    assert torch.allclose(metrics["q_continue_loss"], expected_loss)
    assert torch.allclose(loss, metrics["lm_loss"] + 0.5 * (metrics["q_halt_loss"] + metrics["q_continue_loss"]))
    loss.backward()
    carry, _, _, outputs, _ = head(carry=carry, batch=batch, return_keys=["target_q_continue"])
    assert torch.allclose(outputs["target_q_continue"], torch.sigmoid(torch.tensor(-3.0)).expand(4))  # last step: halt
    assert carry.halted.all()


@pytest.mark.parametrize("mlp_t", [False, True])
@pytest.mark.parametrize("pos_encodings", ["rope", "learned", "none"])
def test_positions_and_token_mixing_train(pos_encodings, mlp_t):
    head = make_head(pos_encodings=pos_encodings, mlp_t=mlp_t).train()
    batch = make_batch(SMALL_TRM)
    carry = head.initial_carry(batch)
    for _ in range(2):
        head.zero_grad(set_to_none=True)
        carry, loss, _, outputs, _ = head(carry=carry, batch=batch, return_keys=["logits"])
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in head.parameters())
    assert outputs["logits"].shape == (4, 8, 6)
    assert carry.inner_carry.z_H.shape == carry.inner_carry.z_L.shape == (4, 2 + 8, 16)

    keys = set(head.state_dict())
    assert ("model.inner.embed_pos.embedding_weight" in keys) == (pos_encodings == "learned")
    assert not any("rotary" in key or "H_level" in key for key in keys)
    assert ("model.inner.L_level.layers.1.self_attn.qkv_proj.weight" in keys) == (not mlp_t)
    assert ("model.inner.L_level.layers.1.mlp_t.gate_up_proj.weight" in keys) == mlp_t
    if mlp_t:
        # A SwiGLU over the 10 positions: inner size round(2 * 10 * 2/3) = 13, rounded up to 256.
        assert head.state_dict()["model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight"].shape == (512, 10)
        assert head.state_dict()["model.inner.L_level.layers.0.mlp_t.down_proj.weight"].shape == (10, 256)


def test_positions_change_the_function():
    batch = make_batch(SMALL_TRM)
    logits = {}
    for pos_encodings in ("rope", "none"):
        head = make_head(pos_encodings=pos_encodings).eval()
        with torch.no_grad():
            logits[pos_encodings] = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])[3]["logits"]
    assert not torch.allclose(logits["rope"], logits["none"])


def test_mlp_t_mixes_positions_and_normalises_over_them():
    head = make_head(mlp_t=True, pos_encodings="none")
    block = head.model.inner.L_level.layers[0]
    hidden_states = torch.randn(4, 10, 16)
    mixed = block(cos_sin=None, hidden_states=hidden_states)
    expected = block.mlp_t(hidden_states.transpose(1, 2))
    expected = torch.nn.functional.rms_norm(hidden_states.transpose(1, 2) + expected, (10,), eps=1e-5).transpose(1, 2)
    expected = torch.nn.functional.rms_norm(expected + block.mlp(expected), (16,), eps=1e-5)
    torch.testing.assert_close(mixed, expected)
    # Changing one position changes the others (attention would too; a per-position MLP would not).
    changed = hidden_states.clone()
    changed[:, 5] += 1
    assert not torch.allclose(block(cos_sin=None, hidden_states=changed)[:, 0], mixed[:, 0])


@pytest.mark.parametrize(
    "overrides, positions, has_puzzle_emb",
    [
        (dict(puzzle_emb_len=3), 3, True),  # 16 dims on the first of 3 positions, the rest zeros
        (dict(puzzle_emb_len=0, puzzle_emb_ndim=24), 2, True),  # 0: ceil(24 / 16), as HRM
        (dict(puzzle_emb_len=2, puzzle_emb_ndim=0), 2, False),  # no embedding: 2 zero positions
        (dict(puzzle_emb_len=0, puzzle_emb_ndim=0), 0, False),
    ],
)
def test_puzzle_positions(overrides, positions, has_puzzle_emb):
    head = make_head(**overrides).train()
    batch = make_batch(SMALL_TRM)
    carry, loss, _, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])
    loss.backward()
    assert head.model.inner.puzzle_emb_len == positions
    assert carry.inner_carry.z_H.shape == (4, positions + 8, 16)
    assert outputs["logits"].shape == (4, 8, 6)
    assert ("model.inner.puzzle_emb.weights" in head.state_dict()) == has_puzzle_emb

    if has_puzzle_emb:
        with torch.no_grad():
            head.model.puzzle_emb.weights.normal_()
    embeddings = head.model.inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    if has_puzzle_emb:
        ndim = overrides.get("puzzle_emb_ndim", SMALL_TRM["puzzle_emb_ndim"])
        rows = head.model.puzzle_emb.weights[batch["puzzle_identifiers"]] * 4  # scaled by sqrt(hidden)
        torch.testing.assert_close(embeddings[:, :positions].reshape(4, -1)[:, :ndim], rows)
        assert torch.all(embeddings[:, :positions].reshape(4, -1)[:, ndim:] == 0)
    else:
        assert torch.all(embeddings[:, :positions] == 0)


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(puzzle_emb_len=1, puzzle_emb_ndim=24), "puzzle_emb_ndim=24 does not fit in puzzle_emb_len=1 positions of hidden_size=16: set puzzle_emb_len to at least 2"),
        (dict(puzzle_emb_len=-1), "puzzle_emb_len=-1 must be >= 0"),
        (dict(pos_encodings="alibi"), "pos_encodings"),
        (dict(L_layers=0), "L_layers"),
        (dict(num_heads=3), "divisible by num_heads"),
    ],
)
def test_invalid_config_values_are_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        make_head(**override)


def test_unknown_config_keys_are_named():
    with pytest.raises(ValueError, match="Unknown TRM config keys: hiden_size, mlp"):
        make_head(hiden_size=8, mlp=True)


def test_h_layers_and_fused_kernels_are_accepted_and_ignored():
    plain = make_head()
    for overrides in (dict(H_layers=4), dict(fused_kernels=True)):
        head = make_head(**overrides)
        assert head.state_dict().keys() == plain.state_dict().keys()
        for key, value in plain.state_dict().items():
            assert torch.equal(head.state_dict()[key], value), key
    batch = make_batch(SMALL_TRM)
    with torch.no_grad():
        fused_kernels = make_head(fused_kernels=True).eval()
        expected = plain.eval()(carry=plain.initial_carry(batch), batch=batch, return_keys=["logits"])[3]["logits"]
        logits = fused_kernels(carry=fused_kernels.initial_carry(batch), batch=batch, return_keys=["logits"])[3]["logits"]
    assert torch.equal(logits, expected)


def test_initial_carry_has_the_original_class_name():
    head = make_head()
    carry = head.initial_carry(make_batch(SMALL_TRM))
    assert isinstance(carry, TinyRecursiveReasoningModel_ACTV1Carry) and carry.halted.all()


def test_bfloat16_forward_keeps_float32_weights():
    head = make_head(forward_dtype="bfloat16", mlp_t=True).train()
    batch = make_batch(SMALL_TRM)
    carry, loss, _, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits", "q_halt_logits"])
    loss.backward()
    assert outputs["logits"].dtype == torch.bfloat16 and outputs["q_halt_logits"].dtype == torch.float32
    assert carry.inner_carry.z_H.dtype == torch.bfloat16 and head.model.inner.H_init.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in head.parameters())


@pytest.mark.parametrize(
    "overrides, parameters",
    [
        # 2 blocks of attention (786,432 + 262,144) and SwiGLU (3 x 512 x 1536), embeddings and heads.
        (dict(), 6_828_034),
        # mlp_t on 81 + 16 positions: SwiGLU(97) with inner size 512 replaces the attention.
        (dict(mlp_t=True, pos_encodings="none"), 5_028_866),
    ],
)
def test_default_config_parameter_count(overrides, parameters):
    # config/arch/trm.yaml on the Sudoku-Extreme shape (vocab 11, 81 cells, one puzzle identifier).
    config = dict(
        batch_size=768, seq_len=81, puzzle_emb_ndim=512, num_puzzle_identifiers=1, vocab_size=11, H_cycles=3, L_cycles=6,
        H_layers=0, L_layers=2, hidden_size=512, expansion=4, num_heads=8, pos_encodings="rope", halt_max_steps=16,
        halt_exploration_prob=0.1, mlp_t=False, puzzle_emb_len=16, no_ACT_continue=True,
    )  # fmt: skip
    with torch.device("meta"):
        head = ACTLossHead(TinyRecursiveReasoningModel_ACTV1({**config, **overrides}), "stablemax_cross_entropy")
    assert sum(p.numel() for p in head.parameters()) == parameters
