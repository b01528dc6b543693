"""Sudoku builder: exact arrays, valid augmentations, seeding, --max-blanks, input errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dataset.build_sudoku_dataset import SudokuBuildConfig, build_sudoku_dataset
from dataset.common import DatasetError
from tests.dataset_files import load_field, load_json, write_source

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(REPO_ROOT, "dataset", "samples", "sudoku-extreme")

# Two real Sudoku-Extreme puzzles (first rows of the shipped sample) and their solutions.
PUZZLE_A = "...7.2..5....95.8.19..8..67..4...6....79...2.26...1......5......39.....8....784.."
SOLUTION_A = "846712935372695184195483267984237651517964823263851749728549316439126578651378492"
PUZZLE_B = "......2....42...79....9..54..7.4.9.....6...1713.......7..3....8.6...8..5..2.5.7.."
SOLUTION_B = "978435261354261879621897354587142936249683517136579482795314628463728195812956743"


def tiny_source(tmp_path):
    return write_source(tmp_path / "src", [f"s,{PUZZLE_A},{SOLUTION_A},5", f"s,{PUZZLE_B},{SOLUTION_B},12"], [f"s,{PUZZLE_B},{SOLUTION_B},12"])


def tokens(grid: str) -> list:
    return [0 + 1 if char == "." else int(char) + 1 for char in grid]


def build(source, output, **flags):
    build_sudoku_dataset(SudokuBuildConfig(source_repo=source, output_dir=str(output), **flags))
    return str(output)


def is_valid_solution(grids: np.ndarray) -> np.ndarray:
    """grids: digits [n, 81] -> bool [n]: every row, column and box holds 1..9."""
    grids = grids.reshape(-1, 9, 9)
    boxes = grids.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    return np.all([(np.sort(unit, axis=-1) == np.arange(1, 10)).all(axis=(1, 2)) for unit in (grids, grids.transpose(0, 2, 1), boxes)], axis=0)


def test_exact_arrays_and_metadata_without_augmentation(tmp_path):
    out = build(tiny_source(tmp_path), tmp_path / "out")
    np.testing.assert_array_equal(load_field(out, "train", "inputs"), [tokens(PUZZLE_A), tokens(PUZZLE_B)])
    np.testing.assert_array_equal(load_field(out, "train", "labels"), [tokens(SOLUTION_A), tokens(SOLUTION_B)])
    np.testing.assert_array_equal(load_field(out, "test", "inputs"), [tokens(PUZZLE_B)])
    expected_dtypes = {"inputs": np.uint8, "labels": np.uint8, "puzzle_identifiers": np.int32, "puzzle_indices": np.int32, "group_indices": np.int32}
    for field, dtype in expected_dtypes.items():
        assert load_field(out, "train", field).dtype == dtype, field
    np.testing.assert_array_equal(load_field(out, "train", "puzzle_identifiers"), [0, 0])
    np.testing.assert_array_equal(load_field(out, "train", "puzzle_indices"), [0, 1, 2])
    np.testing.assert_array_equal(load_field(out, "train", "group_indices"), [0, 1, 2])
    np.testing.assert_array_equal(load_field(out, "test", "group_indices"), [0, 1])
    assert load_json(out, "train", "dataset.json") == {
        "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 11, "seq_len": 81,
        "num_puzzle_identifiers": 1, "total_groups": 2, "mean_puzzle_examples": 1.0, "total_puzzles": 2, "sets": ["all"],
    }
    assert load_json(out, "identifiers.json") == ["<blank>"]
    assert sorted(os.listdir(os.path.join(out, "train"))) == sorted(
        ["dataset.json"] + [f"all__{field}.npy" for field in expected_dtypes])


def test_augmented_copies_are_valid_puzzles_consistent_with_their_givens(tmp_path):
    num_aug = 30
    out = build(SAMPLES, tmp_path / "out", subsample_size=40, num_aug=num_aug)
    inputs, labels = load_field(out, "train", "inputs").astype(int) - 1, load_field(out, "train", "labels").astype(int) - 1
    np.testing.assert_array_equal(load_field(out, "train", "group_indices"), np.arange(0, 40 * (num_aug + 1) + 1, num_aug + 1))
    assert inputs.shape == (40 * (num_aug + 1), 81)
    assert load_json(out, "train", "dataset.json")["total_puzzles"] == 40 * (num_aug + 1), "every copy is a puzzle"
    assert is_valid_solution(labels).all()
    assert np.all((inputs == 0) | (inputs == labels)), "a given contradicts its solution"
    groups_inputs = inputs.reshape(40, num_aug + 1, 81)
    groups_labels = labels.reshape(40, num_aug + 1, 81)
    blanks = (groups_inputs == 0).sum(axis=2)
    assert np.all(blanks == blanks[:, :1]), "augmentation must keep the number of blanks"
    assert not np.any(np.all(groups_labels[:, 1:] == groups_labels[:, :1], axis=2)), "a copy equals its original"
    # The test split is never augmented.
    assert len(load_field(out, "test", "inputs")) == 2000


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    source = SAMPLES
    first = build(source, tmp_path / "a", subsample_size=50, num_aug=3, max_blanks=20, seed=7)
    second = build(source, tmp_path / "b", subsample_size=50, num_aug=3, max_blanks=20, seed=7)
    other = build(source, tmp_path / "c", subsample_size=50, num_aug=3, max_blanks=20, seed=8)
    for split in ("train", "test"):
        for name in sorted(os.listdir(os.path.join(first, split))):
            with open(os.path.join(first, split, name), "rb") as a, open(os.path.join(second, split, name), "rb") as b:
                assert a.read() == b.read(), f"{split}/{name} differs for the same seed"
    assert not np.array_equal(load_field(first, "train", "inputs"), load_field(other, "train", "inputs"))
    assert not np.array_equal(load_field(first, "test", "inputs"), load_field(other, "test", "inputs"))


def test_quick_start_command_caps_blanks(tmp_path):
    out = tmp_path / "quickstart"
    command = [sys.executable, "dataset/build_sudoku_dataset.py", "--source-repo", "dataset/samples/sudoku-extreme",
               "--output-dir", str(out), "--subsample-size", "1000", "--num-aug", "0", "--max-blanks", "6"]
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
    for split, count in (("train", 1000), ("test", 2000)):
        inputs, labels = load_field(out, split, "inputs"), load_field(out, split, "labels")
        assert inputs.shape == (count, 81)
        blanks = (inputs == 1).sum(axis=1)
        assert blanks.max() <= 6 and blanks.min() == 6, "real puzzles have more than 6 blanks: exactly 6 remain"
        assert np.all((inputs == 1) | (inputs == labels)), "revealed cells must come from the answer"
    # Givens of the source are kept: the sample's train rows are used in order (all 1000 kept).
    with open(os.path.join(SAMPLES, "train.csv")) as csv_file:
        first_question = csv_file.read().splitlines()[1].split(",")[1]
    givens = np.array(tokens(first_question)) != 1
    np.testing.assert_array_equal(load_field(out, "train", "inputs")[0][givens], np.array(tokens(first_question))[givens])


def test_min_difficulty_and_subsample(tmp_path):
    source = tiny_source(tmp_path)
    out = build(source, tmp_path / "hard", min_difficulty=10)
    np.testing.assert_array_equal(load_field(out, "train", "inputs"), [tokens(PUZZLE_B)])
    assert len(load_field(out, "test", "inputs")) == 1
    out = build(source, tmp_path / "one", subsample_size=1, seed=3)
    assert load_field(out, "train", "inputs").tolist()[0] in (tokens(PUZZLE_A), tokens(PUZZLE_B))
    with pytest.raises(DatasetError, match="no puzzle has rating >= 100; lower --min-difficulty"):
        build(source, tmp_path / "none", min_difficulty=100)


def replace_cell(grid: str, index: int, char: str) -> str:
    return grid[:index] + char + grid[index + 1:]


@pytest.mark.parametrize(
    "train_row, message",
    [
        (f"s,{PUZZLE_A},{SOLUTION_A}", r"train.csv line 3: 3 columns, expected 4"),
        (f"s,{PUZZLE_A[:80]},{SOLUTION_A},1", r"train.csv line 3, field question: 80 characters, expected 81"),
        (f"s,{replace_cell(PUZZLE_A, 4, 'x')},{SOLUTION_A},1", r"train.csv line 3, field question: character 'x' at position 4"),
        (f"s,{PUZZLE_A},{replace_cell(SOLUTION_A, 0, '0')},1", r"train.csv line 3, field answer: character '0' at position 0"),
        (f"s,{PUZZLE_A},{replace_cell(SOLUTION_A, 0, '.')},1", r"train.csv line 3, field answer: has a blank"),
        # Cell 3 is a given 7; the answer puts 8 there and 7 at cell 0 (still a valid grid otherwise).
        (f"s,{PUZZLE_A},{SOLUTION_A.translate(str.maketrans('78', '87'))},1",
         r"train.csv line 3, field answer: row 1 column 4 is 8 but the question gives 7"),
        (f"s,{PUZZLE_B},{replace_cell(SOLUTION_B, 1, '9')},1", r"train.csv line 3, field answer: row 1 does not hold each digit 1-9"),
        (f"s,{PUZZLE_A},{SOLUTION_A},hard", None),  # a bad rating only matters with --min-difficulty
    ],
)
def test_bad_rows_fail_with_file_line_field_and_write_nothing(tmp_path, train_row, message):
    source = write_source(tmp_path / "src", [f"s,{PUZZLE_B},{SOLUTION_B},1", train_row], [f"s,{PUZZLE_B},{SOLUTION_B},1"])
    out = tmp_path / "out"
    if message is None:
        with pytest.raises(DatasetError, match=r"train.csv line 3, field rating: 'hard' is not an integer"):
            build(source, out, min_difficulty=1)
    else:
        with pytest.raises(DatasetError, match=message):
            build(source, out)
    assert sorted(os.listdir(tmp_path)) == ["src"], "a failed build must leave nothing behind"


def test_wrong_header_is_refused(tmp_path):
    source = write_source(tmp_path / "src", [], [])
    with open(os.path.join(source, "train.csv"), "w") as csv_file:
        csv_file.write(f"question,answer\n{PUZZLE_A},{SOLUTION_A}\n")
    with pytest.raises(DatasetError, match=r"train.csv line 1: header is \['question', 'answer'\], expected source,question,answer,rating"):
        build(source, tmp_path / "out")


def test_script_reports_user_errors_in_one_line(tmp_path):
    command = [sys.executable, "dataset/build_sudoku_dataset.py", "--source-repo", str(tmp_path / "missing" / "x" / "y"), "--output-dir", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr == f"build_sudoku_dataset.py: error: --source-repo {tmp_path}/missing/x/y: no such folder; pass a folder " \
        "holding train.csv and test.csv, or a Hugging Face dataset id such as sapientinc/sudoku-extreme\n"


def test_foreign_output_dir_is_refused_before_reading_the_source(tmp_path):
    output = tmp_path / "someones_folder"
    output.mkdir()
    (output / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match=r"someones_folder exists and is not an earlier dataset build \(it holds .*someones_folder/thesis.tex\)"):
        build(str(tmp_path / "no_such_source"), output)
    assert os.listdir(output) == ["thesis.tex"]
