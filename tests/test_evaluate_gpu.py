"""evaluate.py on a GPU (skipped without CUDA): bfloat16 and torch.compile by default, the CPU's
numbers up to bfloat16 rounding, adaptive halting under compile, and the benchmark's JSON line."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import evaluate
import pretrain
from tests.tiny_runs import REPO_ROOT, build_tiny_sudoku, tiny_overrides, training_environment
from utils.checkpoint import content_checksum, list_checkpoints
from utils.distributed import DistributedContext

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_evaluate")
    data = build_tiny_sudoku(str(folder))
    pretrain.run_training(tiny_overrides(data, str(folder / "run"), epochs=2, eval_interval=2, compile="false"), CPU)
    return list_checkpoints(str(folder / "run"))[-1]


def gpu() -> DistributedContext:
    return DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))


def test_gpu_evaluation_is_bfloat16_compiled_and_matches_the_cpu(checkpoint, capsys):
    on_cpu = evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=checkpoint, save_outputs=[]), CPU)
    on_gpu = evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=checkpoint, save_outputs=[]), gpu())
    assert "cuda, bfloat16, compile on" in capsys.readouterr().out  # although the run trained with compile=false
    assert on_gpu["all"]["steps"] == on_cpu["all"]["steps"] == 3
    assert on_gpu["all"]["accuracy"] == pytest.approx(on_cpu["all"]["accuracy"], abs=0.02)


def test_adaptive_halting_under_compile(checkpoint, tmp_path):
    shutil.copy(os.path.join(os.path.dirname(checkpoint), "all_config.yaml"), tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["model.inner.q_head.weight"].zero_()
    state["model"]["model.inner.q_head.bias"] = torch.tensor([5.0, -5.0])
    state["checksum"] = content_checksum({key: value for key, value in state.items() if key != "checksum"})
    torch.save(state, tmp_path / "step_6.pt")
    metrics = evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=str(tmp_path / "step_6.pt"), save_outputs=[], segments=8,
                                                          adaptive_halting=True), gpu())
    assert metrics["all"]["steps"] == 1


def test_the_benchmark_on_a_gpu(checkpoint):
    result = subprocess.run([sys.executable, "benchmarks/evaluate_speed.py", "--checkpoint", checkpoint, "--batch", "8", "--batches", "2",
                             "--warmup", "1", "--segments", "4"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env=training_environment())
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[-1])
    assert record["compiled"] is True and record["forward_dtype"] == "bfloat16" and record["peak_memory_gib"] > 0
    assert record["weights"] == checkpoint and record["segments"] == 4
