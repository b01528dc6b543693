"""What the puzzle kinds share: the error for bad input, one puzzle, and the builders' CSV format."""

import csv
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

from dataset.common import PUZZLE_CSV_HEADER


class PuzzleInputError(ValueError):
    """A puzzle given by the user that cannot be read or run; the message says what is wrong and how to write it."""


@dataclass
class Puzzle:
    name: str  # where it came from, e.g. "puzzles.csv line 3"
    inputs: np.ndarray  # token ids [seq_len], as the dataset builder writes them
    labels: Optional[np.ndarray] = None  # the true answer's tokens, when known
    # The Sudoku and maze builders give every puzzle the blank identifier 0 (their datasets have no other).
    identifier: int = 0


def csv_rows(path: str) -> Iterator[Tuple[str, str, str]]:
    """(name, question, answer) of each row of a `source,question,answer,rating` CSV (the builders'
    format); the answer may be empty."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except OSError as error:
        raise PuzzleInputError(f"cannot read {path} ({error.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise PuzzleInputError(f"{path} is not a UTF-8 CSV file ({error})") from None
    if not rows or rows[0] != PUZZLE_CSV_HEADER:
        raise PuzzleInputError(f"{path} line 1: the header must be {','.join(PUZZLE_CSV_HEADER)} (the dataset builders' CSV format)")
    if len(rows) == 1:
        raise PuzzleInputError(f"{path} holds no puzzle rows after the header")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(PUZZLE_CSV_HEADER):
            raise PuzzleInputError(f"{path} line {line}: {len(row)} columns, expected {len(PUZZLE_CSV_HEADER)} ({','.join(PUZZLE_CSV_HEADER)})")
        yield f"{path} line {line}", row[1], row[2]


def tokens_of(text: str, charset: str, where: str) -> np.ndarray:
    """Each character as its index in `charset` + 1 (the builders' token ids; 0 is PAD)."""
    bad = next((char for char in text if char not in charset), None)
    if bad is not None:
        raise PuzzleInputError(f"{where}: character {bad!r} at position {text.index(bad)} is not one of {charset!r}")
    return np.array([charset.index(char) + 1 for char in text], dtype=np.int32)
