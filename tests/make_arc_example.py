"""Make tests/data/arc_example: a tiny ARC dataset and evaluate.py-style prediction files.

    python tests/make_arc_example.py [--output-dir tests/data/arc_example]

The dataset (`<output-dir>/data`) is built by dataset/build_arc_dataset.py from four ARC-AGI-1
evaluation tasks with 3 augmented copies each. The prediction files
(`<output-dir>/step_2000_all_preds.{0,1}`, two ranks as evaluate.py writes them) hold no model
output: each copy of each test input "predicts" the true answer, a wrong grid or nothing,
following PLAN below, so arc_eval.ipynb and the tests show a known score without a GPU:
pass@1 1/4, pass@2 2/4, pass@5 and above 3/4. To keep the example small the files carry inputs,
puzzle identifiers, preds and q_halt logits, not labels (the scorer reads answers from the dataset).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

if __package__ in (None, ""):
    # Run as `python tests/make_arc_example.py`: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.build_arc_dataset import ArcBuildConfig, build_arc_dataset, place_on_canvas  # noqa: E402
from dataset.common import dihedral_transform  # noqa: E402
from tests.dataset_files import load_field  # noqa: E402
from evaluators.arc import crop_grids, parse_name  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "dataset", "raw-data", "ARC-AGI", "data", "evaluation")
DEFAULT_OUTPUT = os.path.join(REPO, "tests", "data", "arc_example")
TASKS = ["00576224", "0c786b71", "66e6c45b", "da2b0fe3"]
NUM_AUG = 3
STEP = 2000
# evaluate.py's test pass: global batches of 8 rows, each of the 2 ranks saves its half of each.
GLOBAL_BATCH_SIZE, WORLD_SIZE = 8, 2

# Per (task, test input): what each copy (the task itself, then its 3 augmented copies) predicts,
# and the q_halt logit it reports. "ok" is the true output, "w1"/"w2" two different wrong grids
# (the same grid for every copy that predicts it), "--" a canvas without a grid (uncroppable).
PLAN = {
    ("00576224", 0): [("ok", 2.0), ("ok", 1.5), ("w1", -1.0), ("ok", 1.0)],  # 3 votes of 4: pass@1
    ("0c786b71", 0): [("w1", 1.0), ("w2", 0.5), ("ok", -2.0), ("--", 3.0)],  # 1 vote each, lowest q: pass@5
    ("66e6c45b", 0): [("--", -4.0), ("w1", 0.5), ("w1", 0.2), ("ok", 3.0)],  # 2 votes beat 1: pass@2
    ("da2b0fe3", 0): [("ok", 1.0), ("ok", 1.0), ("ok", 1.0), ("ok", 1.0)],
    ("da2b0fe3", 1): [("w1", 1.0), ("w1", 1.0), ("w2", 0.0), ("--", -1.0)],  # never right: unsolved
}
EXPECTED_PASS_AT = {1: 0.25, 2: 0.5, 5: 0.75, 10: 0.75, 100: 0.75, 1000: 0.75}


def build_dataset(dataset_dir: str) -> None:
    """Run the ARC builder on copies of TASKS (in a folder named `evaluation`: a test split)."""
    with tempfile.TemporaryDirectory() as source:
        evaluation = os.path.join(source, "evaluation")
        os.makedirs(evaluation)
        for task in TASKS:
            shutil.copy(os.path.join(SOURCE, f"{task}.json"), evaluation)
        build_arc_dataset(ArcBuildConfig(dataset_dirs=[evaluation], output_dir=dataset_dir, seed=42, num_aug=NUM_AUG))


def planned_grid(kind: str, answer: np.ndarray) -> np.ndarray:
    """The grid a plan entry stands for, in the task's own orientation and colours."""
    grid = answer.copy()
    if kind == "w1":
        grid[0, 0] = (grid[0, 0] + 1) % 10
    elif kind == "w2":
        grid[-1, -1] = (grid[-1, -1] + 3) % 10
    return grid


def predicted_tokens(kind: str, answer: np.ndarray, name: str) -> np.ndarray:
    """The 900 tokens a copy named `name` outputs for plan entry `kind` (its own frame and colours)."""
    if kind == "--":
        return np.zeros(900, dtype=np.uint8)
    parsed = parse_name(name)
    grid = planned_grid(kind, answer)
    if parsed.inverse_colours is not None:
        grid = dihedral_transform(np.argsort(parsed.inverse_colours)[grid], parsed.dihedral)
    return place_on_canvas(np.ascontiguousarray(grid)[None], np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))[0]


def make_predictions(dataset_dir: str) -> dict:
    """All test rows in dataset order, as evaluate.py collects them (before the split by rank)."""
    inputs, labels = load_field(dataset_dir, "test", "inputs"), load_field(dataset_dir, "test", "labels")
    puzzles, groups = load_field(dataset_dir, "test", "puzzle_indices"), load_field(dataset_dir, "test", "group_indices")
    identifiers = load_field(dataset_dir, "test", "puzzle_identifiers")
    with open(os.path.join(dataset_dir, "identifiers.json")) as f:
        names = json.load(f)

    preds, q_halt = np.zeros_like(inputs), np.zeros(len(inputs), dtype=np.float32)
    for group in range(len(groups) - 1):
        for copy, puzzle in enumerate(range(groups[group], groups[group + 1])):
            name = names[identifiers[puzzle]]
            for test_index, row in enumerate(range(puzzles[puzzle], puzzles[puzzle + 1])):
                answer = parse_name(name).undo(crop_grids(labels[row:row + 1])[0])
                kind, q_halt[row] = PLAN[(parse_name(name).task, test_index)][copy]
                preds[row] = predicted_tokens(kind, answer, name)
    example_puzzle = np.repeat(np.arange(len(identifiers)), np.diff(puzzles))
    return {"inputs": inputs.astype(np.int32), "puzzle_identifiers": identifiers[example_puzzle].astype(np.int32),
            "preds": preds.astype(np.int32), "q_halt_logits": q_halt}


def save_by_rank(rows: dict, output_dir: str) -> None:
    """Each rank keeps its slice of every global batch, as evaluate.py does."""
    import torch

    local = GLOBAL_BATCH_SIZE // WORLD_SIZE
    positions = np.arange(len(rows["inputs"]))
    for rank in range(WORLD_SIZE):
        mine = positions[(positions % GLOBAL_BATCH_SIZE) // local == rank]
        torch.save({key: torch.from_numpy(value[mine]) for key, value in rows.items()},
                   os.path.join(output_dir, f"step_{STEP}_all_preds.{rank}"))


def make_example(output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    dataset_dir = os.path.join(output_dir, "data")
    build_dataset(dataset_dir)
    save_by_rank(make_predictions(dataset_dir), output_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT)
    make_example(parser.parse_args().output_dir)
