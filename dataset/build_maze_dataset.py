"""Build the Maze dataset (30x30 grids, seq_len 900, vocab 6: PAD 0, then `# SGo` as 1..5).

Example (Maze-30x30-Hard-1k, 1000 training mazes):
    python dataset/build_maze_dataset.py
"""

import math
import os
import sys
from typing import Optional

import numpy as np
from pydantic import BaseModel, Field
from tqdm import tqdm

if __package__ in (None, ""):
    # Run as `python dataset/build_maze_dataset.py`: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.common import (  # noqa: E402
    SOURCE_REPO_RULE,
    DatasetError,
    check_output_dir,
    PuzzleCSV,
    PuzzleDatasetMetadata,
    dihedral_transform,
    read_puzzle_csv,
    resolve_source_csv,
    run_cli,
    save_set_arrays,
    seeded_rng,
    staged_output_dir,
    subsample_indices,
    write_json,
    write_split_metadata,
)

# Wall, open, start, goal, path; token = index + 1 (0 is PAD).
MAZE_CHARSET = "# SGo"
NUM_DIHEDRAL_TRANSFORMS = 8


class MazeBuildConfig(BaseModel):
    """Build a Maze dataset folder (train/ and test/ with numpy arrays) from a maze CSV source."""

    source_repo: str = Field(
        "sapientinc/maze-30x30-hard-1k",
        description="Hugging Face dataset id, or a local folder holding train.csv and test.csv "
        f"(header source,question,answer,rating; grids of '# SGo'); a local folder needs no network. Rule: {SOURCE_REPO_RULE}",
    )
    output_dir: str = Field("data/maze-30x30-hard-1k", description="dataset folder to create (an earlier build there is replaced)")
    subsample_size: Optional[int] = Field(None, ge=1, description="keep this many training mazes, drawn at random")
    aug: bool = Field(False, description="add the 8 dihedral transforms (rotations, reflections) of each training maze to its group")
    seed: int = Field(0, ge=0, description="random seed (used by --subsample-size): the same command and seed give byte-identical output")


def load_maze_csv(path: str) -> PuzzleCSV:
    """Read and validate a maze CSV: square grids of one size, characters from MAZE_CHARSET."""
    table = read_puzzle_csv(path, MAZE_CHARSET, cells=None)
    cells = table.questions.shape[1]
    side = math.isqrt(cells)
    if side * side != cells:
        raise DatasetError(f"{path} line {table.line_numbers[0]}, field question: {cells} characters is not a square grid")
    return table


def maze_metadata(side: int, num_groups: int, num_puzzles: int) -> PuzzleDatasetMetadata:
    return PuzzleDatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=len(MAZE_CHARSET) + 1,  # PAD + charset
        seq_len=side * side,
        num_puzzle_identifiers=1,
        total_groups=num_groups,
        mean_puzzle_examples=1,
        total_puzzles=num_puzzles,
        sets=["all"],
    )


def write_maze_split(dataset_dir: str, split: str, questions: np.ndarray, answers: np.ndarray, augment: bool) -> None:
    """One group per maze: the maze, then (with `augment`) its other 7 dihedral images; one example each."""
    num_mazes, cells = questions.shape
    side = math.isqrt(cells)
    transform_ids = range(NUM_DIHEDRAL_TRANSFORMS if augment else 1)
    arrays = {}
    for field, grids in (("inputs", questions), ("labels", answers)):
        squares = grids.reshape(num_mazes, side, side)
        images = [dihedral_transform(squares, transform_id) for transform_id in tqdm(transform_ids, desc=f"maze {split} {field}", unit="transform")]
        # Group-major order: maze 0 under transforms 0..7, then maze 1, ...
        arrays[field] = np.stack(images, axis=1).reshape(-1, cells)
    num_examples = len(arrays["inputs"])
    arrays["puzzle_identifiers"] = np.zeros(num_examples)  # every puzzle is the blank identifier 0
    arrays["puzzle_indices"] = np.arange(num_examples + 1)  # one example per puzzle
    arrays["group_indices"] = np.arange(0, num_examples + 1, len(transform_ids))
    save_set_arrays(dataset_dir, split, "all", arrays)
    write_split_metadata(dataset_dir, split, maze_metadata(side, num_groups=num_mazes, num_puzzles=num_examples))


def build_maze_dataset(config: MazeBuildConfig) -> None:
    check_output_dir(config.output_dir)  # fail before a long download, not after
    # Read and validate both splits before writing anything.
    splits = {}
    for split in ("train", "test"):
        path = resolve_source_csv(config.source_repo, split)
        splits[split] = (path, load_maze_csv(path))
    (train_path, train), (test_path, test) = splits["train"], splits["test"]
    if train.questions.shape[1] != test.questions.shape[1]:
        raise DatasetError(
            f"{test_path} holds grids of {test.questions.shape[1]} cells but {train_path} of "
            f"{train.questions.shape[1]}; both splits must use one maze size"
        )
    keep = subsample_indices(seeded_rng(config.seed, 0), len(train.questions), config.subsample_size, source=train_path)

    with staged_output_dir(config.output_dir) as dataset_dir:
        write_maze_split(dataset_dir, "train", train.questions[keep], train.answers[keep], config.aug)
        write_maze_split(dataset_dir, "test", test.questions, test.answers, augment=False)
        write_json(os.path.join(dataset_dir, "identifiers.json"), ["<blank>"])
    print(f"wrote {config.output_dir}: {len(keep)} train mazes x {NUM_DIHEDRAL_TRANSFORMS if config.aug else 1}, "
          f"{len(test.questions)} test mazes")


if __name__ == "__main__":
    run_cli(MazeBuildConfig, build_maze_dataset, prog="build_maze_dataset.py")
