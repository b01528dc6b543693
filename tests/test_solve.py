"""solve.py: a tiny checkpoint trained here answers shipped Sudokus and mazes and an ARC task, each
answer printed and checked; test-time segments and adaptive halting; every bad input gets one
message and exit code 2."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import pretrain
import solve
from dataset.build_sudoku_dataset import sudoku_metadata
from dataset.common import PuzzleDatasetMetadata
from puzzles import maze, sudoku
from puzzles.common import PuzzleInputError
from tests.tiny_runs import (ARC_EXAMPLE, MAZE_SAMPLE, REPO_ROOT, SUDOKU_SAMPLE, build_tiny_maze, build_tiny_sudoku, save_untrained_run,
                             tiny_overrides, training_environment)
from utils.checkpoint import content_checksum, list_checkpoints
from utils.distributed import DistributedContext

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
HALT_MAX_STEPS = 3  # tiny_overrides'


def csv_rows(path: str, count: int) -> list:
    with open(path) as file:
        return list(csv.DictReader(file))[:count]


def train(data_path: str, run: str, **overrides) -> str:
    torch.set_num_threads(1)
    pretrain.run_training(tiny_overrides(data_path, run, epochs=2, eval_interval=2, **overrides), CPU)
    return list_checkpoints(run)[-1]


@pytest.fixture(scope="module")
def sudoku_checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("sudoku"))
    return train(build_tiny_sudoku(folder), os.path.join(folder, "run"))


@pytest.fixture(scope="module")
def maze_checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("maze"))
    return train(build_tiny_maze(folder), os.path.join(folder, "run"), global_batch_size=8)


@pytest.fixture(scope="module")
def arc_checkpoint(tmp_path_factory):
    with open(os.path.join(ARC_EXAMPLE, "test", "dataset.json")) as file:
        metadata = PuzzleDatasetMetadata.model_validate(json.load(file))
    return save_untrained_run(str(tmp_path_factory.mktemp("arc") / "run"), metadata, data_path=ARC_EXAMPLE, global_batch_size=8)


def run_solve(capsys, *arguments) -> tuple:
    code = solve.main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def printed_sudokus(output: str) -> list:
    """The 81-character answers as printed: the rows of digits and dots between the box separators."""
    rows = [line.replace("|", "").split() for line in output.splitlines() if line.count("|") == 2]
    return ["".join("".join(row) for row in rows[start:start + 9]) for start in range(0, len(rows), 9)]


def report_lines(output: str, prefix: str) -> list:
    return [line[len(prefix):].strip() for line in output.splitlines() if line.startswith(prefix)]


def independent_maze_check(question_lines: list, answer_lines: list) -> bool:
    """Walk from S: nothing but open cells changed (to 'o'); each cell of the walk has exactly one path
    neighbour besides the one it came from, until G, which has none; the walk uses every path cell."""
    question, answer = np.array([list(line) for line in question_lines]), np.array([list(line) for line in answer_lines])
    if not np.all((question == answer) | ((question == " ") & (answer == "o"))):
        return False
    on_path = {tuple(cell) for cell in np.argwhere(np.isin(answer, ["o", "S", "G"]))}
    previous, position = None, tuple(np.argwhere(answer == "S")[0])
    visited = {position}
    while True:
        onward = [cell for cell in ((position[0] + dr, position[1] + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)))
                  if cell in on_path and cell != previous]
        if answer[position] == "G":
            return not onward and visited == on_path
        if len(onward) != 1 or onward[0] in visited:
            return False
        previous, position = position, onward[0]
        visited.add(position)


# ----------------------------------------------------------------------------------------------
# Sudoku


def test_a_sudoku_is_answered_printed_and_checked(sudoku_checkpoint, capsys, tmp_path):
    row = csv_rows(os.path.join(SUDOKU_SAMPLE, "test.csv"), 1)[0]
    output_file = tmp_path / "answer.json"
    code, out, err = run_solve(capsys, sudoku_checkpoint, "--sudoku", row["question"].replace(".", "0"), "--output", output_file)
    assert code == 0, err
    [answer] = printed_sudokus(out)
    # Sudoku-Extreme puzzles have one solution: the printed grid is valid exactly when it is the CSV's answer.
    [valid] = report_lines(out, "valid solution:")
    assert valid.startswith("yes") == (answer == row["answer"])
    [segments] = report_lines(out, "segments:")
    assert "true answer:" not in out  # a puzzle given as text has no known answer

    report = json.loads(output_file.read_text())
    assert (report["segments"], report["adaptive_halting"], report["step"]) == (HALT_MAX_STEPS, False, 6)
    [puzzle] = report["puzzles"]
    assert puzzle["question"] == row["question"] and puzzle["answer"] == answer
    assert puzzle["valid"] == (answer == row["answer"]) and puzzle["correct"] is None
    assert puzzle["problems"] == sudoku.check_sudoku(sudoku.parse_sudoku(row["question"]), sudoku.parse_sudoku(answer))
    assert puzzle["segments"] == HALT_MAX_STEPS and 0 < puzzle["q_halt_confidence"] < 1
    assert segments == f"{HALT_MAX_STEPS}, q_halt confidence: {puzzle['q_halt_confidence']:.3f}"


def test_a_csv_of_sudokus_uses_its_answers_as_the_truth(sudoku_checkpoint, capsys, tmp_path):
    rows = csv_rows(os.path.join(SUDOKU_SAMPLE, "test.csv"), 3)
    truths = [row["answer"] for row in rows]
    rows[1]["answer"] = ""  # unknown
    puzzles = tmp_path / "puzzles.csv"
    with open(puzzles, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["source", "question", "answer", "rating"])
        writer.writeheader()
        writer.writerows(rows)
    output_file = tmp_path / "answers.json"
    code, out, err = run_solve(capsys, sudoku_checkpoint, "--sudoku", puzzles, "--output", output_file, "--segments", 5)
    assert code == 0, err
    answers = printed_sudokus(out)
    reports = json.loads(output_file.read_text())["puzzles"]
    assert [report["name"] for report in reports] == [f"{puzzles} line {line}" for line in (2, 3, 4)]
    assert [report["answer"] for report in reports] == answers
    assert [report["correct"] for report in reports] == [answers[0] == rows[0]["answer"], None, answers[2] == rows[2]["answer"]]
    assert [report["valid"] for report in reports] == [answer == truth for answer, truth in zip(answers, truths)]
    assert len(report_lines(out, "true answer:")) == 2
    assert all(report["segments"] == 5 for report in reports)
    assert report_lines(out, "3 puzzles:")


def test_sudoku_rules():
    row = csv_rows(os.path.join(SUDOKU_SAMPLE, "test.csv"), 1)[0]
    question, answer = sudoku.parse_sudoku(row["question"]), sudoku.parse_sudoku(row["answer"])
    assert sudoku.check_sudoku(question, answer) == []
    assert np.array_equal(sudoku.parse_sudoku(row["question"].replace(".", "0")), question)
    assert sudoku.sudoku_text(answer) == row["answer"]

    # The first two cells of row 1 (blanks in the puzzle) exchanged: row 1 and box 1 still hold every digit once.
    swapped = row["answer"][1] + row["answer"][0] + row["answer"][2:]
    assert sudoku.check_sudoku(question, sudoku.parse_sudoku(swapped)) == [
        f"column 1 holds {row['answer'][1]} 2 times", f"column 2 holds {row['answer'][0]} 2 times"]
    given = next(index for index, char in enumerate(row["question"]) if char != ".")
    changed = row["answer"][:given] + str(int(row["answer"][given]) % 9 + 1) + row["answer"][given + 1:]
    problems = sudoku.check_sudoku(question, sudoku.parse_sudoku(changed))
    assert problems[0] == f"row {given // 9 + 1} column {given % 9 + 1} is {changed[given]} but the puzzle gives {row['question'][given]}"
    assert sudoku.check_sudoku(question, question)[0] == f"{row['question'].count('.')} cells hold no digit"


# ----------------------------------------------------------------------------------------------
# Maze


def test_a_maze_is_answered_printed_and_checked(maze_checkpoint, capsys, tmp_path):
    row = csv_rows(os.path.join(MAZE_SAMPLE, "test.csv"), 1)[0]
    lines = [row["question"][start:start + 30] for start in range(0, 900, 30)]
    maze_file = tmp_path / "maze.txt"
    maze_file.write_text("\n".join(lines) + "\n")
    output_file = tmp_path / "answer.json"
    code, out, err = run_solve(capsys, maze_checkpoint, "--maze", maze_file, "--output", output_file)
    assert code == 0, err
    printed = out.splitlines()
    start = printed.index(f"{maze_file}:") + 2  # the name, then the frame's top
    answer = [line[3:-1] for line in printed[start:start + 30]]
    [puzzle] = json.loads(output_file.read_text())["puzzles"]
    assert puzzle["answer"] == answer and puzzle["question"] == lines
    [valid] = report_lines(out, "valid solution:")
    assert valid.startswith("yes") == independent_maze_check(lines, answer) == puzzle["valid"]
    assert puzzle["shortest_path_length"] == row["answer"].count("o")  # the shipped answers are shortest paths
    assert puzzle["segments"] == HALT_MAX_STEPS


def test_maze_paths():
    for row in csv_rows(os.path.join(MAZE_SAMPLE, "test.csv"), 20):
        question, answer = maze.parse_maze_cells(row["question"], "q"), maze.parse_maze_cells(row["answer"], "a")
        lines = maze.maze_lines(answer)
        assert maze.check_maze(question, answer) == [] and independent_maze_check(maze.maze_lines(question), lines)
        assert maze.shortest_path_length(question) == row["answer"].count("o")

    path_cells = np.flatnonzero(answer == maze.PATH)
    broken = answer.copy()
    broken[path_cells[len(path_cells) // 2]] = maze.OPEN
    stray = answer.copy()
    stray[np.flatnonzero((answer == maze.OPEN))[0]] = maze.PATH  # an 'o' away from the path (or a branch of it)
    wall = answer.copy()
    wall[np.flatnonzero(question == maze.WALL)[0]] = maze.OPEN
    for case in (broken, stray, wall, question):
        assert maze.check_maze(question, case) != [] and not independent_maze_check(maze.maze_lines(question), maze.maze_lines(case))
    assert maze.check_maze(question, wall)[0].startswith("1 cell(s) changed other than open cells marked 'o'")
    assert any("not connected to S (G among them)" in problem for problem in maze.check_maze(question, broken))


# ----------------------------------------------------------------------------------------------
# Test-time compute


def test_segments_and_adaptive_halting(sudoku_checkpoint, capsys, tmp_path):
    # A copy of the checkpoint whose Q head says halt (q_halt > q_continue) everywhere.
    run = tmp_path / "halting"
    run.mkdir()
    shutil.copy(os.path.join(os.path.dirname(sudoku_checkpoint), "all_config.yaml"), run)
    checkpoint = torch.load(sudoku_checkpoint, weights_only=True)
    checkpoint["model"]["model.inner.q_head.bias"] = torch.tensor([5.0, -5.0])
    checkpoint["model"]["model.inner.q_head.weight"].zero_()
    checkpoint["checksum"] = content_checksum({key: value for key, value in checkpoint.items() if key != "checksum"})
    torch.save(checkpoint, run / "step_6.pt")
    row = csv_rows(os.path.join(SUDOKU_SAMPLE, "test.csv"), 1)[0]

    for arguments, segments in ((["--segments", 7], 7), (["--segments", 7, "--adaptive"], 1)):
        code, out, err = run_solve(capsys, run / "step_6.pt", "--sudoku", row["question"], *arguments)
        assert code == 0, err
        [line] = report_lines(out, "segments:")
        assert line.startswith(f"{segments}, q_halt confidence: {torch.sigmoid(torch.tensor(5.0)).item():.3f}")


def test_a_trm_checkpoint_answers_too(capsys, tmp_path):
    checkpoint = save_untrained_run(str(tmp_path / "trm"), sudoku_metadata(1, 1), arch="trm", **{"arch.puzzle_emb_len": 2})
    code, out, err = run_solve(capsys, checkpoint, "--sudoku", SUDOKU["question"], "--segments", 4, "--adaptive")
    assert code == 0, err
    # TRM halts on q_halt > 0; its initial Q head (bias -5) never says so, so the cap of 4 holds.
    [segments] = report_lines(out, "segments:")
    assert segments.startswith("4, q_halt confidence: 0.00") and len(printed_sudokus(out)) == 1


# ----------------------------------------------------------------------------------------------
# ARC


def test_an_arc_task_runs_every_copy_and_votes(arc_checkpoint, capsys, tmp_path):
    output_file = tmp_path / "arc.json"
    code, out, err = run_solve(capsys, arc_checkpoint, "--arc", "da2b0fe3", "--output", output_file)
    assert code == 0, err
    [report] = json.loads(output_file.read_text())["puzzles"]
    with open(os.path.join(REPO_ROOT, "dataset", "raw-data", "ARC-AGI", "data", "evaluation", "da2b0fe3.json")) as file:
        task = json.load(file)
    assert report["copies"] == 4 and report["mean_segments"] == HALT_MAX_STEPS
    assert [test["input"] for test in report["test_inputs"]] == [example["input"] for example in task["test"]]
    assert [test["truth"] for test in report["test_inputs"]] == [example["output"] for example in task["test"]]
    for test in report["test_inputs"]:
        assert 1 <= len(test["attempts"]) <= 2 and test["num_votes"] <= 4
        assert [attempt["votes"] for attempt in test["attempts"]] == sorted((attempt["votes"] for attempt in test["attempts"]), reverse=True)
        assert test["correct_attempt"] in (None, 1, 2)
    assert out.count("  attempt 1:") == 2 and out.count("  true output:") == 2
    assert report_lines(out, "solved (pass@2):") == ["yes" if report["solved_at_2"] else "no"]


# ----------------------------------------------------------------------------------------------
# Bad input


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SUDOKU = csv_rows(os.path.join(SUDOKU_SAMPLE, "test.csv"), 1)[0]
MAZE_LINES = [csv_rows(os.path.join(MAZE_SAMPLE, "test.csv"), 1)[0]["question"][start:start + 30] for start in range(0, 900, 30)]
# Its top-left 20x20 corner holds the goal; the start goes into the bottom-left cell.
SMALL_MAZE = [line[:20] for line in MAZE_LINES[:19]] + ["S" + MAZE_LINES[19][1:20]]

BAD_INPUTS = {
    "sudoku too short": (lambda tmp: ["--sudoku", SUDOKU["question"][:80]], "sudoku", r"the Sudoku: 80 characters, expected 81 \(9 rows of 9"),
    "sudoku character": (lambda tmp: ["--sudoku", "x" + SUDOKU["question"][1:]], "sudoku", r"character 'x' at position 0 is not one of"),
    "csv missing": (lambda tmp: ["--sudoku", str(tmp / "none.csv")], "sudoku", r"none.csv: no such file"),
    "csv header": (lambda tmp: ["--sudoku", write(tmp, "h.csv", "question,answer\n1,2\n")], "sudoku", r"h.csv line 1: the header must be source,question,answer,rating"),
    "csv wrong answer": (lambda tmp: ["--sudoku", write(tmp, "a.csv", f"source,question,answer,rating\nx,{SUDOKU['question']},{SUDOKU['question'].replace('.', '1')},0\n")],
                         "sudoku", r"a.csv line 2, answer: not a solution of the question \(row 1 holds 1 \d times"),
    "maze not square": (lambda tmp: ["--maze", write(tmp, "m.txt", "\n".join(MAZE_LINES[:2] + [MAZE_LINES[2][:29]] + MAZE_LINES[3:]))],
                        "maze", r"m.txt line 3: 29 characters, expected 30: a maze is square"),
    "maze without start": (lambda tmp: ["--maze", write(tmp, "s.txt", "\n".join(line.replace("S", " ") for line in MAZE_LINES))],
                           "maze", r"s.txt: 0 cells are the start S; a maze has exactly one"),
    "maze character": (lambda tmp: ["--maze", write(tmp, "c.txt", "\n".join(["x" + MAZE_LINES[0][1:]] + MAZE_LINES[1:]))],
                       "maze", r"c.txt: character 'x' at position 0 is not one of '# SGo'"),
    "maze size": (lambda tmp: ["--maze", write(tmp, "20.txt", "\n".join(SMALL_MAZE))],
                  "maze", r"was trained on sequences of seq_len=900 \(the dataset its run trained on, .*\), while seq_len=400 for a 20x20 maze"),
    "checkpoint for another puzzle": (lambda tmp: ["--sudoku", SUDOKU["question"]], "maze",
                                      r"is a maze checkpoint: it was trained with vocab_size=6 \(model.inner.embed_tokens.embedding_weight has shape "
                                      r"\[6, 32\]\), while vocab_size=11 \(Sudoku\) for Sudoku puzzles"),
    "arc task id": (lambda tmp: ["--arc", "da2b0fe"], "arc", r"ARC task 'da2b0fe' is not in the test split of .*arc_example/data. Did you mean da2b0fe3\?"),
    "arc dataset": (lambda tmp: ["--arc", "da2b0fe3", "--data-path", str(tmp)], "arc", r"dataset.json not found"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_message_and_exit_code_2(case, capsys, tmp_path, sudoku_checkpoint, maze_checkpoint, arc_checkpoint):
    make_arguments, checkpoint_kind, message = BAD_INPUTS[case]
    checkpoint = {"sudoku": sudoku_checkpoint, "maze": maze_checkpoint, "arc": arc_checkpoint}[checkpoint_kind]
    code, out, err = run_solve(capsys, checkpoint, *make_arguments(tmp_path))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(message, err), err


def test_an_arc_checkpoint_of_another_build_is_refused(capsys, tmp_path):
    # The ARC example has 17 puzzle identifiers; this checkpoint was made for a build with 20.
    with open(os.path.join(ARC_EXAMPLE, "test", "dataset.json")) as file:
        metadata = PuzzleDatasetMetadata.model_validate({**json.load(file), "num_puzzle_identifiers": 20})
    checkpoint = save_untrained_run(str(tmp_path / "run"), metadata, data_path="data/arc-other-build", global_batch_size=8)
    code, _, err = run_solve(capsys, checkpoint, "--arc", "da2b0fe3", "--data-path", ARC_EXAMPLE)
    assert code == 2
    assert "model.inner.puzzle_emb.weights has shape [20, 32]" in err and "need [17, 32]" in err


def test_the_command_line_exits_with_2(sudoku_checkpoint):
    result = subprocess.run([sys.executable, "solve.py", sudoku_checkpoint, "--sudoku", "123"], cwd=REPO_ROOT, env=training_environment(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: the Sudoku: 3 characters, expected 81 (9 rows of 9: digits 1-9, '.' or '0' for a blank)"
    usage = subprocess.run([sys.executable, "solve.py", sudoku_checkpoint, "--sudoku", SUDOKU["question"], "--segments", "0"], cwd=REPO_ROOT,
                           env=training_environment(), capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "--segments must be at least 1" in usage.stderr
    help_text = subprocess.run([sys.executable, "solve.py", "--help"], cwd=REPO_ROOT, env=training_environment(), capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "--sudoku PUZZLE|CSV" in help_text.stdout and "--adaptive" in help_text.stdout


def test_parse_errors_name_the_problem():
    with pytest.raises(PuzzleInputError, match=r"the maze is empty"):
        maze.parse_maze([])
    with pytest.raises(PuzzleInputError, match=r"q: 899 characters is not a square maze"):
        maze.parse_maze_cells(" " * 899, "q")
