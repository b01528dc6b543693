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
    ArrayFileWriter,
    DatasetError,
    dataset_fingerprint,
    datasets_fingerprint,
    dihedral_transform,
    inverse_dihedral_transform,
    parse_cli,
    read_puzzle_csv,
    resolve_source_csv,
    save_set_arrays,
    source_is_local,
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


def test_read_puzzle_csv_skips_a_byte_order_mark(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffsource,question,answer,rating\nx,ab.,bba,3\n".encode("utf-8"))
    table = read_puzzle_csv(str(path), ".ab", cells=3)
    np.testing.assert_array_equal(table.questions, [[2, 3, 1]])
    assert table.line_numbers == [2]


@pytest.mark.parametrize(
    "content, message",
    [
        ("source,question,answer,rating\nx,ab,ab,1\nx,\xe9b,ab,1\n".encode("latin-1"),
         r"t.csv line 3: not UTF-8 text \(invalid continuation byte\); save the file as UTF-8"),
        ("source,question,answer,rating\nx,ab,ab,1\n".encode("utf-16"), r"t.csv line 1: not UTF-8 text"),
        (b'source,question,answer,rating\nx,ab,ab,1\nx,"' + b"a" * 200_000 + b'",ab,1\n',
         r"t.csv line 3: not a valid CSV row \(field larger than field limit \(131072\)\)"),
        (b"", r"t.csv line 1: header is None, expected source,question,answer,rating"),
    ],
)
def test_read_puzzle_csv_names_encoding_and_format_errors(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        read_puzzle_csv(str(path), ".ab", cells=None)


def test_read_puzzle_csv_names_an_unreadable_file(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(DatasetError, match=r"cannot read .*folder.csv \(Is a directory\): pass a readable CSV file"):
        read_puzzle_csv(str(tmp_path / "folder.csv"), ".ab", cells=None)


@pytest.mark.parametrize(
    "value, local",
    [
        ("sapientinc/sudoku-extreme", True),  # its first part exists in the test's working folder
        ("someone/some-data", False),
        ("./someone/some-data", True),
        ("/data/sudoku", True),
        ("~/sudoku", True),
        ("data/samples/sudoku", True),
        ("sudoku", True),
        ("someone\\data", True),
    ],
)
def test_source_repo_rule(tmp_path, monkeypatch, value, local):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sapientinc").mkdir()
    assert source_is_local(value) == local


def test_a_missing_local_folder_is_not_downloaded(tmp_path, monkeypatch):
    import huggingface_hub

    def no_download(*arguments, **keywords):
        pytest.fail("a local path must not be downloaded")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^--source-repo data/not-here: no such folder; pass a folder holding train.csv and test.csv"):
        resolve_source_csv("data/not-here", "train")


def test_resolve_source_csv_local_folder_and_errors(tmp_path):
    (tmp_path / "train.csv").write_text("")
    assert resolve_source_csv(str(tmp_path), "train") == str(tmp_path / "train.csv")
    with pytest.raises(FileNotFoundError, match=r"test.csv not found: a local --source-repo folder must hold train.csv and test.csv"):
        resolve_source_csv(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match=r"--source-repo .*/no/such/folder: no such folder; pass a folder holding train.csv and test.csv"):
        resolve_source_csv(str(tmp_path / "no" / "such" / "folder"), "train")
    with pytest.raises(FileNotFoundError, match=r"--source-repo .*/train.csv: is not a folder"):
        resolve_source_csv(str(tmp_path / "train.csv"), "train")


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
    with pytest.raises(DatasetError, match=r"could not download test.csv of the Hugging Face dataset sapientinc/sudoku-extreme \(offline\); "
                                           r"no local folder sapientinc/sudoku-extreme exists either"):
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
        "build_arc_dataset": ["--dataset-dirs", "--input-file-prefix", "--subsets", "--test-set-name", "--test-set-name2", "--output-dir", "--seed", "--num-aug"],
    }
    for builder in BUILDERS:
        command = [f"dataset/{builder}.py"] if invocation == "script" else ["-m", f"dataset.{builder}"]
        result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        help_text = " ".join(result.stdout.split())
        for flag in expected_flags[builder]:
            assert flag in help_text, f"{builder} --help lacks {flag}"
        assert help_text.count("(default:") == len(expected_flags[builder])
    probe = ("import sys, dataset.build_sudoku_dataset, dataset.build_maze_dataset, dataset.build_arc_dataset, dataset.make_kaggle_combined; "
             "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_help_states_the_source_repo_rule():
    for builder in ("build_sudoku_dataset", "build_maze_dataset"):
        result = subprocess.run([sys.executable, f"dataset/{builder}.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        assert "a value that starts with '.', '/' or '~', is not of the form owner/name, or whose first part exists here " \
               "(data/x when ./data exists) names a local folder; any other owner/name is a Hugging Face dataset id and is " \
               "downloaded" in " ".join(result.stdout.split()), builder


# -- dihedral transforms ------------------------------------------------------------------------


def test_dihedral_transforms_are_the_eight_symmetries_and_invert():
    grid = np.arange(6).reshape(2, 3)
    expected = [grid, np.rot90(grid), np.rot90(grid, 2), np.rot90(grid, 3), grid[:, ::-1], grid[::-1], grid.T, grid[::-1, ::-1].T]
    for transform_id in range(8):
        image = dihedral_transform(grid, transform_id)
        np.testing.assert_array_equal(image, expected[transform_id])
        np.testing.assert_array_equal(inverse_dihedral_transform(image, transform_id), grid)
        np.testing.assert_array_equal(dihedral_transform(image, DIHEDRAL_INVERSE[transform_id]), grid)


# -- writing arrays -----------------------------------------------------------------------------


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.uint8).reshape(3, 4), np.arange(7, dtype=np.int32), np.zeros((0, 900), dtype=np.uint8)],
                         ids=["uint8 rows", "int32", "empty"])
def test_array_file_writer_writes_what_np_save_writes(tmp_path, array):
    with ArrayFileWriter(str(tmp_path / "written.npy"), array.shape, array.dtype) as writer:
        for start in range(0, len(array), 2):
            writer.append(array[start : start + 2])
    np.save(tmp_path / "saved.npy", array)
    assert (tmp_path / "written.npy").read_bytes() == (tmp_path / "saved.npy").read_bytes()


def test_array_file_writer_refuses_a_wrong_number_of_rows(tmp_path):
    writer = ArrayFileWriter(str(tmp_path / "a.npy"), (3, 2), np.uint8)
    writer.append(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"a.npy: rows of shape \(2, 2\) do not fit \(3, 2\) after 2 rows"):
        writer.append(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"a.npy: 2 of 3 rows written"):
        writer.close()


def test_index_arrays_beyond_int32_are_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"^train/all__puzzle_indices.npy would hold 2147483648, beyond the int32 of the dataset format: "
                                           r"build fewer examples \(lower --num-aug or --subsample-size\)$"):
        save_set_arrays(str(tmp_path), "train", "all", {"puzzle_indices": np.array([0, 2**31])})


# -- fingerprint --------------------------------------------------------------------------------


SUDOKU_SAMPLES = os.path.join(REPO_ROOT, "dataset", "samples", "sudoku-extreme")
MAZE_SAMPLES = os.path.join(REPO_ROOT, "dataset", "samples", "maze-30x30-hard")


def build_sudoku(output, **flags):
    from dataset.build_sudoku_dataset import build_sudoku_dataset

    build_sudoku_dataset(SudokuBuildConfig(source_repo=SUDOKU_SAMPLES, output_dir=str(output), **flags))
    return str(output)


def test_fingerprint_follows_the_content_not_the_build(tmp_path):
    flags = dict(subsample_size=100, num_aug=2, seed=1)
    first = dataset_fingerprint(build_sudoku(tmp_path / "out", **flags))
    assert len(first) == 16 and int(first, 16) >= 0
    assert dataset_fingerprint(str(tmp_path / "out")) == first
    assert dataset_fingerprint(build_sudoku(tmp_path / "copy", **flags)) == first, "an identical build has the same fingerprint"
    other_seed = dataset_fingerprint(build_sudoku(tmp_path / "out", **{**flags, "seed": 2}))
    assert other_seed != first, "rebuilt in place with another seed"
    assert dataset_fingerprint(build_sudoku(tmp_path / "out", **{**flags, "num_aug": 3})) not in (first, other_seed)
    assert dataset_fingerprint(build_sudoku(tmp_path / "out", **flags)) == first


@pytest.mark.parametrize("file_name", ["identifiers.json", "train/dataset.json", "test/all__labels.npy", "train/all__inputs.npy"])
def test_fingerprint_changes_with_any_file_of_a_small_dataset(tmp_path, file_name):
    output = build_sudoku(tmp_path / "out", subsample_size=100, num_aug=2)
    before = dataset_fingerprint(output)
    (tmp_path / "out" / "notes.txt").write_text("not part of the dataset")
    assert dataset_fingerprint(output) == before
    path = os.path.join(output, file_name)
    with open(path, "rb") as file:
        content = bytearray(file.read())
    content[-2] ^= 1
    with open(path, "wb") as file:
        file.write(content)
    assert dataset_fingerprint(output) != before


def test_fingerprint_is_cheap_for_the_samples_and_for_multi_gigabyte_arrays(tmp_path):
    import time

    from dataset.build_maze_dataset import MazeBuildConfig, build_maze_dataset

    sudoku = build_sudoku(tmp_path / "sudoku", num_aug=10)  # 11,000 train and 2,000 test puzzles
    build_maze_dataset(MazeBuildConfig(source_repo=MAZE_SAMPLES, output_dir=str(tmp_path / "maze"), aug=True))
    large = tmp_path / "large"
    build_sudoku(large, subsample_size=10)
    with open(large / "train" / "all__inputs.npy", "r+b") as inputs:  # 8 GiB, sparse: no disk used
        inputs.truncate(8 << 30)
    for folder in (sudoku, str(tmp_path / "maze"), str(large)):
        start = time.perf_counter()
        dataset_fingerprint(folder)
        assert time.perf_counter() - start < 0.5, folder


def test_fingerprint_of_several_folders(tmp_path):
    first, second = build_sudoku(tmp_path / "a", subsample_size=50, num_aug=0), build_sudoku(tmp_path / "b", subsample_size=50, num_aug=1)
    assert datasets_fingerprint([first]) == dataset_fingerprint(first)
    both = datasets_fingerprint([first, second])
    assert both not in (dataset_fingerprint(first), dataset_fingerprint(second), datasets_fingerprint([second, first]))
    assert len(both) == 16


def test_fingerprint_of_a_folder_without_a_dataset_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no dataset \(identifiers.json, train/, test/\)"):
        dataset_fingerprint(str(tmp_path))
