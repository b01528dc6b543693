"""Build the Sudoku dataset (seq_len 81, vocab 11: PAD 0, digit d stored as d + 1, blank = 0 + 1).

Example (the 1k-puzzle training set of the paper):
    python dataset/build_sudoku_dataset.py --output-dir data/sudoku-extreme-1k-aug-1000 --subsample-size 1000 --num-aug 1000
"""

import contextlib
import os
import sys
from typing import NamedTuple, Optional

import numpy as np
from pydantic import BaseModel, Field
from tqdm import tqdm

if __package__ in (None, ""):
    # Run as `python dataset/build_sudoku_dataset.py`: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.common import (  # noqa: E402
    SOURCE_REPO_RULE,
    SPLITS,
    DatasetError,
    check_output_dir,
    PuzzleDatasetMetadata,
    open_set_array,
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

# CSV characters; token = index + 1, so "." (blank) -> 1 and digit d -> d + 1.
SUDOKU_CHARSET = ".123456789"
BLANK_TOKEN = 1
NUM_CELLS = 81

# Output rows built per vectorised chunk: bounds memory whatever the dataset size.
ROWS_PER_CHUNK = 1 << 16


class SudokuBuildConfig(BaseModel):
    """Build a Sudoku dataset folder (train/ and test/ with numpy arrays) from a puzzle CSV source."""

    source_repo: str = Field(
        "sapientinc/sudoku-extreme",
        description="Hugging Face dataset id, or a local folder holding train.csv and test.csv "
        f"(header source,question,answer,rating); a local folder needs no network. Rule: {SOURCE_REPO_RULE}",
    )
    output_dir: str = Field("data/sudoku-extreme-full", description="dataset folder to create (an earlier build there is replaced)")
    subsample_size: Optional[int] = Field(None, ge=1, description="keep this many training puzzles, drawn at random")
    min_difficulty: Optional[int] = Field(None, description="keep only puzzles with rating >= this value (train and test)")
    num_aug: int = Field(0, ge=0, description="augmented copies per training puzzle (digit, band/row, stack/column permutations, transpose)")
    seed: int = Field(0, ge=0, description="random seed: the same command and seed give byte-identical output")
    max_blanks: Optional[int] = Field(
        None,
        ge=0,
        description="reveal randomly chosen answer cells of every puzzle (train and test) until at most this many "
        "blanks remain; makes an easy, quickly learnable variant of the real puzzles (off by default, as the original)",
    )


class SudokuPuzzles(NamedTuple):
    questions: np.ndarray  # uint8 [n, 81] tokens, BLANK_TOKEN for a blank
    answers: np.ndarray  # uint8 [n, 81] tokens 2..10


def _check_answers(path: str, questions: np.ndarray, answers: np.ndarray, line_numbers) -> None:
    """Every answer must be a complete, valid grid that agrees with its question's givens."""
    blank_rows = np.nonzero((answers == BLANK_TOKEN).any(axis=1))[0]
    if blank_rows.size:
        row = blank_rows[0]
        raise DatasetError(f"{path} line {line_numbers[row]}, field answer: has a blank ('.'); answers must be complete grids")

    contradicts = (questions != BLANK_TOKEN) & (questions != answers)
    bad_rows, bad_cells = np.nonzero(contradicts)
    if bad_rows.size:
        row, cell = bad_rows[0], bad_cells[0]
        raise DatasetError(
            f"{path} line {line_numbers[row]}, field answer: row {cell // 9 + 1} column {cell % 9 + 1} is "
            f"{answers[row, cell] - 1} but the question gives {questions[row, cell] - 1}"
        )

    grids = answers.reshape(-1, 9, 9)
    units = {
        "row": grids,
        "column": grids.transpose(0, 2, 1),
        "box": grids.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9),
    }
    for unit_name, unit_cells in units.items():
        complete = np.sort(unit_cells, axis=-1) == np.arange(2, 11, dtype=np.uint8)
        bad_rows, bad_units = np.nonzero(~complete.all(axis=-1))
        if bad_rows.size:
            row = bad_rows[0]
            raise DatasetError(
                f"{path} line {line_numbers[row]}, field answer: {unit_name} {bad_units[0] + 1} does not hold "
                f"each digit 1-9 exactly once; the answer is not a valid solution"
            )


def _parse_ratings(path: str, ratings, line_numbers) -> np.ndarray:
    values = []
    for rating, line in zip(ratings, line_numbers):
        try:
            values.append(int(rating))
        except ValueError:
            raise DatasetError(f"{path} line {line}, field rating: {rating!r} is not an integer (needed by --min-difficulty)") from None
    return np.array(values, dtype=np.int64)


def load_sudoku_csv(path: str, min_difficulty: Optional[int]) -> SudokuPuzzles:
    """Read and validate a Sudoku CSV, keeping rows with rating >= min_difficulty when given."""
    table = read_puzzle_csv(path, SUDOKU_CHARSET, NUM_CELLS)
    _check_answers(path, table.questions, table.answers, table.line_numbers)
    keep = np.ones(len(table.ratings), dtype=bool)
    if min_difficulty is not None:
        keep = _parse_ratings(path, table.ratings, table.line_numbers) >= min_difficulty
        if not keep.any():
            raise DatasetError(f"{path}: no puzzle has rating >= {min_difficulty}; lower --min-difficulty")
    return SudokuPuzzles(table.questions[keep], table.answers[keep])


def reveal_cells(rng: np.random.Generator, puzzles: SudokuPuzzles, max_blanks: int) -> SudokuPuzzles:
    """Fill in random blanks from the answer until each question has at most `max_blanks` blanks."""
    blanks = puzzles.questions == BLANK_TOKEN
    # Rank the blanks of each puzzle in a random order (givens sort last); reveal the first ones.
    keys = np.where(blanks, rng.random(blanks.shape), 2.0)
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    num_to_reveal = np.maximum(blanks.sum(axis=1) - max_blanks, 0)
    reveal = blanks & (rank < num_to_reveal[:, None])
    return SudokuPuzzles(np.where(reveal, puzzles.answers, puzzles.questions), puzzles.answers)


def random_sudoku_transforms(rng: np.random.Generator, count: int):
    """`count` random validity-preserving transforms, as the original's `shuffle_sudoku`.

    Returns (source_cells [count, 81]: output cell i takes the value of input cell source_cells[i],
    digit_tokens [count, 11]: token -> token, with PAD and blank fixed).
    """
    digit_perms = rng.permuted(np.tile(np.arange(1, 10), (count, 1)), axis=1)
    transpose = rng.random(count) < 0.5

    def line_order():
        # Shuffle the 3 bands (3 lines each), and the 3 lines inside each band.
        bands = rng.permuted(np.tile(np.arange(3), (count, 1)), axis=1)
        lines_in_band = rng.permuted(np.tile(np.arange(3), (count, 3, 1)), axis=-1)
        return (bands[:, :, None] * 3 + lines_in_band).reshape(count, 9)

    row_order = line_order()
    col_order = line_order()
    rows = row_order[:, :, None]
    cols = col_order[:, None, :]
    # Transposing first means new cell (r, c) reads old cell (col_order[c], row_order[r]).
    source_cells = np.where(transpose[:, None, None], cols * 9 + rows, rows * 9 + cols).reshape(count, NUM_CELLS)

    digit_tokens = np.zeros((count, 11), dtype=np.uint8)
    digit_tokens[:, BLANK_TOKEN] = BLANK_TOKEN
    digit_tokens[:, 2:] = digit_perms + 1
    return source_cells, digit_tokens


def apply_sudoku_transforms(grids: np.ndarray, source_cells: np.ndarray, digit_tokens: np.ndarray) -> np.ndarray:
    """Apply transform k to grids[k] (uint8 tokens [count, 81])."""
    moved = np.take_along_axis(grids, source_cells, axis=1)
    return np.take_along_axis(digit_tokens, moved.astype(np.intp), axis=1)


def sudoku_metadata(num_groups: int, num_puzzles: int) -> PuzzleDatasetMetadata:
    return PuzzleDatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=len(SUDOKU_CHARSET) + 1,  # PAD + blank + 9 digits
        seq_len=NUM_CELLS,
        num_puzzle_identifiers=1,
        total_groups=num_groups,
        mean_puzzle_examples=1,
        total_puzzles=num_puzzles,
        sets=["all"],
    )


def write_sudoku_split(dataset_dir: str, split: str, puzzles: SudokuPuzzles, num_aug: int, rng: np.random.Generator) -> None:
    """One group per puzzle: the puzzle itself, then `num_aug` augmented copies; one example each."""
    num_puzzles = len(puzzles.questions)
    copies = 1 + num_aug
    num_examples = num_puzzles * copies
    puzzles_per_chunk = max(1, ROWS_PER_CHUNK // copies)
    with contextlib.ExitStack() as files, tqdm(total=num_puzzles, desc=f"sudoku {split}", unit="puzzle") as progress:
        arrays = {
            field: files.enter_context(open_set_array(dataset_dir, split, "all", field, (num_examples, NUM_CELLS), np.uint8))
            for field in ("inputs", "labels")
        }
        for start in range(0, num_puzzles, puzzles_per_chunk):
            stop = min(start + puzzles_per_chunk, num_puzzles)
            if num_aug:
                # One transform per copy, shared by the copy's input and label.
                source_cells, digit_tokens = random_sudoku_transforms(rng, (stop - start) * num_aug)
            for field, grids in (("inputs", puzzles.questions[start:stop]), ("labels", puzzles.answers[start:stop])):
                block = np.empty((stop - start, copies, NUM_CELLS), dtype=np.uint8)
                block[:, 0] = grids
                if num_aug:
                    augmented = apply_sudoku_transforms(np.repeat(grids, num_aug, axis=0), source_cells, digit_tokens)
                    block[:, 1:] = augmented.reshape(stop - start, num_aug, NUM_CELLS)
                arrays[field].append(block.reshape(-1, NUM_CELLS))
            progress.update(stop - start)

    save_set_arrays(
        dataset_dir,
        split,
        "all",
        {
            "puzzle_identifiers": np.zeros(num_examples),  # every puzzle is the blank identifier 0
            "puzzle_indices": np.arange(num_examples + 1),  # one example per puzzle
            "group_indices": np.arange(0, num_examples + 1, copies),  # a puzzle and its copies
        },
    )
    write_split_metadata(dataset_dir, split, sudoku_metadata(num_groups=num_puzzles, num_puzzles=num_examples))  # one example per puzzle


def build_sudoku_dataset(config: SudokuBuildConfig) -> None:
    check_output_dir(config.output_dir)  # fail before a long download, not after
    # Read and validate both splits before writing anything; each split has its own random stream.
    splits = {}
    for stream, split in enumerate(SPLITS):
        rng = seeded_rng(config.seed, stream)
        path = resolve_source_csv(config.source_repo, split)
        puzzles = load_sudoku_csv(path, config.min_difficulty)
        if split == "train":
            kept = f"{path} with rating >= {config.min_difficulty}" if config.min_difficulty is not None else path
            keep = subsample_indices(rng, len(puzzles.questions), config.subsample_size, source=kept)
            puzzles = SudokuPuzzles(puzzles.questions[keep], puzzles.answers[keep])
        if config.max_blanks is not None:
            puzzles = reveal_cells(rng, puzzles, config.max_blanks)
        splits[split] = (puzzles, rng)

    with staged_output_dir(config.output_dir) as dataset_dir:
        for split, (puzzles, rng) in splits.items():
            write_sudoku_split(dataset_dir, split, puzzles, config.num_aug if split == "train" else 0, rng)
        write_json(os.path.join(dataset_dir, "identifiers.json"), ["<blank>"])
    print(f"wrote {config.output_dir}: {len(splits['train'][0].questions)} train puzzles x {1 + config.num_aug}, "
          f"{len(splits['test'][0].questions)} test puzzles")


if __name__ == "__main__":
    run_cli(SudokuBuildConfig, build_sudoku_dataset, prog="build_sudoku_dataset.py")
