"""An ARC task of a built dataset for solve.py: the test examples of all its augmented copies, and the vote.

The scoring is evaluators/arc.py's: each copy's answer is cropped, mapped back through the copy's
colour permutation and dihedral transform, and votes for that grid; grids rank by (votes, mean
sigmoid(q_halt)).
"""

import difflib
from typing import List

import numpy as np

from evaluators.arc import ARC, TaskResult, tally
from puzzles.common import Puzzle, PuzzleInputError


def task_puzzles(evaluator: ARC, task: str, data_path: str) -> List[Puzzle]:
    """One puzzle per test example of every copy of `task` (the task and its augmentations) in the
    test split, with the copy's own puzzle identifier and its label as the truth."""
    split = evaluator.split
    identifiers = sorted(identifier for identifier, parsed in split.parsed.items() if parsed.task == task)
    if not identifiers:
        raise PuzzleInputError(_unknown_task(evaluator, task, data_path))
    puzzles = []
    for identifier in identifiers:
        first, set_index = split.start[identifier], split.set_of[identifier]
        for index in range(split.count[identifier]):
            row = first + index
            puzzles.append(Puzzle(name=f"{split.names[identifier]}, test input {index + 1}",
                                  inputs=np.asarray(split.inputs[set_index][row], dtype=np.int32),
                                  labels=np.asarray(split.labels[set_index][row], dtype=np.int32), identifier=identifier))
    return puzzles


def task_result(evaluator: ARC, task: str) -> TaskResult:
    """The task's test inputs with their true outputs and candidates, best first, from the votes cast."""
    return tally(evaluator.split, evaluator.votes).tasks[task]


def _unknown_task(evaluator: ARC, task: str, data_path: str) -> str:
    tasks = sorted(evaluator.split.tasks())
    if any(name == task or name.startswith(f"{task}_t") for name in evaluator.split.names):
        return (f"ARC task {task!r} is in {data_path} only as training examples (its test examples went to the train split): "
                "only tasks under a folder named 'evaluation' have held-out test examples to solve. Give one of "
                f"{', '.join(tasks[:5])}{', ...' if len(tasks) > 5 else ''} ({len(tasks)} tasks)")
    guesses = difflib.get_close_matches(task, tasks, n=3)
    hint = f"Did you mean {' or '.join(guesses)}? " if guesses else ""
    return (f"ARC task {task!r} is not in the test split of {data_path}. {hint}Its {len(tasks)} tasks are "
            f"{', '.join(tasks[:5])}{', ...' if len(tasks) > 5 else ''} (ids as in identifiers.json, without the _t<k>_<colours> suffix of a copy)")
