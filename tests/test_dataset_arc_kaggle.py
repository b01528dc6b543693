"""The ARC builder's TRM input (Kaggle-style {prefix}_{subset}_challenges.json and _solutions.json):
exact arrays, the train split's translation and the test split at the origin, equality with the
same tasks read from folders, input errors; dataset/make_kaggle_combined.py."""

import json
import os
import shutil

import numpy as np
import pytest

from dataset.build_arc_dataset import ArcBuildConfig, build_arc_dataset
from dataset.common import DatasetError, dataset_files
from dataset.make_kaggle_combined import KaggleCombinedConfig, make_kaggle_combined
from tests.dataset_files import load_field, load_json
from tests.test_dataset_arc import ARC_AGI, GRID_1X2, GRID_2X3, crop, expected_canvas, write_task

FULL_GRID_IN, FULL_GRID_OUT = [[9] * 30] * 30, [[0] * 30] * 30


def write_kaggle(prefix, subset, tasks, solutions=True):
    """tasks: {task id: (train pairs, test pairs)}; the challenges hold the test inputs, the solutions their outputs."""
    challenges = {task_id: {"train": [{"input": grid_in, "output": grid_out} for grid_in, grid_out in train],
                            "test": [{"input": grid_in} for grid_in, _ in test]} for task_id, (train, test) in tasks.items()}
    with open(f"{prefix}_{subset}_challenges.json", "w") as file:
        json.dump(challenges, file)
    if solutions:
        with open(f"{prefix}_{subset}_solutions.json", "w") as file:
            json.dump({task_id: [grid_out for _, grid_out in test] for task_id, (_, test) in tasks.items()}, file)


def build_kaggle(prefix, output, subsets, test_set_name, **flags):
    build_arc_dataset(ArcBuildConfig(input_file_prefix=str(prefix), subsets=subsets, test_set_name=test_set_name, output_dir=str(output), **flags))
    return str(output)


def two_subsets(tmp_path, **write_flags):
    """training: t1 (one train pair, one test pair); evaluation: e1 (one train pair, two test pairs)."""
    prefix = tmp_path / "arc-agi"
    write_kaggle(prefix, "training", {"t1": ([(GRID_2X3, GRID_1X2)], [(GRID_1X2, GRID_2X3)])})
    write_kaggle(prefix, "evaluation", {"e1": ([(GRID_1X2, GRID_1X2)], [(GRID_2X3, GRID_1X2), (FULL_GRID_IN, FULL_GRID_OUT)])}, **write_flags)
    return prefix


def test_exact_arrays_identifiers_and_metadata(tmp_path):
    out = build_kaggle(two_subsets(tmp_path), tmp_path / "out", ["training", "evaluation"], "evaluation", num_aug=0)
    assert load_json(out, "identifiers.json") == ["<blank>", "t1", "e1"]

    # Test split: e1's test pairs (outputs from the solutions file), at the top left.
    np.testing.assert_array_equal(load_field(out, "test", "inputs"), [expected_canvas(GRID_2X3), expected_canvas(FULL_GRID_IN)])
    np.testing.assert_array_equal(load_field(out, "test", "labels"), [expected_canvas(GRID_1X2), expected_canvas(FULL_GRID_OUT)])
    for field, expected in {"puzzle_identifiers": [2], "puzzle_indices": [0, 2], "group_indices": [0, 1]}.items():
        np.testing.assert_array_equal(load_field(out, "test", field), expected)

    # Train split: t1's train and test pairs (training is not the test set), then e1's train pair.
    inputs, labels = load_field(out, "train", "inputs"), load_field(out, "train", "labels")
    assert inputs.shape == labels.shape == (3, 900) and inputs.dtype == np.uint8
    t1 = [(crop(inputs[row]), crop(labels[row])) for row in (0, 1)]
    assert [(grid_in.tolist(), grid_out.tolist()) for (grid_in, *_), (grid_out, *_) in t1] == [(GRID_2X3, GRID_1X2), (GRID_1X2, GRID_2X3)]
    assert all(where_in == where_out for (_, *where_in), (_, *where_out) in t1), "input and output share the translation"
    assert (0, 0) in [tuple(where) for (_, *where), _ in t1], "one example of the puzzle stays at the origin"
    np.testing.assert_array_equal(inputs[2], expected_canvas(GRID_1X2))  # alone in its puzzle: at the origin
    for field, expected in {"puzzle_identifiers": [1, 2], "puzzle_indices": [0, 2, 3], "group_indices": [0, 1, 2]}.items():
        np.testing.assert_array_equal(load_field(out, "train", field), expected)

    common = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 12, "seq_len": 900, "num_puzzle_identifiers": 3, "sets": ["all"]}
    assert load_json(out, "train", "dataset.json") == {**common, "total_groups": 2, "mean_puzzle_examples": 1.5, "total_puzzles": 2}
    assert load_json(out, "test", "dataset.json") == {**common, "total_groups": 1, "mean_puzzle_examples": 2.0, "total_puzzles": 1}


def test_translation_on_the_train_split_only(tmp_path):
    small = [[1, 2], [3, 4]]
    prefix = tmp_path / "arc-agi"
    write_kaggle(prefix, "training", {"t1": ([(small, small), (small, [[5]])], [([[6]], small)])})
    write_kaggle(prefix, "evaluation", {"e1": ([(small, [[7]])], [(small, small), ([[8]], [[8, 8]])])})
    out = build_kaggle(prefix, tmp_path / "out", ["training", "evaluation"], "evaluation", num_aug=20)
    identifiers = load_json(out, "identifiers.json")
    assert len(identifiers) == 1 + 2 * 21

    moved = 0
    for split in ("train", "test"):
        inputs, labels = load_field(out, split, "inputs"), load_field(out, split, "labels")
        puzzle_indices = load_field(out, split, "puzzle_indices")
        for puzzle in range(len(puzzle_indices) - 1):
            offsets = []
            for row in range(puzzle_indices[puzzle], puzzle_indices[puzzle + 1]):
                (_, top, left), (_, top_out, left_out) = crop(inputs[row]), crop(labels[row])
                assert (top, left) == (top_out, left_out)
                offsets.append((top, left))
            if split == "test":
                assert set(offsets) == {(0, 0)}, "the test split stays at the top left"
            else:
                assert (0, 0) in offsets, "one example of every training puzzle stays at the origin"
                moved += sum(offset != (0, 0) for offset in offsets)
    assert moved > 20, "the other training examples are translated"
    # e1's copies are in both splits under the same names, hence the same identifiers.
    np.testing.assert_array_equal(load_field(out, "test", "puzzle_identifiers"), load_field(out, "train", "puzzle_identifiers")[21:])


def write_raw_data(root):
    """A dataset/raw-data layout with a few real tasks: ARC-AGI evaluation and training, ConceptARC."""
    for folder, names in (("evaluation", ["00576224", "009d5c81"]), ("training", ["007bbfb7", "00d62c1b"])):
        os.makedirs(root / "ARC-AGI" / "data" / folder)
        for name in names:
            shutil.copy(os.path.join(ARC_AGI, folder, f"{name}.json"), root / "ARC-AGI" / "data" / folder)
    concept = os.path.join(os.path.dirname(ARC_AGI), "..", "ConceptARC", "corpus", "AboveBelow", "AboveBelow1.json")
    os.makedirs(root / "ConceptARC" / "corpus" / "AboveBelow")
    shutil.copy(concept, root / "ConceptARC" / "corpus" / "AboveBelow")
    return root


def test_the_same_tasks_from_kaggle_files_or_folders_give_the_same_bytes(tmp_path):
    raw = write_raw_data(tmp_path / "raw-data")
    prefix = str(tmp_path / "kaggle" / "combined" / "arc-agi")
    make_kaggle_combined(KaggleCombinedConfig(raw_data_dir=str(raw), output_prefix=prefix, subsets=["evaluation", "training", "concept"]))
    # Folders are read in sorted order (evaluation before training), so the subsets are given in that order.
    from_files = build_kaggle(prefix, tmp_path / "files", ["evaluation", "training", "concept"], "evaluation", num_aug=3)
    from_folders = str(tmp_path / "folders")
    build_arc_dataset(ArcBuildConfig(dataset_dirs=[str(raw / "ARC-AGI" / "data"), str(raw / "ConceptARC" / "corpus")], output_dir=from_folders, num_aug=3))
    assert dataset_files(from_files) == dataset_files(from_folders)
    for relative in dataset_files(from_folders):
        with open(os.path.join(from_files, relative), "rb") as one, open(os.path.join(from_folders, relative), "rb") as two:
            assert one.read() == two.read(), relative


def test_make_kaggle_combined_writes_kaggles_format(tmp_path):
    raw = tmp_path / "raw-data"
    task_path = raw / "ARC-AGI" / "data" / "evaluation" / "e9.json"
    write_task(task_path, train=[(GRID_1X2, GRID_2X3)], test=[(GRID_2X3, GRID_1X2), ([[3]], [[4]])])
    prefix = str(tmp_path / "out" / "arc-agi")
    make_kaggle_combined(KaggleCombinedConfig(raw_data_dir=str(raw), output_prefix=prefix, subsets=["evaluation"]))
    assert sorted(os.listdir(tmp_path / "out")) == ["arc-agi_evaluation_challenges.json", "arc-agi_evaluation_solutions.json"]
    assert load_json(tmp_path / "out", "arc-agi_evaluation_challenges.json") == {
        "e9": {"train": [{"input": GRID_1X2, "output": GRID_2X3}], "test": [{"input": GRID_2X3}, {"input": [[3]]}]}
    }
    assert load_json(tmp_path / "out", "arc-agi_evaluation_solutions.json") == {"e9": [GRID_1X2, [[4]]]}
    with pytest.raises(DatasetError, match=r"--subsets evaluation3: unknown; choose from training evaluation training2 evaluation2 concept"):
        make_kaggle_combined(KaggleCombinedConfig(raw_data_dir=str(raw), output_prefix=prefix, subsets=["evaluation3"]))
    with pytest.raises(FileNotFoundError, match=r"raw-data/ARC-AGI/data/training is not a folder: subset training is read from ARC-AGI/data/training under --raw-data-dir .*raw-data$"):
        make_kaggle_combined(KaggleCombinedConfig(raw_data_dir=str(raw), output_prefix=prefix, subsets=["training"]))


def test_test_inputs_without_solutions_get_placeholder_labels(tmp_path):
    prefix = two_subsets(tmp_path, solutions=False)
    out = build_kaggle(prefix, tmp_path / "out", ["training", "evaluation"], "evaluation", num_aug=0)
    np.testing.assert_array_equal(load_field(out, "test", "labels"), [expected_canvas([[0]])] * 2)
    np.testing.assert_array_equal(load_field(out, "test", "inputs")[1], expected_canvas(FULL_GRID_IN))
    os.remove(f"{prefix}_training_solutions.json")
    with pytest.raises(FileNotFoundError, match=r"arc-agi_training_solutions.json not found: the test examples of subset training are trained on"):
        build_kaggle(prefix, tmp_path / "other", ["training", "evaluation"], "evaluation", num_aug=0)


def rewrite_json(path, change):
    with open(path) as file:
        content = json.load(file)
    change(content)
    with open(path, "w") as file:
        json.dump(content, file)


@pytest.mark.parametrize(
    "damage, flags, error, message",
    [
        (None, dict(subsets=["training", "evaluation", "concept"]), FileNotFoundError,
         r"arc-agi_concept_challenges.json not found: --input-file-prefix .*arc-agi reads .*arc-agi_<subset>_challenges.json and "
         r"_solutions.json for each of --subsets; write them from the shipped tasks with python -m dataset.make_kaggle_combined"),
        (("evaluation_solutions", lambda content: content["e1"].pop()), {}, DatasetError,
         r"arc-agi_evaluation_solutions.json: task e1 has 1 output grids for its 2 test inputs in .*arc-agi_evaluation_challenges.json"),
        (("evaluation_solutions", lambda content: content["e1"].__setitem__(0, [[1, 12]])), {}, DatasetError,
         r"arc-agi_evaluation_solutions.json: task e1 output 0: colour 12 outside 0-9"),
        (("training_challenges", lambda content: content["t1"]["train"][0].pop("output")), {}, DatasetError,
         r"arc-agi_training_challenges.json, task t1: train example 0 needs 'input' and 'output' grids"),
        (None, dict(test_set_name="evaluaton"), DatasetError,
         r"--test-set-name evaluaton is not one of --subsets training evaluation, so the test split would be empty"),
        (None, dict(subsets=None), DatasetError, r"--input-file-prefix needs --subsets and --test-set-name"),
        (None, dict(dataset_dirs=["dataset/raw-data/ARC-AGI/data"]), DatasetError, r"give either --dataset-dirs .* or --input-file-prefix"),
        (None, dict(input_file_prefix=None), DatasetError, r"--subsets and --test-set-name select Kaggle-style input files: add --input-file-prefix"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(tmp_path, damage, flags, error, message):
    prefix = two_subsets(tmp_path)
    if damage:
        rewrite_json(f"{prefix}_{damage[0]}.json", damage[1])
    config = dict(input_file_prefix=str(prefix), subsets=["training", "evaluation"], test_set_name="evaluation", output_dir=str(tmp_path / "out"), num_aug=0)
    with pytest.raises(error, match=message):
        build_arc_dataset(ArcBuildConfig(**{**config, **flags}))
    assert not os.path.exists(tmp_path / "out")


def test_a_task_id_in_two_subsets_is_refused(tmp_path):
    prefix = two_subsets(tmp_path)
    write_kaggle(prefix, "concept", {"e1": ([(GRID_1X2, GRID_1X2)], [(GRID_1X2, GRID_1X2)])})
    with pytest.raises(DatasetError, match=r"task name 'e1' appears in both .*arc-agi_evaluation_challenges.json and .*arc-agi_concept_challenges.json; "
                                           r"puzzle names must be unique: drop one of the overlapping --subsets"):
        build_kaggle(prefix, tmp_path / "out", ["training", "evaluation", "concept"], "evaluation", num_aug=0)
    assert not os.path.exists(tmp_path / "out")
