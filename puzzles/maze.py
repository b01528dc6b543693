"""Mazes for solve.py: a square maze as text lines, or a CSV of them; the answer as lines; the path check.

The builder's characters (dataset/build_maze_dataset.py): '#' wall, ' ' open, 'S' start, 'G' goal,
'o' path; tokens are their index + 1 (0 is PAD). A solution marks with 'o' a path of open cells from
S to G and changes nothing else.
"""

import math
import os
from collections import deque
from typing import List, Optional

import numpy as np

from dataset.build_maze_dataset import MAZE_CHARSET
from puzzles.common import Puzzle, PuzzleInputError, csv_rows, tokens_of

WALL, OPEN, START, GOAL, PATH = (MAZE_CHARSET.index(char) + 1 for char in "# SGo")
CHARACTERS = "?" + MAZE_CHARSET  # by token; '?' shows a cell that holds no maze character (PAD)
NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def parse_maze(lines: List[str], where: str = "the maze") -> np.ndarray:
    """Tokens of a square maze given as its lines (trailing empty lines ignored)."""
    while lines and not lines[-1]:
        lines = lines[:-1]
    side = len(lines)
    if side == 0:
        raise PuzzleInputError(f"{where} is empty: give one line per row, of the characters {MAZE_CHARSET!r}")
    for number, line in enumerate(lines, start=1):
        if len(line) != side:
            raise PuzzleInputError(
                f"{where} line {number}: {len(line)} characters, expected {side}: a maze is square, as many characters per "
                "line as it has lines (open cells are spaces: keep the trailing ones)"
            )
    tokens = tokens_of("".join(lines), MAZE_CHARSET, where)
    check_ends(tokens, where)
    return tokens


def parse_maze_cells(cells: str, where: str) -> np.ndarray:
    """Tokens of a maze given as one string of N*N characters (a CSV field)."""
    side = math.isqrt(len(cells))
    if side * side != len(cells) or side == 0:
        raise PuzzleInputError(f"{where}: {len(cells)} characters is not a square maze")
    tokens = tokens_of(cells, MAZE_CHARSET, where)
    check_ends(tokens, where)
    return tokens


def check_ends(tokens: np.ndarray, where: str) -> None:
    for token, name in ((START, "start S"), (GOAL, "goal G")):
        count = int((tokens == token).sum())
        if count != 1:
            raise PuzzleInputError(f"{where}: {count} cells are the {name}; a maze has exactly one")


def read_mazes(path: str) -> List[Puzzle]:
    """A maze as a text file of its lines, or every row of a CSV in the builders' format
    (source,question,answer,rating), whose answer, when given, is the truth."""
    if not os.path.isfile(path):
        raise PuzzleInputError(f"{path}: no such file; give a text file with the maze's lines, or a CSV of mazes")
    if path.endswith(".csv"):
        puzzles = []
        for name, question, answer in csv_rows(path):
            inputs = parse_maze_cells(question, f"{name}, question")
            labels = None
            if answer:
                labels = parse_maze_cells(answer, f"{name}, answer")
                problems = check_maze(inputs, labels) if labels.size == inputs.size else [f"it has {labels.size} cells, the question {inputs.size}"]
                if problems:
                    raise PuzzleInputError(f"{name}, answer: not a solution of the question ({problems[0]}); fix it or leave the answer empty")
            puzzles.append(Puzzle(name=name, inputs=inputs, labels=labels))
        return puzzles
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PuzzleInputError(f"cannot read {path} as text ({error})") from None
    return [Puzzle(name=path, inputs=parse_maze(lines, path))]


def maze_lines(tokens: np.ndarray) -> List[str]:
    """The maze's lines; '?' where a cell holds no maze character (PAD)."""
    side = math.isqrt(len(tokens))
    text = "".join(CHARACTERS[token] for token in np.asarray(tokens).tolist())
    return [text[row * side:(row + 1) * side] for row in range(side)]


def check_maze(question: np.ndarray, answer: np.ndarray) -> List[str]:
    """What makes `answer` not a solution of `question` (empty when it is one): cells changed other
    than open ones marked 'o', and 'o' cells that do not form one path from S to G (each 'o' between
    exactly two path cells, S and G at its ends, all of it connected)."""
    side = math.isqrt(len(question))
    question, answer = np.asarray(question).reshape(side, side), np.asarray(answer).reshape(side, side)
    problems = []
    changed = (answer != question) & ~((question == OPEN) & (answer == PATH))
    if changed.any():
        row, column = np.argwhere(changed)[0]
        problems.append(f"{int(changed.sum())} cell(s) changed other than open cells marked 'o' (the first: row {row + 1} "
                        f"column {column + 1}, {CHARACTERS[question[row, column]]!r} became {CHARACTERS[answer[row, column]]!r})")
        return problems

    on_path = np.isin(answer, (PATH, START, GOAL))
    padded = np.pad(on_path, 1)
    neighbours = padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    for token, name in ((START, "S"), (GOAL, "G")):
        count = int(neighbours[answer == token][0])
        if count != 1:
            problems.append(f"{name} has {count} path neighbours, a path's end has 1")
    for what, cells in (("a dead end", (answer == PATH) & (neighbours < 2)), ("a branch", (answer == PATH) & (neighbours > 2))):
        if cells.any():
            row, column = np.argwhere(cells)[0]
            problems.append(f"{int(cells.sum())} 'o' cell(s) are {what} of the path (the first: row {row + 1} column {column + 1})")
    unreached = on_path & ~_reachable(on_path, tuple(np.argwhere(answer == START)[0]))
    if unreached.any():
        problems.append(f"{int(unreached.sum())} path cell(s) are not connected to S" + (" (G among them)" if unreached[answer == GOAL][0] else ""))
    return problems


def shortest_path_length(question: np.ndarray) -> Optional[int]:
    """The fewest 'o' cells that can join S to G along open cells, or None where none can."""
    side = math.isqrt(len(question))
    grid = np.asarray(question).reshape(side, side)
    start, goal = tuple(np.argwhere(grid == START)[0]), tuple(np.argwhere(grid == GOAL)[0])
    distance = _distances(grid != WALL, start)
    return None if distance[goal] < 0 else int(distance[goal]) - 1


def _reachable(cells: np.ndarray, start) -> np.ndarray:
    return _distances(cells, start) >= 0


def _distances(cells: np.ndarray, start) -> np.ndarray:
    """Steps from `start` to every cell of `cells` through 4-neighbours in `cells` (-1: unreachable)."""
    distance = np.full(cells.shape, -1, dtype=np.int64)
    distance[start] = 0
    queue = deque([start])
    while queue:
        row, column = queue.popleft()
        for step_row, step_column in NEIGHBOURS:
            near = (row + step_row, column + step_column)
            if 0 <= near[0] < cells.shape[0] and 0 <= near[1] < cells.shape[1] and cells[near] and distance[near] < 0:
                distance[near] = distance[row, column] + 1
                queue.append(near)
    return distance
