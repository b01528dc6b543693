"""Write Kaggle-style ARC files from the shipped task folders, the input of TRM's ARC commands.

    python -m dataset.make_kaggle_combined      # -> kaggle/combined/arc-agi_<subset>_challenges.json and _solutions.json

Each subset's tasks become `{prefix}_{subset}_challenges.json` ({task id: {"train": [{"input",
"output"}, ...], "test": [{"input"}, ...]}}) and `{prefix}_{subset}_solutions.json` ({task id:
[output grid of each test input]}), as Kaggle publishes ARC; task ids are the task names that
dataset/build_arc_dataset.py gives the same tasks read from their folders. Then, as TRM's README:

    python -m dataset.build_arc_dataset --input-file-prefix kaggle/combined/arc-agi --output-dir data/arc1concept-aug-1000 \\
        --subsets training evaluation concept --test-set-name evaluation
"""

import json
import os
import sys
from typing import Dict, List

from pydantic import BaseModel, Field

if __package__ in (None, ""):
    # Run as `python dataset/make_kaggle_combined.py`: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.build_arc_dataset import check_unique_names, find_task_files, kaggle_file, read_json, task_from_json  # noqa: E402
from dataset.common import DatasetError, run_cli  # noqa: E402
from utils.files import write_text_atomically  # noqa: E402

# Where each subset's task files lie under --raw-data-dir (the layout of dataset/raw-data).
SUBSET_FOLDERS = {
    "training": "ARC-AGI/data/training",
    "evaluation": "ARC-AGI/data/evaluation",
    "training2": "ARC-AGI-2/data/training",
    "evaluation2": "ARC-AGI-2/data/evaluation",
    "concept": "ConceptARC/corpus",
}


class KaggleCombinedConfig(BaseModel):
    """Write Kaggle-style {prefix}_{subset}_challenges.json and _solutions.json files from ARC task folders."""

    raw_data_dir: str = Field("dataset/raw-data", description=f"holds the task folders: {', '.join(f'{subset} in {folder}' for subset, folder in SUBSET_FOLDERS.items())}")
    output_prefix: str = Field("kaggle/combined/arc-agi", description="the files are {prefix}_{subset}_challenges.json and _solutions.json")
    subsets: List[str] = Field(list(SUBSET_FOLDERS), description=f"subsets to write, of {' '.join(SUBSET_FOLDERS)}")


def subset_files(folder: str) -> Dict[str, Dict]:
    """{"challenges": ..., "solutions": ...} of the tasks in `folder` (searched recursively), in file order."""
    tasks = []
    for path in find_task_files(folder):
        content = read_json(path, "pass readable task files")
        tasks.append(task_from_json(content, path, os.path.splitext(os.path.basename(path))[0], {"train": "train", "test": "test"}, path))
    check_unique_names(tasks, "task files")
    as_pairs = lambda pairs: [{"input": grid_in.tolist(), "output": grid_out.tolist()} for grid_in, grid_out in pairs]  # noqa: E731
    return {
        "challenges": {task.name: {"train": as_pairs(task.examples["train"]),
                                   "test": [{"input": grid_in.tolist()} for grid_in, _ in task.examples["test"]]} for task in tasks},
        "solutions": {task.name: [grid_out.tolist() for _, grid_out in task.examples["test"]] for task in tasks},
    }


def make_kaggle_combined(config: KaggleCombinedConfig) -> None:
    unknown = [subset for subset in config.subsets if subset not in SUBSET_FOLDERS]
    if unknown:
        raise DatasetError(f"--subsets {' '.join(unknown)}: unknown; choose from {' '.join(SUBSET_FOLDERS)}")
    for subset in config.subsets:
        folder = os.path.join(config.raw_data_dir, SUBSET_FOLDERS[subset])
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder} is not a folder: subset {subset} is read from {SUBSET_FOLDERS[subset]} under --raw-data-dir {config.raw_data_dir}")
        files = subset_files(folder)
        for kind, content in files.items():
            path = kaggle_file(config.output_prefix, subset, kind)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            write_text_atomically(path, json.dumps(content, separators=(",", ":")))
        print(f"{subset}: {len(files['challenges'])} tasks -> {kaggle_file(config.output_prefix, subset, '{challenges,solutions}')}")


if __name__ == "__main__":
    run_cli(KaggleCombinedConfig, make_kaggle_combined, prog="make_kaggle_combined.py")
