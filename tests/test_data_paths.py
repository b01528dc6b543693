"""data_paths through pretrain.py on the CPU: two dataset folders trained as one, other folders
evaluated (data_paths_test), a run with two folders stopped and resumed, evaluate.py's data_path."""

import os

import pytest
import torch

import evaluate
from tests.test_training import CPU, assert_same_tensors, final_weights, train_in_process, without_eval_at, without_timings
from tests.tiny_runs import build_tiny_sudoku, tiny_overrides
from utils.checkpoint import list_checkpoints
from utils.logging import read_metrics


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Two Sudoku folders: 96 and 64 training puzzles (each with one augmented copy), 40 and 20 test puzzles."""
    root = tmp_path_factory.mktemp("data")
    return build_tiny_sudoku(str(root / "first")), build_tiny_sudoku(str(root / "second"), train_rows=64, test_rows=20)


def overrides(data_paths, run, **extra):
    settings = [item for item in tiny_overrides(data_paths[0], run, **extra) if not item.startswith("data_path=")]
    return settings + [f"data_paths=[{','.join(data_paths)}]"]


def test_two_folders_train_as_one_with_a_puzzle_embedding_row_each(datasets, tmp_path):
    run = str(tmp_path / "run")
    eval_metrics = train_in_process(overrides(datasets, run, eval_save_outputs="[inputs]"))
    records = read_metrics(os.path.join(run, "metrics.jsonl"))
    # 8 epochs of 96 + 64 groups at 32 a batch; each evaluation covers both test splits (40 + 20).
    assert len([record for record in records if "train/lm_loss" in record]) == 8 * (96 + 64) // 32
    assert 0 < eval_metrics["all"]["accuracy"] <= 1
    assert len(torch.load(os.path.join(run, "step_40_all_preds.0"))["inputs"]) == 60
    # Sudoku puzzles all use identifier 0 of their folder: the second folder's are row 1, and both rows learned.
    embedding = final_weights(run)["model"]["model.inner.puzzle_emb.weights"]
    assert embedding.shape == (2, 32) and (embedding != 0).any(dim=1).all()


def test_data_paths_test_evaluates_other_folders(datasets, tmp_path):
    run = str(tmp_path / "run")
    train_in_process(overrides(datasets[:1], run, eval_save_outputs="[inputs]") + [f"data_paths_test=[{datasets[1]}]"])
    assert len(torch.load(os.path.join(run, "step_24_all_preds.0"))["inputs"]) == 20, "the second folder's test split alone"


def test_a_run_on_two_folders_stopped_and_resumed_is_the_same_run(datasets, tmp_path):
    straight = str(tmp_path / "straight")
    train_in_process(overrides(datasets, straight))
    stopped = str(tmp_path / "stopped")
    train_in_process(overrides(datasets, stopped, stop_after_minutes=1e-9))  # stops at step 10, inside the first folder
    assert [os.path.basename(path) for path in list_checkpoints(stopped)] == ["step_10.pt"]
    train_in_process(overrides(datasets, stopped, resume="true"))
    assert_same_tensors(final_weights(straight)["model"], final_weights(stopped)["model"], exact=True)
    assert without_timings(without_eval_at(read_metrics(os.path.join(stopped, "metrics.jsonl")), 10)) == without_timings(
        read_metrics(os.path.join(straight, "metrics.jsonl"))
    )


def test_evaluate_py_data_path_evaluates_that_folder_alone(datasets, tmp_path):
    run = str(tmp_path / "run")
    train_in_process(overrides(datasets[:1], run, epochs=4, eval_interval=4))  # 12 steps
    preds = tmp_path / "preds"
    evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=list_checkpoints(run)[-1], data_path=datasets[1], output_dir=str(preds)), CPU)
    assert len(torch.load(preds / "step_12_all_preds.0")["inputs"]) == 20, "the second folder's test split"
