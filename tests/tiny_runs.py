"""Shared pieces of the training tests: a tiny real dataset, a tiny CPU config, and ways to run it."""

import csv
import os
import subprocess
import sys

import torch

import pretrain
from utils.checkpoint import list_checkpoints
from utils.distributed import DistributedContext

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SUDOKU_SAMPLE = os.path.join(REPO_ROOT, "dataset", "samples", "sudoku-extreme")


def write_csv_slice(source_csv: str, destination_csv: str, rows: int) -> None:
    with open(source_csv) as source, open(destination_csv, "w", newline="") as destination:
        reader = csv.reader(source)
        writer = csv.writer(destination)
        for index, row in enumerate(reader):
            if index > rows:
                break
            writer.writerow(row)


def build_from_sample(builder: str, sample: str, folder: str, name: str, rows: tuple, flags: tuple = ()) -> str:
    """A small dataset `folder/name` built by dataset/`builder` from the first (train, test) `rows` of a shipped sample."""
    source = os.path.join(folder, "source")
    os.makedirs(source, exist_ok=True)
    for split, count in zip(("train", "test"), rows):
        write_csv_slice(os.path.join(sample, f"{split}.csv"), os.path.join(source, f"{split}.csv"), count)
    output = os.path.join(folder, name)
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "dataset", builder), "--source-repo", source, "--output-dir", output, *flags],
                   check=True, cwd=REPO_ROOT, capture_output=True)
    return output


def build_tiny_sudoku(folder: str, train_rows: int = 96, test_rows: int = 40, max_blanks: int = 4) -> str:
    """A small dataset from the first rows of the shipped real puzzles, built by our own builder."""
    return build_from_sample("build_sudoku_dataset.py", SUDOKU_SAMPLE, folder, "sudoku-tiny", (train_rows, test_rows),
                             ("--num-aug", "1", "--max-blanks", str(max_blanks)))


def tiny_overrides(data_path: str, checkpoint_path: str, **extra) -> list:
    """A model small enough for a few dozen CPU steps per second; keys as on the command line."""
    settings = {
        "data_path": data_path,
        "checkpoint_path": checkpoint_path,
        "global_batch_size": 32,
        "epochs": 8,
        "eval_interval": 4,
        "lr": 3e-3,
        "puzzle_emb_lr": 1e-2,
        "lr_warmup_steps": 5,
        "weight_decay": 0.1,
        "arch.hidden_size": 32,
        "arch.num_heads": 2,
        "arch.expansion": 2,
        "arch.H_layers": 1,
        "arch.L_layers": 1,
        "arch.H_cycles": 1,
        "arch.L_cycles": 2,
        "arch.halt_max_steps": 3,
        "wandb.mode": "disabled",
    }
    settings.update(extra)
    return [f"{key}={value}" for key, value in settings.items()]


def training_environment() -> dict:
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    environment.pop("WORLD_SIZE", None)
    environment.pop("RANK", None)
    return environment


def train_in_process(overrides):
    torch.set_num_threads(1)
    return pretrain.run_training(overrides, CPU)


def run_script(arguments, **kwargs):
    return subprocess.run([sys.executable, *arguments], cwd=REPO_ROOT, env=training_environment(), capture_output=True, text=True, **kwargs)


def run_torchrun(processes, arguments):
    """`torchrun --nproc-per-node processes` of a script and its arguments (gloo on the CPU)."""
    return run_script(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *arguments], timeout=300)


def final_weights(folder):
    return torch.load(list_checkpoints(folder)[-1], weights_only=False)
MAZE_SAMPLE = os.path.join(REPO_ROOT, "dataset", "samples", "maze-30x30-hard")
ARC_EXAMPLE = os.path.join(REPO_ROOT, "tests", "data", "arc_example", "data")


def build_tiny_maze(folder: str, train_rows: int = 16, test_rows: int = 4) -> str:
    """A small 30x30 maze dataset from the first rows of the shipped real mazes, built by our own builder."""
    return build_from_sample("build_maze_dataset.py", MAZE_SAMPLE, folder, "maze-tiny", (train_rows, test_rows))


def save_untrained_run(folder: str, metadata, **overrides) -> str:
    """A run folder holding all_config.yaml (tiny_overrides with `overrides`) and step_0.pt with a
    model initialised for `metadata` (a PuzzleDatasetMetadata): a checkpoint of any shape, in a second."""
    import torch

    import pretrain
    from utils.config import load_config, save_config
    from utils.distributed import DistributedContext

    config = load_config(tiny_overrides(overrides.pop("data_path", "data/none"), folder, **overrides))
    cpu = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    loss_head = pretrain.build_loss_head(config, metadata, cpu)
    save_config(config, folder)
    path = os.path.join(folder, "step_0.pt")
    torch.save({"model": loss_head.state_dict(), "step": 0}, path)
    return path
