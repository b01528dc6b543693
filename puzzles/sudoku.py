"""Sudoku for solve.py: 81 characters ('.' or '0' for a blank) or a CSV of them; the answer as a grid; the rules.

Tokens are the builder's (dataset/build_sudoku_dataset.py): PAD 0, blank 1, digit d as d + 1.
"""

import os
from typing import List

import numpy as np

from dataset.build_sudoku_dataset import NUM_CELLS, SUDOKU_CHARSET
from puzzles.common import Puzzle, PuzzleInputError, csv_rows, tokens_of

BLANKS = ".0"


def parse_sudoku(text: str, where: str = "the Sudoku") -> np.ndarray:
    """Tokens of a Sudoku written as 81 characters, row by row: digits, '.' or '0' for a blank;
    whitespace is ignored."""
    cells = "".join(text.split()).replace("0", ".")
    if len(cells) != NUM_CELLS:
        raise PuzzleInputError(f"{where}: {len(cells)} characters, expected {NUM_CELLS} (9 rows of 9: digits 1-9, '.' or '0' for a blank)")
    return tokens_of(cells, SUDOKU_CHARSET, f"{where} (digits 1-9, '.' or '0' for a blank)")


def read_sudokus(argument: str) -> List[Puzzle]:
    """One Sudoku given as its 81 characters, or every row of a CSV file in the builders' format
    (source,question,answer,rating), whose answer, when given, is the truth."""
    if not os.path.isfile(argument):
        if argument.endswith(".csv"):
            raise PuzzleInputError(f"{argument}: no such file")
        return [Puzzle(name="the Sudoku", inputs=parse_sudoku(argument))]
    puzzles = []
    for name, question, answer in csv_rows(argument):
        inputs = parse_sudoku(question, f"{name}, question")
        labels = None
        if answer:
            labels = parse_sudoku(answer, f"{name}, answer")
            problems = check_sudoku(inputs, labels)
            if problems:
                raise PuzzleInputError(f"{name}, answer: not a solution of the question ({problems[0]}); fix it or leave the answer empty")
        puzzles.append(Puzzle(name=name, inputs=inputs, labels=labels))
    return puzzles


def digits(tokens: np.ndarray) -> np.ndarray:
    """The 9x9 grid of digits 1-9, 0 where a cell holds no digit (a blank or PAD)."""
    values = np.asarray(tokens, dtype=np.int64) - 1
    return np.where((values >= 1) & (values <= 9), values, 0).reshape(9, 9)


def sudoku_text(tokens: np.ndarray) -> str:
    """The grid as 81 characters, '.' for a cell without a digit."""
    return "".join(str(value) if value else "." for value in digits(tokens).ravel())


def format_sudoku(tokens: np.ndarray) -> str:
    """The grid in 9 lines with box separators."""
    grid = digits(tokens)
    lines = []
    for row in range(9):
        if row in (3, 6):
            lines.append("------+-------+------")
        cells = [str(value) if value else "." for value in grid[row]]
        lines.append(" | ".join(" ".join(cells[box:box + 3]) for box in (0, 3, 6)))
    return "\n".join(lines)


def check_sudoku(question: np.ndarray, answer: np.ndarray) -> List[str]:
    """What makes `answer` not a solution of `question` (empty when it is one): cells without a
    digit, givens changed, digits repeated in a row, column or 3x3 box."""
    given, grid = digits(question), digits(answer)
    problems = []
    empty = int((grid == 0).sum())
    if empty:
        problems.append(f"{empty} cell{'s hold' if empty > 1 else ' holds'} no digit")
    for row, column in zip(*np.nonzero((given > 0) & (grid != given))):
        problems.append(f"row {row + 1} column {column + 1} is {grid[row, column] or 'empty'} but the puzzle gives {given[row, column]}")
    units = {
        "row": grid,
        "column": grid.T,
        "box": grid.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9),
    }
    for unit_name, unit_cells in units.items():
        for index, cells in enumerate(unit_cells):
            counts = np.bincount(cells, minlength=10)[1:]
            for digit in np.nonzero(counts > 1)[0]:
                problems.append(f"{unit_name} {index + 1} holds {digit + 1} {counts[digit]} times")
    return problems
