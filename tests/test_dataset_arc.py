"""ARC builder: exact arrays, invertible augmentations, duplicate rejection, seeding, input errors."""

import json
import os
import shutil

import numpy as np
import pytest

from dataset.build_arc_dataset import ArcBuildConfig, build_arc_dataset
from dataset.common import DatasetError, inverse_dihedral_transform
from tests.dataset_files import assert_int32_fields, load_field, load_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARC_AGI = os.path.join(REPO_ROOT, "dataset", "raw-data", "ARC-AGI", "data")


def write_task(path, train, test, **extra):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as task_file:
        json.dump({"train": [{"input": i, "output": o} for i, o in train], "test": [{"input": i, "output": o} for i, o in test], **extra}, task_file)


def build(dataset_dirs, output, **flags):
    build_arc_dataset(ArcBuildConfig(dataset_dirs=[str(folder) for folder in dataset_dirs], output_dir=str(output), **flags))
    return str(output)


def expected_canvas(grid, top=0, left=0):
    """The canvas written out cell by cell, independently of the builder: PAD 0, colours + 2,
    end-of-grid 1 just below the last row and just right of the last column."""
    canvas = np.zeros((30, 30), dtype=np.uint8)
    rows, cols = len(grid), len(grid[0])
    for r in range(rows):
        for c in range(cols):
            canvas[top + r, left + c] = grid[r][c] + 2
        if left + cols < 30:
            canvas[top + r, left + cols] = 1
    if top + rows < 30:
        for c in range(cols):
            canvas[top + rows, left + c] = 1
    return canvas.ravel()


def crop(canvas):
    """(grid, top, left) of an encoded canvas; also checks that nothing but the grid and its markers is set."""
    canvas = canvas.reshape(30, 30)
    rows, cols = np.nonzero(canvas >= 2)
    top, left = rows.min(), cols.min()
    grid = canvas[top:rows.max() + 1, left:cols.max() + 1].astype(int) - 2
    np.testing.assert_array_equal(canvas.ravel(), expected_canvas(grid.tolist(), top, left))
    return grid, top, left


GRID_2X3 = [[1, 2, 3], [4, 5, 0]]
GRID_1X2 = [[7, 7]]


def test_exact_arrays_identifiers_and_metadata(tmp_path):
    source = tmp_path / "arc"
    write_task(source / "evaluation" / "t1.json", train=[(GRID_2X3, GRID_1X2)], test=[(GRID_1X2, GRID_2X3)])
    write_task(source / "training" / "t2.json", train=[(GRID_1X2, GRID_1X2)], test=[([[9] * 30] * 30, [[0] * 30] * 30)])
    out = build([source], tmp_path / "out", num_aug=0)

    assert load_json(out, "identifiers.json") == ["<blank>", "t1", "t2"]
    # Test split: t1's test pair, never translated.
    np.testing.assert_array_equal(load_field(out, "test", "inputs"), [expected_canvas(GRID_1X2)])
    np.testing.assert_array_equal(load_field(out, "test", "labels"), [expected_canvas(GRID_2X3)])
    np.testing.assert_array_equal(load_field(out, "test", "puzzle_identifiers"), [1])
    np.testing.assert_array_equal(load_field(out, "test", "puzzle_indices"), [0, 1])
    np.testing.assert_array_equal(load_field(out, "test", "group_indices"), [0, 1])
    # Train split: t1's train pair (alone in its puzzle, so at the origin); t2's two pairs, the 30x30 one cannot move.
    inputs, labels = load_field(out, "train", "inputs"), load_field(out, "train", "labels")
    assert inputs.dtype == labels.dtype == np.uint8 and inputs.shape == (3, 900)
    np.testing.assert_array_equal(inputs[0], expected_canvas(GRID_2X3))
    np.testing.assert_array_equal(labels[0], expected_canvas(GRID_1X2))
    grid, top, left = crop(inputs[1])
    assert grid.tolist() == GRID_1X2 and crop(labels[1])[1:] == (top, left), "input and output share the translation"
    np.testing.assert_array_equal(inputs[2], expected_canvas([[9] * 30] * 30))
    np.testing.assert_array_equal(labels[2], expected_canvas([[0] * 30] * 30))
    assert_int32_fields(out, "train", {"puzzle_identifiers": [1, 2], "puzzle_indices": [0, 1, 3], "group_indices": [0, 1, 2]})
    assert load_json(out, "train", "dataset.json") == {
        "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 12, "seq_len": 900,
        "num_puzzle_identifiers": 3, "total_groups": 2, "mean_puzzle_examples": 1.5, "total_puzzles": 2, "sets": ["all"],
    }


def copy_real_tasks(destination, folder, names):
    os.makedirs(destination / folder, exist_ok=True)
    for name in names:
        shutil.copy(os.path.join(ARC_AGI, folder, f"{name}.json"), destination / folder / f"{name}.json")


def raw_pairs(path, kinds):
    with open(path) as task_file:
        task = json.load(task_file)
    return [(np.array(pair["input"]), np.array(pair["output"])) for kind in kinds for pair in task[kind]]


def test_augmented_puzzles_invert_back_to_the_raw_task(tmp_path):
    source = tmp_path / "arc"
    copy_real_tasks(source, "training", ["007bbfb7", "00d62c1b"])
    copy_real_tasks(source, "evaluation", ["00576224"])
    out = build([source], tmp_path / "out", num_aug=6)
    identifiers = load_json(out, "identifiers.json")
    assert len(identifiers) == 1 + 3 * 7 and len(set(identifiers)) == len(identifiers)

    destinations = {
        "train": {"007bbfb7": ("training", ["train", "test"]), "00d62c1b": ("training", ["train", "test"]), "00576224": ("evaluation", ["train"])},
        "test": {"00576224": ("evaluation", ["test"])},
    }
    for split, tasks in destinations.items():
        inputs, labels = load_field(out, split, "inputs"), load_field(out, split, "labels")
        puzzle_indices = load_field(out, split, "puzzle_indices")
        puzzle_identifiers = load_field(out, split, "puzzle_identifiers")
        assert len(puzzle_identifiers) == 7 * len(tasks)
        seen_transforms = set()
        for puzzle, identifier in enumerate(puzzle_identifiers):
            name = identifiers[identifier]
            task_name, _, augmentation = name.partition("_")
            transform_id, colour_map = (0, np.arange(10)) if not augmentation else (int(augmentation[1]), np.array([int(d) for d in augmentation[3:]]))
            seen_transforms.add(transform_id)
            assert colour_map[0] == 0 and sorted(colour_map) == list(range(10))
            inverse_colours = np.argsort(colour_map)
            folder, kinds = tasks[task_name]
            expected = raw_pairs(source / folder / f"{task_name}.json", kinds)
            examples = range(puzzle_indices[puzzle], puzzle_indices[puzzle + 1])
            assert len(examples) == len(expected)
            offsets = []
            for example, (raw_input, raw_output) in zip(examples, expected):
                (grid_in, top, left), (grid_out, top_out, left_out) = crop(inputs[example]), crop(labels[example])
                assert (top, left) == (top_out, left_out)
                offsets.append((top, left))
                np.testing.assert_array_equal(inverse_colours[inverse_dihedral_transform(grid_in, transform_id)], raw_input)
                np.testing.assert_array_equal(inverse_colours[inverse_dihedral_transform(grid_out, transform_id)], raw_output)
            if split == "test":
                assert set(offsets) == {(0, 0)}, "test examples are never translated"
            else:
                assert (0, 0) in offsets, "one example of every training puzzle stays at the origin"
        assert len(seen_transforms) > 1


def test_duplicate_augmentations_are_rejected(tmp_path):
    source = tmp_path / "arc"
    # Only colour 0 on 1x1 grids: every augmentation is the task itself.
    write_task(source / "a" / "black.json", train=[([[0]], [[0]])], test=[([[0]], [[0]])])
    # One colour on 1x1 grids: an augmentation is determined by where colour 1 goes (9 choices).
    write_task(source / "a" / "single.json", train=[([[1]], [[1]])], test=[([[0]], [[1]])])
    out = build([source], tmp_path / "out", num_aug=20)
    np.testing.assert_array_equal(load_field(out, "train", "group_indices"), [0, 1, 10])
    # Rows 2, 4, ..., 18 hold the [[1]] input of each "single" puzzle: colour 1 went somewhere else each time.
    inputs = load_field(out, "train", "inputs")
    assert sorted(int(crop(inputs[row])[0][0, 0]) for row in range(2, 20, 2)) == list(range(1, 10))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    source = tmp_path / "arc"
    copy_real_tasks(source, "training", ["007bbfb7"])
    copy_real_tasks(source, "evaluation", ["00576224"])
    first = build([source], tmp_path / "a", num_aug=4, seed=42)
    second = build([source], tmp_path / "b", num_aug=4, seed=42)
    other = build([source], tmp_path / "c", num_aug=4, seed=43)
    for relative in ["identifiers.json"] + [os.path.join(split, name) for split in ("train", "test") for name in sorted(os.listdir(os.path.join(first, split)))]:
        with open(os.path.join(first, relative), "rb") as a, open(os.path.join(second, relative), "rb") as b:
            assert a.read() == b.read(), relative
    assert not np.array_equal(load_field(first, "train", "inputs"), load_field(other, "train", "inputs"))


def test_empty_test_split_without_evaluation_folder(tmp_path):
    source = tmp_path / "arc"
    write_task(source / "concepts" / "c.json", train=[(GRID_1X2, GRID_1X2)], test=[(GRID_2X3, GRID_2X3)])
    out = build([source], tmp_path / "out", num_aug=0)
    assert load_field(out, "train", "inputs").shape == (2, 900)
    assert load_field(out, "test", "inputs").shape == (0, 900)
    np.testing.assert_array_equal(load_field(out, "test", "puzzle_indices"), [0])


@pytest.mark.parametrize(
    "train_input, message",
    [
        ([[0] * 31], r"bad.json: train example 0 'input': grid is 1x31, larger than 30x30"),
        ([[1, 10]], r"bad.json: train example 0 'input': colour 10 outside 0-9"),
        ([[1, -1]], r"bad.json: train example 0 'input': colour -1 outside 0-9"),
        ([[1, 2], [3]], r"bad.json: train example 0 'input': not a grid"),
        ([[1.5]], r"bad.json: train example 0 'input': cells must be integer colours 0-9"),
    ],
)
def test_bad_grids_fail_naming_file_and_write_nothing(tmp_path, train_input, message):
    source = tmp_path / "arc"
    write_task(source / "training" / "bad.json", train=[(train_input, [[0]])], test=[([[0]], [[0]])])
    with pytest.raises(DatasetError, match=message):
        build([source], tmp_path / "out", num_aug=2)
    assert sorted(os.listdir(tmp_path)) == ["arc"]


def test_bad_folders_and_tasks_fail(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"--dataset-dirs .*empty holds no .json task files"):
        build([empty], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"--dataset-dirs .*missing is not a folder"):
        build([tmp_path / "missing"], tmp_path / "out")

    first, second = tmp_path / "one", tmp_path / "two"
    write_task(first / "x.json", train=[([[1]], [[1]])], test=[([[1]], [[1]])])
    write_task(second / "x.json", train=[([[2]], [[2]])], test=[([[2]], [[2]])])
    with pytest.raises(DatasetError, match=r"task name 'x' appears in both .*one/x.json and .*two/x.json"):
        build([first, second], tmp_path / "out")

    (first / "x.json").write_text('{"train": [], "test": []}')
    with pytest.raises(DatasetError, match=r"x.json: 'train' must be a non-empty list of examples"):
        build([first], tmp_path / "out")
    (first / "x.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"x.json: not valid JSON"):
        build([first], tmp_path / "out")
    (first / "x.json").write_bytes(b'{"name": "caf\xe9", "train": [], "test": []}')
    with pytest.raises(DatasetError, match=r"x.json: not valid JSON \('utf-8' codec can't decode byte 0xe9 in position 13: invalid continuation byte\)"):
        build([first], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_task_files_with_a_byte_order_mark_are_read(tmp_path):
    source = tmp_path / "arc"
    write_task(source / "evaluation" / "t1.json", train=[(GRID_2X3, GRID_1X2)], test=[(GRID_1X2, GRID_2X3)])
    plain = build([source], tmp_path / "plain", num_aug=0)
    task_path = source / "evaluation" / "t1.json"
    task_path.write_bytes(b"\xef\xbb\xbf" + task_path.read_bytes())
    with_mark = build([source], tmp_path / "with_mark", num_aug=0)
    for split in ("train", "test"):
        np.testing.assert_array_equal(load_field(with_mark, split, "inputs"), load_field(plain, split, "inputs"))
