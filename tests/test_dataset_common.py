"""Shared dataset helpers: output folder safety, CSV validation, sources, command line, transforms."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dataset.build_arc_dataset import ArcBuildConfig
from dataset.build_maze_dataset import MazeBuildConfig
from dataset.build_sudoku_dataset import SudokuBuildConfig
from dataset.common import (
    DIHEDRAL_INVERSE,
    DatasetError,
    dihedral_transform,
    inverse_dihedral_transform,
    parse_cli,
    read_puzzle_csv,
    resolve_source_csv,
    staged_output_dir,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDERS = ["build_sudoku_dataset", "build_maze_dataset", "build_arc_dataset"]


def make_earlier_build(path):
    for split in ("train", "test"):
        os.makedirs(path / split)
        (path / split / "dataset.json").write_text("{}")
        np.save(path / split / "all__inputs.npy", np.zeros(3))
    (path / "identifiers.json").write_text('["<blank>"]')


# -- output folder ------------------------------------------------------------------------------


def test_staged_output_dir_appears_only_when_complete(tmp_path):
    output = tmp_path / "data" / "built"
    with staged_output_dir(str(output)) as staging:
        assert not output.exists(), "the final folder must not exist while the build runs"
        (tmp_path / "data" / os.path.basename(staging) / "marker").write_text("x")
    assert (output / "marker").read_text() == "x"
    assert os.listdir(tmp_path / "data") == ["built"]


def test_staged_output_dir_failure_leaves_nothing(tmp_path):
    output = tmp_path / "built"
    with pytest.raises(KeyboardInterrupt):
        with staged_output_dir(str(output)) as staging:
            open(os.path.join(staging, "half_written.npy"), "w").close()
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_earlier_build_is_replaced_and_empty_folder_reused(tmp_path):
    earlier = tmp_path / "earlier"
    make_earlier_build(earlier)
    with staged_output_dir(str(earlier)) as staging:
        open(os.path.join(staging, "new"), "w").close()
    assert os.listdir(earlier) == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["earlier"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_output_dir(str(empty)) as staging:
        open(os.path.join(staging, "new"), "w").close()
    assert os.listdir(empty) == ["new"]


@pytest.mark.parametrize("intruder", ["notes.txt", "train/notes.txt", "test/extra_dir/"])
def test_folder_with_other_files_is_refused_and_untouched(tmp_path, intruder):
    output = tmp_path / "mine"
    make_earlier_build(output)
    if intruder.endswith("/"):
        os.makedirs(output / intruder)
    else:
        (output / intruder).write_text("precious")
    before = sorted(str(path) for path in output.rglob("*"))
    with pytest.raises(DatasetError, match=r"--output-dir .*mine exists and is not an earlier dataset build \(it holds .*mine/" + intruder.rstrip("/")):
        with staged_output_dir(str(output)):
            pytest.fail("must refuse before building")
    assert sorted(str(path) for path in output.rglob("*")) == before
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_folder_missing_identifiers_is_not_an_earlier_build(tmp_path):
    output = tmp_path / "partial"
    make_earlier_build(output)
    os.remove(output / "identifiers.json")
    with pytest.raises(DatasetError, match=r"not an earlier dataset build \(it lacks .*partial/identifiers.json\)"):
        with staged_output_dir(str(output)):
            pass


# -- CSV reading --------------------------------------------------------------------------------


def write_csv(path, text):
    path.write_text(text)
    return str(path)


def test_read_puzzle_csv_tokens_are_charset_index_plus_one(tmp_path):
    path = write_csv(tmp_path / "t.csv", "source,question,answer,rating\nx,ab.,bba,3\nx,...,aaa,4\n")
    table = read_puzzle_csv(path, ".ab", cells=3)
    np.testing.assert_array_equal(table.questions, [[2, 3, 1], [1, 1, 1]])
    np.testing.assert_array_equal(table.answers, [[3, 3, 2], [2, 2, 2]])
    assert table.questions.dtype == np.uint8
    assert table.ratings == ["3", "4"] and table.line_numbers == [2, 3]


@pytest.mark.parametrize(
    "text, message",
    [
        ("source,question,answer\nx,ab,ab\n", r"t.csv line 1: header is \['source', 'question', 'answer'\], expected source,question,answer,rating"),
        ("source,question,answer,rating\nx,ab,ab,1,extra\n", r"t.csv line 2: 5 columns, expected 4"),
        ("source,question,answer,rating\nx,ab,ab,1\nx,ab,a,1\n", r"t.csv line 3, field answer: 1 characters, expected 2"),
        ("source,question,answer,rating\nx,aZ,ab,1\n", r"t.csv line 2, field question: character 'Z' at position 1 is not one of '.ab'"),
        ("source,question,answer,rating\nx,ab,aé,1\n", r"t.csv line 2, field answer: character 'é' is not one of '.ab'"),
        ("source,question,answer,rating\n", r"t.csv: no puzzle rows after the header"),
    ],
)
def test_read_puzzle_csv_errors_name_file_line_and_field(tmp_path, text, message):
    path = write_csv(tmp_path / "t.csv", text)
    with pytest.raises(DatasetError, match=message):
        read_puzzle_csv(path, ".ab", cells=None)


def test_resolve_source_csv_local_folder_and_errors(tmp_path):
    (tmp_path / "train.csv").write_text("")
    assert resolve_source_csv(str(tmp_path), "train") == str(tmp_path / "train.csv")
    with pytest.raises(FileNotFoundError, match=r"test.csv not found: a local --source-repo folder must hold train.csv and test.csv"):
        resolve_source_csv(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a Hugging Face dataset id"):
        resolve_source_csv(str(tmp_path / "no" / "such" / "folder"), "train")


def test_resolve_source_csv_downloads_hub_ids_and_explains_failures(monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, repo_type):
        calls.append((repo_id, filename, repo_type))
        if filename == "test.csv":
            raise huggingface_hub.errors.LocalEntryNotFoundError("offline")
        return "/cache/train.csv"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert resolve_source_csv("sapientinc/sudoku-extreme", "train") == "/cache/train.csv"
    with pytest.raises(DatasetError, match=r"could not download test.csv of the Hugging Face dataset sapientinc/sudoku-extreme \(offline\)"):
        resolve_source_csv("sapientinc/sudoku-extreme", "test")
    assert calls == [("sapientinc/sudoku-extreme", "train.csv", "dataset"), ("sapientinc/sudoku-extreme", "test.csv", "dataset")]


def test_resolve_source_csv_explains_an_invalid_hub_id_without_network_access(monkeypatch):
    import socket

    # Any attempt to reach the network is recorded and fails, so a passing test shows the id was
    # refused before a request.
    connections = []

    def refuse_connection(*arguments, **keywords):
        connections.append(arguments)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_connection)
    monkeypatch.setattr(socket.socket, "connect", refuse_connection)
    # Two parts separated by one slash pass the local 'owner/name' check; the Hub's rules refuse the space and '!'.
    with pytest.raises(DatasetError, match=r"--source-repo 'my data/x!' is not a valid Hugging Face dataset id \(.+\); "
                                           r"pass a folder that exists holding train.csv and test.csv, or a dataset id "
                                           r"such as sapientinc/sudoku-extreme"):
        resolve_source_csv("my data/x!", "train")
    assert connections == []


# -- command line -------------------------------------------------------------------------------


def test_given_list_flag_replaces_the_default():
    config = parse_cli(ArcBuildConfig, ["--dataset-dirs", "dataset/raw-data/ARC-AGI-2/data"], prog="x")
    assert config.dataset_dirs == ["dataset/raw-data/ARC-AGI-2/data"]
    assert parse_cli(ArcBuildConfig, ["--dataset-dirs", "a", "b"], prog="x").dataset_dirs == ["a", "b"]
    assert parse_cli(ArcBuildConfig, ["--dataset-dirs", "a", "--dataset-dirs", "b"], prog="x").dataset_dirs == ["a", "b"]
    assert parse_cli(ArcBuildConfig, [], prog="x").dataset_dirs == ["dataset/raw-data/ARC-AGI/data", "dataset/raw-data/ConceptARC/corpus"]


def test_builder_flags_parse_with_original_defaults():
    sudoku = parse_cli(SudokuBuildConfig, ["--output-dir", "d", "--subsample-size", "1000", "--num-aug", "1000"], prog="x")
    assert (sudoku.source_repo, sudoku.output_dir, sudoku.subsample_size, sudoku.min_difficulty, sudoku.num_aug) == (
        "sapientinc/sudoku-extreme", "d", 1000, None, 1000)
    assert (sudoku.seed, sudoku.max_blanks) == (0, None)
    maze = parse_cli(MazeBuildConfig, ["--aug"], prog="x")
    assert (maze.source_repo, maze.output_dir, maze.aug, maze.seed) == ("sapientinc/maze-30x30-hard-1k", "data/maze-30x30-hard-1k", True, 0)
    arc = parse_cli(ArcBuildConfig, [], prog="x")
    assert (arc.output_dir, arc.seed, arc.num_aug) == ("data/arc-aug-1000", 42, 1000)


def test_bad_flag_value_exits_with_the_flag_name():
    with pytest.raises(SystemExit, match=r"--num-aug: Input should be greater than or equal to 0"):
        parse_cli(SudokuBuildConfig, ["--num-aug", "-1"], prog="x")


@pytest.mark.parametrize("invocation", ["script", "module"])
def test_builders_run_from_repo_root_list_defaults_and_skip_torch(invocation):
    expected_flags = {
        "build_sudoku_dataset": ["--source-repo", "--output-dir", "--subsample-size", "--min-difficulty", "--num-aug", "--seed", "--max-blanks"],
        "build_maze_dataset": ["--source-repo", "--output-dir", "--subsample-size", "--aug", "--seed"],
        "build_arc_dataset": ["--dataset-dirs", "--output-dir", "--seed", "--num-aug"],
    }
    for builder in BUILDERS:
        command = [f"dataset/{builder}.py"] if invocation == "script" else ["-m", f"dataset.{builder}"]
        result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        help_text = " ".join(result.stdout.split())
        for flag in expected_flags[builder]:
            assert flag in help_text, f"{builder} --help lacks {flag}"
        assert help_text.count("(default:") == len(expected_flags[builder])
    probe = "import sys, dataset.build_sudoku_dataset, dataset.build_maze_dataset, dataset.build_arc_dataset; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip() == "False"


# -- dihedral transforms ------------------------------------------------------------------------


def test_dihedral_transforms_are_the_eight_symmetries_and_invert():
    grid = np.arange(6).reshape(2, 3)
    expected = [grid, np.rot90(grid), np.rot90(grid, 2), np.rot90(grid, 3), grid[:, ::-1], grid[::-1], grid.T, grid[::-1, ::-1].T]
    for transform_id in range(8):
        image = dihedral_transform(grid, transform_id)
        np.testing.assert_array_equal(image, expected[transform_id])
        np.testing.assert_array_equal(inverse_dihedral_transform(image, transform_id), grid)
        np.testing.assert_array_equal(dihedral_transform(image, DIHEDRAL_INVERSE[transform_id]), grid)
