"""Loading weights: our keys, the original's compiled-model keys, bare-model keys, and wrong configs."""

import os

import pytest
import torch

from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from models.losses import ACTLossHead
from models.state_dict import load_model_state_dict
from tests.test_model_act import SMALL, make_batch, make_head


def logits_of(head) -> torch.Tensor:
    batch = make_batch(SMALL)
    with torch.no_grad():
        return head.eval()(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])[3]["logits"]


@pytest.fixture
def trained_state():
    head = make_head(seed=1)
    return head.state_dict(), logits_of(head)


@pytest.mark.parametrize(
    "rename",
    [
        lambda key: key,  # ours: model.inner....
        lambda key: "_orig_mod." + key,  # the original's compiled loss head
        lambda key: key[len("model."):],  # a bare model's keys
        lambda key: "_orig_mod." + key[len("model."):],  # a compiled bare model
    ],
)
def test_loads_into_the_loss_head_whatever_the_prefix(trained_state, rename):
    state, expected_logits = trained_state
    head = make_head(seed=2)
    load_model_state_dict(head, {rename(key): value for key, value in state.items()})
    assert torch.equal(logits_of(head), expected_logits)


def test_loads_loss_head_keys_into_the_bare_model(trained_state):
    state, _ = trained_state
    head = make_head(seed=2)
    load_model_state_dict(head.model, {"_orig_mod." + key: value for key, value in state.items()})
    assert torch.equal(head.model.inner.H_init, state["model.inner.H_init"])


def test_wrong_config_lists_missing_unexpected_and_mismatched_keys(trained_state):
    state, _ = trained_state
    other = make_head(hidden_size=32, H_layers=2, pos_encodings="learned")
    with pytest.raises(ValueError) as error:
        load_model_state_dict(other, state)
    message = str(error.value)
    assert "another config" in message
    assert "missing keys: model.inner.H_level.layers.1.mlp.down_proj.weight" in message
    assert "model.inner.embed_pos.embedding_weight" in message
    assert "model.inner.lm_head.weight: expected (6, 32) vs found (6, 16)" in message
    assert "Fix:" in message


def test_unexpected_key_is_reported(trained_state):
    state, _ = trained_state
    with pytest.raises(ValueError, match="unexpected keys: model.inner.extra"):
        load_model_state_dict(make_head(), {**state, "model.inner.extra": torch.zeros(1)})


def test_original_fixture_loads_with_compiled_prefix():
    reference = torch.load(os.path.join(os.path.dirname(__file__), "data", "hrm_reference_public.pt"))
    head = ACTLossHead(HierarchicalReasoningModel_ACTV1(reference["arch"]), reference["loss_type"])
    load_model_state_dict(head, {"_orig_mod." + key: value for key, value in reference["state_dict"].items()})
    assert torch.equal(head.model.puzzle_emb.weights, reference["state_dict"]["model.inner.puzzle_emb.weights"])
