"""evaluate.py beyond the plain test pass: segments, adaptive halting, the sweep's JSON lines and PNG,
the evaluation batch, the device's dtype and compile setting, the progress bar."""

import builtins
import json
import os
import shutil

import pytest
import torch

import evaluate
import pretrain
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig
from tests.tiny_runs import ARC_EXAMPLE, build_tiny_sudoku, tiny_overrides
from utils.checkpoint import content_checksum, list_checkpoints
from utils.config import ConfigError, read_saved_config
from utils.distributed import DistributedContext

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
# A context that names a GPU; the functions tested with it only read the device type.
GPU = DistributedContext(rank=0, world_size=2, local_rank=0, device=torch.device("cuda", 0))
TEST_EXAMPLES, HALT_MAX_STEPS = 40, 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny Sudoku run (6 steps), and a copy of it whose Q head says halt everywhere."""
    folder = tmp_path_factory.mktemp("evaluate")
    data = build_tiny_sudoku(str(folder))
    torch.set_num_threads(1)
    pretrain.run_training(tiny_overrides(data, str(folder / "run"), epochs=2, eval_interval=2), CPU)
    checkpoint = list_checkpoints(str(folder / "run"))[-1]

    halting = folder / "halting"
    halting.mkdir()
    shutil.copy(folder / "run" / "all_config.yaml", halting)
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["model.inner.q_head.weight"].zero_()
    state["model"]["model.inner.q_head.bias"] = torch.tensor([5.0, -5.0])  # q_halt > q_continue
    state["checksum"] = content_checksum({key: value for key, value in state.items() if key != "checksum"})
    torch.save(state, halting / os.path.basename(checkpoint))
    return checkpoint, str(halting / os.path.basename(checkpoint))


def run_evaluation(checkpoint: str, **keys):
    return evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=checkpoint, save_outputs=[], **keys), CPU)


def test_segments_and_adaptive_halting(run, capsys):
    checkpoint, halting = run
    assert run_evaluation(checkpoint)["all"]["steps"] == HALT_MAX_STEPS
    assert run_evaluation(checkpoint, segments=5)["all"]["steps"] == 5
    # The Q head of `halting` says halt after the first segment; without adaptive_halting that is ignored.
    assert run_evaluation(halting, segments=5)["all"]["steps"] == 5
    assert run_evaluation(halting, segments=5, adaptive_halting=True)["all"]["steps"] == 1
    out = capsys.readouterr().out
    assert "compile off, batch 32, adaptive halting, at most 5 segments" in out
    assert f"{TEST_EXAMPLES} sequences in " in out and " sequences/s" in out


def test_the_sweep_writes_json_lines_and_a_plot(run, tmp_path, capsys):
    checkpoint, _ = run
    plain = run_evaluation(checkpoint)
    run_evaluation(checkpoint, sweep=[1, 2, HALT_MAX_STEPS], output_dir=str(tmp_path))
    with open(tmp_path / "step_6_segment_sweep.jsonl") as file:
        records = [json.loads(line) for line in file]
    assert [(record["segments"], record["set"], record["adaptive_halting"], record["steps"]) for record in records] == [
        (1, "all", False, 1.0), (2, "all", False, 2.0), (HALT_MAX_STEPS, "all", False, float(HALT_MAX_STEPS))]
    assert {key: records[-1][key] for key in plain["all"]} == plain["all"]  # the last count is a plain evaluation
    assert all(record["seconds"] > 0 for record in records)
    with open(tmp_path / "step_6_segment_sweep.png", "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["step_6_segment_sweep.jsonl", "step_6_segment_sweep.png"]  # no predictions
    assert f"wrote {tmp_path / 'step_6_segment_sweep.png'}" in capsys.readouterr().out


def test_the_sweep_without_matplotlib_keeps_its_numbers(run, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    run_evaluation(run[1], sweep=[1, 4], adaptive_halting=True, output_dir=str(tmp_path))
    assert os.listdir(tmp_path) == ["step_6_segment_sweep.jsonl"]
    with open(tmp_path / "step_6_segment_sweep.jsonl") as file:
        assert [(record["segments"], record["steps"], record["adaptive_halting"]) for record in map(json.loads, file)] == [(1, 1.0, True), (4, 1.0, True)]
    assert "no plot of the sweep: matplotlib is not installed (pip install matplotlib)" in capsys.readouterr().err


def test_wrong_keys_are_named():
    with pytest.raises(ConfigError, match=r"segments=3 and sweep=\[1, 2\]: the sweep sets the segments; give one of them"):
        evaluate.parse_eval_config(["checkpoint=x.pt", "segments=3", "sweep=[1,2]"])
    with pytest.raises(ConfigError, match=r"segments: segments=0 must be at least 1"):
        evaluate.parse_eval_config(["checkpoint=x.pt", "segments=0"])
    with pytest.raises(ConfigError, match=r"sweep: sweep=\[4, 0\]: every segment count must be at least 1"):
        evaluate.parse_eval_config(["checkpoint=x.pt", "sweep=[4,0]"])
    assert evaluate.parse_eval_config(["checkpoint=x.pt", "global_batch_size=64"]).eval_batch_size == 64  # the key's earlier name


def test_the_evaluation_batch(run, tmp_path):
    checkpoint, _ = run
    saved = read_saved_config(os.path.dirname(checkpoint))
    with pytest.raises(ConfigError, match=r"eval_batch_size=10 is not divisible by the 4 processes: .* a multiple of 4 \(e.g. 8\)"):
        evaluate.check_eval_batch_size(10, 4)
    # Defaults: the training run's batch on the CPU; on GPUs 2^29 numbers per activation on each process.
    assert evaluate.default_eval_batch_size(saved, 81, CPU) == saved.global_batch_size == 32
    assert evaluate.default_eval_batch_size(saved, 900, GPU) == 2**29 // (900 * 32) * 2

    default = evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=checkpoint, output_dir=str(tmp_path / "a")), CPU)
    small = evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=checkpoint, eval_batch_size=6, output_dir=str(tmp_path / "b")), CPU)
    assert small["all"]["exact_accuracy"] == default["all"]["exact_accuracy"]
    assert small["all"]["accuracy"] == pytest.approx(default["all"]["accuracy"], abs=1e-6)
    first, second = (torch.load(tmp_path / folder / "step_6_all_preds.0") for folder in "ab")
    assert first["preds"].shape == (TEST_EXAMPLES, 81) and torch.equal(first["preds"], second["preds"])


def test_gpu_defaults_are_bfloat16_and_compiled(run):
    checkpoint, _ = run
    saved = read_saved_config(os.path.dirname(checkpoint)).model_copy(update={"compile": False})  # a run trained with compile=false
    on_gpu = evaluate.evaluation_config(saved, GPU, 64)
    assert on_gpu.arch.model_extra["forward_dtype"] == "bfloat16" and pretrain.use_compile(on_gpu, GPU.device)
    on_cpu = evaluate.evaluation_config(saved, CPU, 64)
    assert on_cpu.arch.model_extra["forward_dtype"] == "float32" and not pretrain.use_compile(on_cpu, CPU.device)
    chosen = evaluate.evaluation_config(saved, GPU, 64, forward_dtype="float32", compile=False)
    assert chosen.arch.model_extra["forward_dtype"] == "float32" and not pretrain.use_compile(chosen, GPU.device)
    assert (on_gpu.global_batch_size, on_gpu.gradient_accumulation_steps) == (64, 1)
    # A run with CUDA graphs keeps them, unless compile=false turns off what captures them.
    graphs = saved.model_copy(update={"compile": None, "cuda_graphs": True})
    assert evaluate.evaluation_config(graphs, GPU, 64).cuda_graphs and not evaluate.evaluation_config(graphs, GPU, 64, compile=False).cuda_graphs


def test_a_progress_bar_counts_segments(run, capsys):
    checkpoint, _ = run
    run_evaluation(checkpoint, segments=4, eval_batch_size=8)
    err = capsys.readouterr().err
    assert "evaluate:" in err and f"/{TEST_EXAMPLES // 8 * 4} " in err  # 5 batches of 4 segments


def test_the_loader_counts_a_test_pass():
    config = PuzzleDatasetConfig(seed=0, dataset_path=ARC_EXAMPLE, global_batch_size=6, test_set_mode=True, epochs_per_iter=1, rank=0, num_replicas=1)
    loader = PuzzleDataset(config, "test")
    sizes = [size for _, _, size in loader]
    assert loader.num_test_batches() == len(sizes) == 4 and loader.num_examples() == sum(sizes) == 20  # 4 tasks x 4 copies, one task with 2 test inputs


def test_help_lists_the_keys(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["evaluate.py", "--help"])
    evaluate.main()
    out = capsys.readouterr().out
    assert all(key in out for key in ("segments", "adaptive_halting", "sweep", "eval_batch_size", "forward_dtype"))
