"""arch=trm through the training config, pretrain.py and evaluate.py, on the CPU."""

import os
from types import SimpleNamespace

import pytest
import torch

import evaluate
import pretrain
from tests.test_training import CPU, train_in_process
from tests.tiny_runs import tiny_overrides
from utils.checkpoint import list_checkpoints
from utils.config import load_config
from utils.logging import read_metrics

TRM_DEFAULTS = dict(
    halt_exploration_prob=0.1, halt_max_steps=16, H_cycles=3, L_cycles=6, H_layers=0, L_layers=2, hidden_size=512,
    num_heads=8, expansion=4, puzzle_emb_ndim=512, pos_encodings="rope", mlp_t=False, puzzle_emb_len=16,
    no_ACT_continue=True, fused_kernels=False,
)  # fmt: skip


def test_arch_trm_composes_with_trm_defaults():
    config = load_config(["arch=trm"])
    assert config.arch.name == "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
    assert (config.arch.loss.name, config.arch.loss.loss_type) == ("losses@ACTLossHead", "stablemax_cross_entropy")
    assert config.arch.model_extra == TRM_DEFAULTS


def test_hrm_defaults_keep_the_second_pass():
    assert load_config([]).arch.model_extra["no_ACT_continue"] is False
    assert load_config(["arch.no_ACT_continue=true"]).arch.model_extra["no_ACT_continue"] is True


def test_arch_trm_builds_through_pretrain_on_a_tiny_shape():
    overrides = ["arch=trm", "global_batch_size=4", "arch.hidden_size=16", "arch.num_heads=2", "arch.puzzle_emb_len=2",
                 "arch.H_cycles=2", "arch.L_cycles=2", "arch.mlp_t=true", "arch.pos_encodings=none"]  # fmt: skip
    config = load_config(overrides)
    metadata = SimpleNamespace(vocab_size=6, seq_len=8, num_puzzle_identifiers=3)
    head = pretrain.build_loss_head(config, metadata, CPU)
    assert type(head.model).__name__ == "TinyRecursiveReasoningModel_ACTV1"
    assert head.model.config.forward_dtype == "float32" and head.model.config.mlp_t

    batch = dict(
        inputs=torch.randint(0, 6, (4, 8), dtype=torch.int32),
        labels=torch.randint(0, 6, (4, 8), dtype=torch.int32),
        puzzle_identifiers=torch.randint(0, 3, (4,), dtype=torch.int32),
    )
    carry, loss, metrics, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])
    loss.backward()
    assert outputs["logits"].shape == (4, 8, 6) and torch.isfinite(loss) and "q_continue_loss" not in metrics


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"arch.mlp_t": "true", "arch.pos_encodings": "none", "arch.no_ACT_continue": "false"},
    ],
)
def test_trm_trains_and_evaluates_end_to_end(dataset, tmp_path, extra):
    run = str(tmp_path / "run")
    overrides = ["arch=trm"] + tiny_overrides(dataset, run, **{"arch.H_cycles": 2, "arch.puzzle_emb_len": 2, **extra})
    eval_metrics = train_in_process(overrides)

    records = read_metrics(os.path.join(run, "metrics.jsonl"))
    train = [record for record in records if "train/lm_loss" in record]
    assert len(train) == 24 and all(("train/q_continue_loss" in record) == bool(extra) for record in train)
    assert 0 < eval_metrics["all"]["accuracy"] <= 1

    checkpoint = torch.load(list_checkpoints(run)[-1], weights_only=False)
    mixing = "mlp_t.gate_up_proj" if extra else "self_attn.qkv_proj"
    assert f"model.inner.L_level.layers.0.{mixing}.weight" in checkpoint["model"]
    assert not any("H_level" in key for key in checkpoint["model"])

    # evaluate.py rebuilds the model from the saved config and repeats the last evaluation.
    metrics = evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=list_checkpoints(run)[-1], save_outputs=[]), CPU)
    assert metrics == eval_metrics
