"""Solve your own puzzles with a trained checkpoint (HRM or TRM): a Sudoku, a maze, or an ARC task of a built dataset.

    python solve.py CHECKPOINT --sudoku 8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4..
    python solve.py CHECKPOINT --sudoku puzzles.csv      # every row of a CSV in the builders' format (source,question,answer,rating)
    python solve.py CHECKPOINT --maze maze.txt           # the maze's lines: '#' wall, ' ' open, 'S' start, 'G' goal (or a CSV of mazes)
    python solve.py CHECKPOINT --arc 00576224 [--data-path data/arc-aug-1000]
    python solve.py CHECKPOINT --sudoku ... --segments 32 [--adaptive] [--device cpu] [--output answers.json]

CHECKPOINT is a step_N.pt written by pretrain.py (or an original weights-only step_N) with its run's
all_config.yaml beside it. A Sudoku is 81 characters, row by row ('.' or '0' for a blank); in a CSV
the answer column, where filled in, is the truth. For each puzzle it prints the answer as a grid,
whether it is a valid solution (Sudoku: the rules and the givens; maze: the 'o' cells form one path
from S to G along open cells, nothing else changed, and whether it is a shortest one), whether it is
the true answer where that is known, the ACT segments run and the q_halt confidence sigmoid(q_halt).
An ARC task runs all its augmented copies in the dataset's test split; their answers, mapped back
and voted, give the top two attempts, shown with the true output.

--segments sets the ACT segments per puzzle (default: the run's arch.halt_max_steps); --adaptive
stops each puzzle where its Q head says halt (q_halt > q_continue, or q_halt > 0 with
arch.no_ACT_continue), --segments being the cap. Bad input (a puzzle that cannot be read, a size
the model does not take, a task not in the dataset, a checkpoint for another kind of puzzle) stops
with one message and exit code 2.
"""

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from dataset.build_maze_dataset import maze_metadata
from dataset.build_sudoku_dataset import sudoku_metadata
from dataset.common import PuzzleDatasetMetadata
from evaluate import evaluation_config, load_trained_model, set_evaluation_halting
from evaluators.arc import ARC, TaskResult
from models.losses import IGNORE_LABEL_ID
from pretrain import create_dataloader, evaluate_batch, progress_interval
from puzzles import maze, sudoku
from puzzles.arc import task_puzzles, task_result
from puzzles.common import Puzzle, PuzzleInputError
from utils.checkpoint import TrainState
from utils.config import PretrainConfig, read_saved_config
from utils.distributed import DistributedContext
from utils.files import write_text_atomically

BAD_INPUT_EXIT_CODE = 2
PROBLEMS_SHOWN = 3  # per answer; --output lists them all


# ----------------------------------------------------------------------------------------------
# Running the model


def run_puzzles(state: TrainState, puzzles: List[Puzzle], batch_size: int, device: torch.device,
                evaluator: Optional[ARC] = None) -> List[Tuple[np.ndarray, int, float]]:
    """(predicted tokens, segments run, sigmoid(q_halt)) of each puzzle; each batch's rows also vote in `evaluator`."""
    model = state.loss_head.model
    answers = []
    batches = range(0, len(puzzles), batch_size)
    progress = tqdm(total=len(batches) * model.evaluation_steps, desc="solve", unit="segment", leave=False, mininterval=progress_interval())
    state.loss_head.eval()
    with torch.inference_mode():
        for start in batches:
            chunk = puzzles[start:start + batch_size]
            inputs = torch.from_numpy(np.stack([puzzle.inputs for puzzle in chunk]).astype(np.int32))
            batch = {
                "inputs": inputs,
                "labels": torch.full_like(inputs, IGNORE_LABEL_ID),  # the truth is checked here, not by the loss head
                "puzzle_identifiers": torch.tensor([puzzle.identifier for puzzle in chunk], dtype=torch.int32),
            }
            carry, _, outputs = evaluate_batch(state, {key: value.to(device) for key, value in batch.items()}, ["preds", "q_halt_logits"], progress)
            if evaluator is not None:
                evaluator.update_batch(batch, outputs)
            confidence = torch.sigmoid(outputs["q_halt_logits"].float()).tolist()
            answers += zip(outputs["preds"].cpu().numpy(), carry.steps.tolist(), confidence)
    progress.close()
    return answers


# ----------------------------------------------------------------------------------------------
# Reports: one dict per puzzle (the JSON of --output) and its printed form


def grid_report(kind: str, puzzle: Puzzle, answer: np.ndarray, segments: int, confidence: float) -> dict:
    """A Sudoku's or maze's answer: the grids, validity, correctness where the truth is known, ACT segments, q_halt confidence."""
    if kind == "sudoku":
        problems = sudoku.check_sudoku(puzzle.inputs, answer)
        report = {"question": sudoku.sudoku_text(puzzle.inputs), "answer": sudoku.sudoku_text(answer)}
    else:
        problems = maze.check_maze(puzzle.inputs, answer)
        report = {"question": maze.maze_lines(puzzle.inputs), "answer": maze.maze_lines(answer),
                  "path_length": None if problems else int((answer == maze.PATH).sum()),
                  "shortest_path_length": maze.shortest_path_length(puzzle.inputs)}
    correct = None if puzzle.labels is None else bool(np.array_equal(answer, puzzle.labels))
    return {"name": puzzle.name, "kind": kind, **report, "valid": not problems, "problems": problems, "correct": correct,
            "cells_wrong": None if puzzle.labels is None else int((answer != puzzle.labels).sum()),
            "segments": segments, "q_halt_confidence": confidence}


def print_grid_report(report: dict, answer: np.ndarray) -> None:
    print(f"{report['name']}:")
    if report["kind"] == "sudoku":
        grid = sudoku.format_sudoku(answer)
    else:  # framed, so that the open cells (spaces) at the ends of a line show
        border = "+" + "-" * len(report["answer"][0]) + "+"
        grid = "\n".join([border] + [f"|{line}|" for line in report["answer"]] + [border])
    print("\n".join("  " + line for line in grid.split("\n")))
    if report["valid"]:
        verdict = "yes"
        if report["kind"] == "maze":
            verdict += f" (a path of {report['path_length']} cells; the shortest has {report['shortest_path_length']})"
    else:
        shown = report["problems"][:PROBLEMS_SHOWN]
        more = len(report["problems"]) - len(shown)
        verdict = "no: " + "; ".join(shown) + (f"; and {more} more" if more else "")
    print(f"valid solution: {verdict}")
    if report["correct"] is not None:
        print(f"true answer: {'yes' if report['correct'] else 'no, ' + str(report['cells_wrong']) + ' cells differ'}")
    print(f"segments: {report['segments']}, q_halt confidence: {report['q_halt_confidence']:.3f}\n")


def arc_report(task: str, result: TaskResult, data_path: str, answers: List[Tuple[np.ndarray, int, float]], copies: int) -> dict:
    return {
        "name": task, "kind": "arc", "data_path": data_path, "copies": copies,
        "mean_segments": float(np.mean([segments for _, segments, _ in answers])),
        "solved_at_2": result.solved_at(2),
        "test_inputs": [{
            "index": test.index,
            "input": test.input.tolist(),
            "attempts": [{"grid": candidate.grid.tolist(), "votes": candidate.votes, "q_halt_confidence": candidate.mean_q}
                         for candidate in test.candidates[:2]],
            "truth": test.target.tolist(),
            "correct_attempt": test.correct_rank if test.correct_rank is not None and test.correct_rank <= 2 else None,
            "num_votes": sum(candidate.votes for candidate in test.candidates),
        } for test in result.test_inputs],
    }


def print_arc_report(report: dict) -> None:
    def lines(grid) -> List[str]:
        return ["    " + " ".join(str(value) for value in row) for row in grid]

    print(f"ARC task {report['name']} ({report['data_path']}): {report['copies']} copies, mean segments {report['mean_segments']:.1f}")
    for test in report["test_inputs"]:
        print(f"test input {test['index'] + 1} ({len(test['input'])}x{len(test['input'][0])}):")
        print("\n".join(lines(test["input"])))
        for rank, attempt in enumerate(test["attempts"], start=1):
            mark = ", correct" if test["correct_attempt"] == rank else ""
            print(f"  attempt {rank}: {attempt['votes']} of {test['num_votes']} votes, q_halt confidence {attempt['q_halt_confidence']:.3f}{mark}")
            print("\n".join(lines(attempt["grid"])))
        if not test["attempts"]:
            print("  no attempt: no copy's answer holds a grid")
        print("  true output:" + ("" if test["correct_attempt"] else " (not among the attempts)"))
        print("\n".join(lines(test["truth"])))
    print(f"solved (pass@2): {'yes' if report['solved_at_2'] else 'no'}")


# ----------------------------------------------------------------------------------------------
# The command


def parse_arguments(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python solve.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="step_N.pt (or an original step_N) with its run's all_config.yaml beside it")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--sudoku", metavar="PUZZLE|CSV", help="81 characters ('.' or '0' for a blank), or a CSV file of Sudokus")
    kind.add_argument("--maze", metavar="FILE", help="a text file with the maze's lines, or a CSV file of mazes")
    kind.add_argument("--arc", metavar="TASK", help="an ARC task id of the dataset's test split, e.g. 00576224")
    parser.add_argument("--data-path", help="the ARC dataset (default: the run's data_path)")
    parser.add_argument("--segments", type=int, help="ACT segments per puzzle (default: the run's arch.halt_max_steps); the cap with --adaptive")
    parser.add_argument("--adaptive", action="store_true", help="stop each puzzle where its Q head says halt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--batch-size", type=int, default=256, help="puzzles run together (default: 256)")
    parser.add_argument("--output", metavar="FILE", help="also write the answers as JSON")
    arguments = parser.parse_args(argv)
    for name in ("segments", "batch_size"):
        if getattr(arguments, name) is not None and getattr(arguments, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if arguments.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {arguments.device}: this machine has no CUDA device; use --device cpu")
    return arguments


@dataclass
class PuzzleSet:
    kind: str  # "sudoku", "maze" or "arc"
    puzzles: List[Puzzle]
    metadata: PuzzleDatasetMetadata  # the shape they give the model, as the dataset builder would write it
    description: str  # how messages name them
    data_path: Optional[str] = None  # ARC: the dataset they come from
    evaluator: Optional[ARC] = None  # ARC: un-augments and votes


def read_puzzles(arguments: argparse.Namespace, saved: PretrainConfig, config: PretrainConfig, context: DistributedContext) -> PuzzleSet:
    if arguments.sudoku is not None:
        puzzles = sudoku.read_sudokus(arguments.sudoku)
        return PuzzleSet("sudoku", puzzles, sudoku_metadata(len(puzzles), len(puzzles)), "Sudoku puzzles")
    if arguments.maze is not None:
        puzzles = maze.read_mazes(arguments.maze)
        sides = sorted({math.isqrt(len(puzzle.inputs)) for puzzle in puzzles})
        if len(sides) > 1:
            raise PuzzleInputError(f"{arguments.maze} holds mazes of several sizes ({', '.join(f'{s}x{s}' for s in sides)}); give one size at a time")
        return PuzzleSet("maze", puzzles, maze_metadata(sides[0], len(puzzles), len(puzzles)), f"a {sides[0]}x{sides[0]} maze")
    data_path = arguments.data_path or saved.test_data_paths[0]
    # Opening the test split checks the dataset whole and gives its metadata.
    test_config = config.model_copy(update={"data_paths": [data_path], "data_paths_test": []})
    metadata = create_dataloader(test_config, "test", context, test_set_mode=True, epochs_per_iter=1).metadata
    evaluator = ARC(data_path, metadata)
    return PuzzleSet("arc", task_puzzles(evaluator, arguments.arc, data_path), metadata, f"the dataset {data_path}", data_path, evaluator)


def solve(arguments: argparse.Namespace) -> Dict:
    device = torch.device(arguments.device)
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    saved = read_saved_config(os.path.dirname(os.path.abspath(arguments.checkpoint)))
    # Eager: compiling takes longer than a few puzzles run.
    config = evaluation_config(saved, context, arguments.batch_size, compile=False)
    given = read_puzzles(arguments, saved, config, context)

    state = load_trained_model(config, given.metadata, context, arguments.checkpoint, puzzles=given.description,
                               data_path=given.data_path, trained_on=",".join(saved.data_paths))
    model = state.loss_head.model
    set_evaluation_halting(model, arguments.segments, arguments.adaptive)
    answers = run_puzzles(state, given.puzzles, arguments.batch_size, device, given.evaluator)

    header = {"checkpoint": arguments.checkpoint, "step": state.step, "device": str(device), "segments": model.evaluation_steps,
              "adaptive_halting": model.eval_adaptive_halting}
    print(f"{arguments.checkpoint} (step {state.step}) on {device}: "
          f"{'adaptive halting, at most' if arguments.adaptive else 'every puzzle'} {model.evaluation_steps} segments\n")
    if given.kind == "arc":
        copies = len({puzzle.identifier for puzzle in given.puzzles})
        report = arc_report(arguments.arc, task_result(given.evaluator, arguments.arc), given.data_path, answers, copies)
        print_arc_report(report)
        return {**header, "puzzles": [report]}

    reports = []
    for puzzle, (answer, segments, confidence) in zip(given.puzzles, answers):
        reports.append(grid_report(given.kind, puzzle, answer, segments, confidence))
        print_grid_report(reports[-1], answer)
    if len(reports) > 1:
        known = [report for report in reports if report["correct"] is not None]
        print(f"{len(reports)} puzzles: {sum(report['valid'] for report in reports)} valid solutions"
              + (f", {sum(report['correct'] for report in known)} of {len(known)} true answers" if known else "")
              + f"; mean segments {np.mean([report['segments'] for report in reports]):.1f}")
    return {**header, "puzzles": reports}


def main(argv: Optional[List[str]] = None) -> int:
    arguments = parse_arguments(argv)
    try:
        results = solve(arguments)
    except (FileNotFoundError, ValueError) as error:  # bad input: PuzzleInputError, CheckpointMismatchError, CheckpointError, ConfigError, DatasetError
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT_EXIT_CODE
    if arguments.output:
        write_text_atomically(arguments.output, json.dumps(results, indent=1))
        print(f"wrote {arguments.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
