"""Maze builder: exact arrays, the 8 dihedral images, seeding, input errors."""

import os

import numpy as np
import pytest

from dataset.build_maze_dataset import MazeBuildConfig, build_maze_dataset
from dataset.common import DatasetError
from tests.dataset_files import assert_int32_fields, load_field, load_json, write_source

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(REPO_ROOT, "dataset", "samples", "maze-30x30-hard")
TOKEN = {"#": 1, " ": 2, "S": 3, "G": 4, "o": 5}

# 3x3 mazes, row by row: an asymmetric one (its 8 images all differ) and a second one.
MAZE_A, PATH_A = "S #" + "  #" + "#G#", "So#" + "oo#" + "#G#"
MAZE_B, PATH_B = "#S#" + "# #" + "#G#", "#S#" + "#o#" + "#G#"


def tiny_source(tmp_path):
    return write_source(tmp_path / "src", [f"m,{MAZE_A},{PATH_A},0", f"m,{MAZE_B},{PATH_B},0"], [f"m,{MAZE_B},{PATH_B},0"])


def tokens(grid: str) -> list:
    return [TOKEN[char] for char in grid]


def build(source, output, **flags):
    build_maze_dataset(MazeBuildConfig(source_repo=source, output_dir=str(output), **flags))
    return str(output)


def test_exact_arrays_and_metadata(tmp_path):
    out = build(tiny_source(tmp_path), tmp_path / "out")
    np.testing.assert_array_equal(load_field(out, "train", "inputs"), [tokens(MAZE_A), tokens(MAZE_B)])
    np.testing.assert_array_equal(load_field(out, "train", "labels"), [tokens(PATH_A), tokens(PATH_B)])
    np.testing.assert_array_equal(load_field(out, "test", "labels"), [tokens(PATH_B)])
    assert load_field(out, "train", "inputs").dtype == np.uint8
    assert_int32_fields(out, "train", {"puzzle_identifiers": [0, 0], "puzzle_indices": [0, 1, 2], "group_indices": [0, 1, 2]})
    assert load_json(out, "test", "dataset.json") == {
        "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 6, "seq_len": 9,
        "num_puzzle_identifiers": 1, "total_groups": 1, "mean_puzzle_examples": 1.0, "total_puzzles": 1, "sets": ["all"],
    }
    assert load_json(out, "identifiers.json") == ["<blank>"]


def test_aug_adds_exactly_the_eight_dihedral_images(tmp_path):
    out = build(tiny_source(tmp_path), tmp_path / "out", aug=True)
    np.testing.assert_array_equal(load_field(out, "train", "group_indices"), [0, 8, 16])
    np.testing.assert_array_equal(load_field(out, "train", "puzzle_indices"), np.arange(17))
    assert load_json(out, "train", "dataset.json")["total_puzzles"] == 16, "every image is a puzzle"
    inputs = load_field(out, "train", "inputs").reshape(2, 8, 3, 3)
    labels = load_field(out, "train", "labels").reshape(2, 8, 3, 3)
    maze = np.array(tokens(MAZE_A)).reshape(3, 3)
    path = np.array(tokens(PATH_A)).reshape(3, 3)
    # The symmetries of the square, written out independently of dataset.common.
    symmetries = [lambda g: g, np.rot90, lambda g: np.rot90(g, 2), lambda g: np.rot90(g, 3),
                  np.fliplr, np.flipud, np.transpose, lambda g: np.fliplr(np.rot90(g))]
    for index, symmetry in enumerate(symmetries):
        np.testing.assert_array_equal(inputs[0, index], symmetry(maze))
        np.testing.assert_array_equal(labels[0, index], symmetry(path))
    assert len({image.tobytes() for image in inputs[0]}) == 8
    assert len(load_field(out, "test", "inputs")) == 1, "the test split is never augmented"


def test_shipped_sample_builds_with_aug(tmp_path):
    out = build(SAMPLES, tmp_path / "out", aug=True)
    assert load_field(out, "train", "inputs").shape == (800, 900)
    assert load_field(out, "test", "inputs").shape == (100, 900)
    counts = np.bincount(load_field(out, "train", "labels").ravel(), minlength=6)
    assert counts[0] == 0 and (counts[1:] > 0).all(), "every cell is a charset token; all five occur"


def test_subsample_is_seeded(tmp_path):
    first = build(SAMPLES, tmp_path / "a", subsample_size=10, seed=1)
    second = build(SAMPLES, tmp_path / "b", subsample_size=10, seed=1)
    other = build(SAMPLES, tmp_path / "c", subsample_size=10, seed=2)
    for name in sorted(os.listdir(os.path.join(first, "train"))):
        with open(os.path.join(first, "train", name), "rb") as a, open(os.path.join(second, "train", name), "rb") as b:
            assert a.read() == b.read()
    assert not np.array_equal(load_field(first, "train", "inputs"), load_field(other, "train", "inputs"))


@pytest.mark.parametrize(
    "train_rows, test_rows, message",
    [
        ([f"m,{MAZE_A}#,{PATH_A}#,0"], [], r"train.csv line 2, field question: 10 characters is not a square grid"),
        ([f"m,{MAZE_A},{PATH_A},0", f"m,{MAZE_B} ,{PATH_B},0"], [], r"train.csv line 3, field question: 10 characters, expected 9"),
        ([f"m,{MAZE_A},{PATH_A[:8]}*,0"], [], r"train.csv line 2, field answer: character '\*' at position 8 is not one of '# SGo'"),
        ([f"m,{MAZE_A},{PATH_A},0"], [f"m,{MAZE_A * 4},{PATH_A * 4},0"], r"test.csv holds grids of 36 cells but .*train.csv of 9"),
    ],
)
def test_bad_input_fails_and_writes_nothing(tmp_path, train_rows, test_rows, message):
    source = write_source(tmp_path / "src", train_rows, test_rows or [f"m,{MAZE_B},{PATH_B},0"])
    with pytest.raises(DatasetError, match=message):
        build(source, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["src"]
