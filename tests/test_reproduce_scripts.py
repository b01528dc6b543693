"""The recipe scripts (scripts/reproduce_{sudoku,maze}_1k.sh) end to end on a CPU, with the recipe's
keys overridden down to a tiny model and a few steps: build the data, train, evaluate, plot; and the
plot script's one-line errors for a bad metrics file."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = [
    "wandb.mode=disabled", "arch.hidden_size=16", "arch.num_heads=2", "arch.H_layers=1", "arch.L_layers=1",
    "arch.H_cycles=1", "arch.L_cycles=1", "arch.halt_max_steps=2",
]


def run_script(script: str, environment: dict, overrides: list) -> str:
    """The script's console output (stdout and stderr)."""
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", script), *TINY_MODEL, *overrides],
                            env={**os.environ, **environment}, cwd=ROOT, check=True, capture_output=True, text=True)
    return result.stdout + result.stderr


def read_metrics(run_dir) -> list:
    with open(run_dir / "metrics.jsonl") as file:
        return [json.loads(line) for line in file]


def test_maze_script_builds_trains_evaluates_and_plots_over_two_processes(tmp_path):
    data, run = tmp_path / "maze-data", tmp_path / "maze-run"
    # 100 shipped mazes, 2 epochs at batch 50 (25 per process): 4 steps, an evaluation after each epoch.
    output = run_script("reproduce_maze_1k.sh",
                        {"SOURCE": os.path.join(ROOT, "dataset", "samples", "maze-30x30-hard"), "DATA": str(data), "RUN": str(run), "NPROC": "2"},
                        ["epochs=2", "eval_interval=1", "global_batch_size=50"])
    assert "2 process(es)" in output

    with open(data / "train" / "dataset.json") as file:
        assert json.load(file)["seq_len"] == 900
    records = read_metrics(run)
    assert [r["step"] for r in records if "train/lm_loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "all/exact_accuracy" in r] == [2, 4]
    assert (run / "curves.png").stat().st_size > 0
    assert (run / "step_4.pt").exists()


def test_sudoku_script_resumes_a_finished_run_without_training_again(tmp_path):
    data, run = tmp_path / "sudoku-data", tmp_path / "sudoku-run"
    # A prebuilt small dataset in DATA: the script only builds the 1M-puzzle set when DATA has none.
    subprocess.run([sys.executable, os.path.join(ROOT, "dataset", "build_sudoku_dataset.py"),
                    "--source-repo", os.path.join(ROOT, "dataset", "samples", "sudoku-extreme"),
                    "--output-dir", str(data), "--subsample-size", "40"], cwd=ROOT, check=True, capture_output=True)
    environment = {"DATA": str(data), "RUN": str(run)}
    overrides = ["epochs=2", "eval_interval=2", "global_batch_size=20"]
    run_script("reproduce_sudoku_1k.sh", environment, overrides)
    first = read_metrics(run)
    assert [r["step"] for r in first if "train/lm_loss" in r] == [1, 2, 3, 4]

    # resume=true: the same command finds the final checkpoint and has nothing left to train.
    run_script("reproduce_sudoku_1k.sh", environment, overrides)
    assert read_metrics(run) == first
    assert (run / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("script", ["reproduce_sudoku_1k.sh", "reproduce_maze_1k.sh"])
def test_scripts_pass_the_paper_recipe(script):
    with open(os.path.join(ROOT, "scripts", script)) as file:
        text = file.read()
    for key in ("epochs=20000", "eval_interval=2000", "lr=1e-4", "puzzle_emb_lr=1e-4", "weight_decay=1.0",
                "puzzle_emb_weight_decay=1.0", "resume=true"):
        assert key in text.split()


@pytest.mark.parametrize("content, message", [
    ('{"step": 1, "all/exact_accuracy": 0.5}\n', r"holds no training metrics \(train/lm_loss\): is it a pretrain.py metrics.jsonl\?"),
    ('{"step": 1, "train/lm_loss": 2.0}\nnot json\n', r"line 2 is not JSON \(.+\): is it a pretrain.py metrics.jsonl\?"),
    (None, r"No such file or directory: '[^']*metrics.jsonl'"),
], ids=["no-training-metrics", "not-json", "missing-file"])
def test_plot_metrics_reports_a_bad_metrics_file_in_one_line(tmp_path, content, message):
    metrics = tmp_path / "metrics.jsonl"
    if content is not None:
        metrics.write_text(content)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot_metrics.py"), str(metrics),
                             "--output", str(tmp_path / "curves.png")], cwd=ROOT, check=False, capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert re.fullmatch(rf"plot_metrics.py: error: .*{message}\n", result.stderr)
    assert not (tmp_path / "curves.png").exists()


def test_plot_metrics_refuses_a_negative_smooth(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "train/lm_loss": 2.0}\n')
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot_metrics.py"), str(metrics),
                             "--output", str(tmp_path / "curves.png"), "--smooth", "-1"], cwd=ROOT, check=False, capture_output=True, text=True)
    assert result.returncode == 2
    assert "plot_metrics.py: error: --smooth must be 0 (automatic) or a number of steps, got -1" in result.stderr
