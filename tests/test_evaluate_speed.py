"""The evaluation benchmark (benchmarks/evaluate_speed.py): its FLOP count per segment against hand
counts, and a tiny CPU run end to end."""

import json
import subprocess
import sys

import pytest

from benchmarks.evaluate_speed import segment_flops
from benchmarks.train_step import train_step_flops
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
from tests.tiny_runs import REPO_ROOT, build_tiny_sudoku, training_environment

CONFIG = dict(
    batch_size=8, seq_len=81, puzzle_emb_ndim=64, num_puzzle_identifiers=1, vocab_size=11,
    H_cycles=2, L_cycles=2, H_layers=1, L_layers=1, hidden_size=64, expansion=4, num_heads=2,
    pos_encodings="rope", halt_max_steps=2, halt_exploration_prob=0.1, forward_dtype="float32",
)  # fmt: skip


def test_hrm_segment_flops_are_the_training_step_counts_extra_segment():
    # The training step's count adds one gradient-free segment of the batch for halt_max_steps > 1.
    with_target = train_step_flops(HierarchicalReasoningModel_ACTV1(CONFIG).inner)
    without_target = train_step_flops(HierarchicalReasoningModel_ACTV1({**CONFIG, "halt_max_steps": 1}).inner)
    assert segment_flops(HierarchicalReasoningModel_ACTV1(CONFIG)) * CONFIG["batch_size"] == with_target - without_target


@pytest.mark.parametrize("mlp_t", [False, True])
def test_trm_segment_flops_match_a_hand_count(mlp_t):
    config = {**CONFIG, "H_cycles": 3, "L_cycles": 2, "L_layers": 2, "puzzle_emb_len": 4, "mlp_t": mlp_t,
              "pos_encodings": "none" if mlp_t else "rope"}
    positions, hidden = 81 + 4, 64
    mlp = 2 * positions * (hidden * 2 * 256 + 256 * hidden)  # SwiGLU: inner size round(4 * 64 * 2/3) = 171 -> 256
    if mlp_t:  # a SwiGLU across the 85 positions for each of the 64 channels: inner round(4 * 85 * 2/3) = 227 -> 256
        mixing = 2 * hidden * (positions * 2 * 256 + 256 * positions)
    else:  # qkv and o products, then q.k^T and attention.v
        mixing = 2 * positions * (hidden * 3 * hidden + hidden * hidden) + 4 * positions**2 * hidden
    block = mixing + mlp
    # H_cycles recursions of (L_cycles latent updates + 1 answer update), each through L_layers blocks; then the heads.
    heads = 2 * positions * hidden * 11 + 2 * hidden * 2
    assert segment_flops(TinyRecursiveReasoningModel_ACTV1(config)) == 3 * (2 + 1) * 2 * block + heads


def test_tiny_cpu_run_reports_a_sane_json_line(tmp_path):
    data = build_tiny_sudoku(str(tmp_path))
    command = [sys.executable, "benchmarks/evaluate_speed.py", "--data-path", data, "--batch", "8", "--batches", "2", "--warmup", "1",
               "--segments", "2", "--config", "arch.hidden_size=64", "--config", "arch.num_heads=2", "--config", "arch.H_layers=1",
               "--config", "arch.L_layers=1"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**training_environment(), "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"stdout should hold only the JSON line: {result.stdout}"
    record = json.loads(lines[0])

    assert (record["batch"], record["segments"], record["test_sequences"], record["warmup_batches"], record["timed_batches"]) == (8, 2, 40, 1, 2)
    assert record["device"].startswith("cpu") and record["compiled"] is False and record["forward_dtype"] == "float32"
    assert record["weights"] == "initialised" and record["data_path"] == data
    assert record["sequences_per_second"] == pytest.approx(2 * 8 / record["timed_seconds"], rel=1e-2)
    assert record["projected_total_seconds"] == pytest.approx(5 * record["timed_seconds"] / 2, abs=0.1)  # 40 sequences: 5 batches
    assert record["flops_per_sequence_segment"] == segment_flops(HierarchicalReasoningModel_ACTV1(CONFIG))  # the same model
    assert record["peak_tflops"] is None and record["fraction_of_peak"] is None and record["flop_floor_seconds"] is None


def test_too_few_batches_are_named(tmp_path):
    data = build_tiny_sudoku(str(tmp_path))
    result = subprocess.run([sys.executable, "benchmarks/evaluate_speed.py", "--data-path", data, "--batch", "32", "--batches", "5",
                             "--config", "arch.hidden_size=32"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**training_environment(), "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 1
    assert f"error: {data}'s test split has 2 batches of 32, fewer than --warmup 2 + --batches 5" in result.stderr
