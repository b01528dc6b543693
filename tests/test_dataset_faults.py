"""Dataset builds under faults: a full disk, SIGTERM and SIGKILL at chosen points, leftovers of
killed builds, the replace of an earlier build, unusual output paths and out-of-range flags."""

import errno
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

import dataset.common as common
from dataset.build_arc_dataset import ArcBuildConfig, build_arc_dataset
from dataset.build_maze_dataset import MazeBuildConfig, build_maze_dataset
from dataset.build_sudoku_dataset import SudokuBuildConfig, build_sudoku_dataset
from dataset.common import BuildTerminated, DatasetError, clear_build_leftovers
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig
from tests.dataset_files import load_field
from utils.files import exchange_paths

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUDOKU_SAMPLES = os.path.join(REPO_ROOT, "dataset", "samples", "sudoku-extreme")
MAZE_SAMPLES = os.path.join(REPO_ROOT, "dataset", "samples", "maze-30x30-hard")
ARC_EVALUATION = os.path.join(REPO_ROOT, "dataset", "raw-data", "ARC-AGI", "data", "evaluation")
HOST = socket.gethostname()


def snapshot(folder) -> dict:
    """Every file of a folder tree: relative path -> bytes."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                files[os.path.relpath(path, folder)] = file.read()
    return files


def build_sudoku(output, subsample_size=20, **flags):
    build_sudoku_dataset(SudokuBuildConfig(source_repo=SUDOKU_SAMPLES, output_dir=str(output), subsample_size=subsample_size, **flags))
    return str(output)


def open_dataset(path):
    config = PuzzleDatasetConfig(seed=0, dataset_path=str(path), global_batch_size=4, test_set_mode=True, epochs_per_iter=1, rank=0, num_replicas=1)
    return PuzzleDataset(config, split="test")


def assert_matches(text, pattern):
    assert re.fullmatch(pattern, text), f"{text!r}\ndoes not match\n{pattern!r}"


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# -- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmpfs):
    return tmpfs.mount("small", "1m")


FULL_DISK_BUILDS = {
    "sudoku": (["dataset/build_sudoku_dataset.py", "--source-repo", SUDOKU_SAMPLES, "--num-aug", "20"], "train/all__inputs.npy", 1_701_128),
    "maze": (["dataset/build_maze_dataset.py", "--source-repo", MAZE_SAMPLES, "--aug"], "train/all__inputs.npy", 720_128),
    "arc": (["dataset/build_arc_dataset.py", "--dataset-dirs", ARC_EVALUATION, "--num-aug", "0"], "train/all__inputs.npy", None),
}


@pytest.mark.parametrize("builder", FULL_DISK_BUILDS)
def test_full_disk_stops_the_build_with_one_message_and_keeps_the_previous_dataset(small_filesystem, builder):
    output = small_filesystem / "out"
    build_sudoku(output, subsample_size=100)  # the previous dataset, 0.4 MB of the 1 MiB
    before = snapshot(output)
    arguments, file_name, needed = FULL_DISK_BUILDS[builder]
    result = subprocess.run([sys.executable, *arguments, "--output-dir", str(output)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    message = result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr
    needs = f"{needed:,}" if needed else "[0-9,]+"
    assert_matches(
        message,
        rf"build_{builder}_dataset.py: error: no space left on the device for --output-dir {output}: {file_name} needs {needs} bytes, "
        rf"and [0-9,]+ bytes are free there. The partial build {output}.tmp-{HOST}-[0-9]+ was removed and {output} left as "
        rf"it was: free space, or choose an --output-dir on another disk, and rerun",
    )
    assert os.listdir(small_filesystem) == ["out"]
    assert snapshot(output) == before


def test_a_rebuild_after_freeing_space_works(small_filesystem, tmpfs):
    output = small_filesystem / "out"
    build_sudoku(output, subsample_size=100)
    with pytest.raises(DatasetError, match="no space left on the device"):
        build_sudoku(output, subsample_size=None, num_aug=20)
    tmpfs.resize(small_filesystem, "8m")
    build_sudoku(output, subsample_size=None, num_aug=20)
    assert load_field(output, "train", "inputs").shape == (21_000, 81)
    assert os.listdir(small_filesystem) == ["out"]


def test_a_full_disk_at_the_space_reservation_is_reported(tmp_path, monkeypatch):
    """Simulated: posix_fallocate finds no room for the first array."""
    output = build_sudoku(tmp_path / "out")
    before = snapshot(output)

    def no_room(descriptor, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room, raising=False)
    with pytest.raises(DatasetError, match=rf"^no space left on the device for --output-dir {output}: train/all__inputs.npy needs "
                                           rf"81,128 bytes, and [0-9,]+ bytes are free there. The partial build {output}.tmp-{HOST}-{os.getpid()} was removed"):
        build_sudoku(output, subsample_size=None, num_aug=0)
    assert os.listdir(tmp_path) == ["out"]
    assert snapshot(output) == before


def filling_open(budget):
    """`open` whose files for writing share a budget of bytes (FilledUpFile)."""

    def open_filling(path, mode="r", *arguments, **keywords):
        file = open(path, mode, *arguments, **keywords)
        return FilledUpFile(file, budget) if "w" in mode else file

    return open_filling


class FilledUpFile:
    """A file whose writes fail with ENOSPC once the shared budget of bytes is spent."""

    def __init__(self, file, budget):
        self.file, self.budget = file, budget

    def write(self, data):
        size = memoryview(data).nbytes if not isinstance(data, str) else len(data.encode())
        if size > self.budget[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget[0] -= size
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.file.close()


def test_a_full_disk_during_the_writes_is_reported_where_space_cannot_be_reserved(tmp_path, monkeypatch):
    """Simulated: no posix_fallocate (as on macOS), and a disk that fills up in the second array."""
    output = str(tmp_path / "out")
    build_maze_dataset(MazeBuildConfig(source_repo=MAZE_SAMPLES, output_dir=output))
    before = snapshot(output)
    budget = [1_000_000]
    monkeypatch.delattr(os, "posix_fallocate", raising=False)
    monkeypatch.setattr(common, "open", filling_open(budget), raising=False)
    with pytest.raises(DatasetError, match=rf"^no space left on the device for --output-dir {output}: train/all__labels.npy needs 720,128 "
                                           rf"bytes after 720,128 bytes of other files \(the dataset needs at least 1,440,256\), and [0-9,]+ "
                                           rf"bytes are free there. The partial build {output}.tmp-{HOST}-{os.getpid()} was removed"):
        build_maze_dataset(MazeBuildConfig(source_repo=MAZE_SAMPLES, output_dir=output, aug=True))
    assert os.listdir(tmp_path) == ["out"]
    assert snapshot(output) == before


def test_a_full_disk_writing_the_identifiers_is_reported(tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    budget = [10**9]
    open_filling = filling_open(budget)

    def filled_up_at_identifiers(path, *arguments, **keywords):
        if path.endswith("identifiers.json"):
            budget[0] = 0
        return open_filling(path, *arguments, **keywords)

    monkeypatch.setattr(common, "open", filled_up_at_identifiers, raising=False)
    with pytest.raises(DatasetError, match=r"^no space left on the device for --output-dir .*out: identifiers.json needs 4,811 bytes after 3,218,932 bytes of other files"):
        build_arc_dataset(ArcBuildConfig(dataset_dirs=[ARC_EVALUATION], output_dir=output, num_aug=0))
    assert os.listdir(tmp_path) == []


# -- killed builds ----------------------------------------------------------------------------

# A builder process, as `python dataset/build_sudoku_dataset.py ...`, with a patch applied first.
CHILD = """
import os, signal, sys, time
import dataset.build_sudoku_dataset as builder
import dataset.common as common
{patch}
sys.argv = {argv!r}
common.run_cli(builder.SudokuBuildConfig, builder.build_sudoku_dataset, prog="build_sudoku_dataset.py")
"""

PAUSE_AFTER_TRAIN_SPLIT = """
write_split = builder.write_sudoku_split
def write_and_pause(dataset_dir, split, *arguments):
    write_split(dataset_dir, split, *arguments)
    if split == "train":
        print("train split written", flush=True)
        time.sleep(60)
builder.write_sudoku_split = write_and_pause
"""

KILL_AFTER_THE_SWAP = """
exchange = common.exchange_paths
def exchange_and_die(first, second):
    assert exchange(first, second)
    os.kill(os.getpid(), signal.SIGKILL)
common.exchange_paths = exchange_and_die
"""

KILL_BETWEEN_THE_RENAMES = """
common.exchange_paths = lambda first, second: False  # a file system without the atomic swap
rename = os.rename
def rename_and_die(source, destination):
    rename(source, destination)
    if ".old-" in os.path.basename(destination):
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename_and_die
"""


def start_builder(output, patch, subsample_size=30) -> subprocess.Popen:
    argv = ["build_sudoku_dataset.py", "--source-repo", SUDOKU_SAMPLES, "--output-dir", str(output), "--subsample-size", str(subsample_size)]
    return subprocess.Popen([sys.executable, "-c", CHILD.format(patch=patch, argv=argv)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process, expected):
    for line in process.stdout:
        if line.strip() == expected:
            return
    pytest.fail(f"the builder ended without printing {expected!r}: {process.stderr.read()}")


def test_sigterm_removes_the_partial_build_and_keeps_the_previous_dataset(tmp_path):
    output = build_sudoku(tmp_path / "out")
    before = snapshot(output)
    builder = start_builder(output, PAUSE_AFTER_TRAIN_SPLIT)
    wait_for_line(builder, "train split written")
    staging = f"{output}.tmp-{HOST}-{builder.pid}"
    assert os.path.isfile(os.path.join(staging, "train", "all__inputs.npy"))
    builder.send_signal(signal.SIGTERM)
    _, stderr = builder.communicate(timeout=60)
    assert builder.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-2:] == [f"removed the partial build {staging}; {output} is left as it was", "build_sudoku_dataset.py: stopped by SIGTERM"]
    assert os.listdir(tmp_path) == ["out"]
    assert snapshot(output) == before


def test_sigkill_leaves_a_staging_folder_that_the_next_build_removes(tmp_path, capsys):
    output = build_sudoku(tmp_path / "out")
    before = snapshot(output)
    builder = start_builder(output, PAUSE_AFTER_TRAIN_SPLIT)
    wait_for_line(builder, "train split written")
    builder.kill()
    builder.communicate(timeout=60)
    staging = f"{output}.tmp-{HOST}-{builder.pid}"
    assert sorted(os.listdir(tmp_path)) == sorted(["out", os.path.basename(staging)])
    assert snapshot(output) == before and len(open_dataset(output).metadata.sets) == 1, "the previous dataset is intact"

    capsys.readouterr()
    build_sudoku(output, subsample_size=30)
    assert capsys.readouterr().out.splitlines()[0] == f"removed {staging}, left by a build (process {builder.pid} on host {HOST}) that is no longer running"
    assert os.listdir(tmp_path) == ["out"]
    assert load_field(output, "train", "inputs").shape == (30, 81)


def test_a_kill_right_after_the_swap_leaves_the_new_dataset(tmp_path, capsys):
    output = build_sudoku(tmp_path / "out", subsample_size=20)
    before = snapshot(output)
    builder = start_builder(output, KILL_AFTER_THE_SWAP, subsample_size=30)
    builder.communicate(timeout=60)
    assert builder.returncode == -signal.SIGKILL
    assert load_field(output, "train", "inputs").shape == (30, 81), "the new dataset is in place"
    retired = f"{output}.tmp-{HOST}-{builder.pid}"
    assert snapshot(retired) == before, "the swap left the previous dataset under the staging name"
    capsys.readouterr()
    clear_build_leftovers(output)
    assert capsys.readouterr().out == f"removed {retired}, left by a build (process {builder.pid} on host {HOST}) that is no longer running\n"
    assert os.listdir(tmp_path) == ["out"]


def test_a_kill_between_the_two_renames_of_a_replace_without_swap_is_recovered(tmp_path, capsys):
    output = build_sudoku(tmp_path / "out", subsample_size=20)
    before = snapshot(output)
    builder = start_builder(output, KILL_BETWEEN_THE_RENAMES, subsample_size=30)
    builder.communicate(timeout=60)
    assert builder.returncode == -signal.SIGKILL
    set_aside, staging = f"{output}.old-{HOST}-{builder.pid}", f"{output}.tmp-{HOST}-{builder.pid}"
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(path) for path in (set_aside, staging))
    assert snapshot(set_aside) == before

    with pytest.raises(FileNotFoundError, match=rf"{set_aside} holds the dataset that a build killed while replacing it set aside: rerun "
                                                rf"that build \(it puts it back first\), or: mv {set_aside} {output}$"):
        open_dataset(output)

    capsys.readouterr()
    clear_build_leftovers(output)
    assert capsys.readouterr().out.splitlines() == [
        f"restored {output} from {set_aside}, where a build (process {builder.pid} on host {HOST}) killed while replacing it had moved it",
        f"removed {staging}, left by a build (process {builder.pid} on host {HOST}) that is no longer running",
    ]
    assert os.listdir(tmp_path) == ["out"]
    assert snapshot(output) == before


def test_replace_without_an_atomic_swap_and_a_failed_second_rename(tmp_path, monkeypatch):
    output = build_sudoku(tmp_path / "out", subsample_size=20)
    monkeypatch.setattr(common, "exchange_paths", lambda first, second: False)
    build_sudoku(output, subsample_size=30)
    assert load_field(output, "train", "inputs").shape == (30, 81)
    assert os.listdir(tmp_path) == ["out"]

    before = snapshot(output)
    rename = os.rename

    def rename_fails_into_place(source, destination):
        if os.path.basename(source).startswith("out.tmp-"):
            raise OSError(errno.EIO, "Input/output error")
        rename(source, destination)

    monkeypatch.setattr(os, "rename", rename_fails_into_place)
    with pytest.raises(OSError, match="Input/output error"):
        build_sudoku(output, subsample_size=40)
    assert snapshot(output) == before, "the previous dataset is put back"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_exchange_paths_swaps_two_folders_atomically(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "marker").write_text(name)
    if not exchange_paths(str(tmp_path / "a"), str(tmp_path / "b")):
        pytest.skip("this file system has no RENAME_EXCHANGE")
    assert (tmp_path / "a" / "marker").read_text() == "b" and (tmp_path / "b" / "marker").read_text() == "a"
    with pytest.raises(FileNotFoundError):
        exchange_paths(str(tmp_path / "a"), str(tmp_path / "missing"))


def test_sigterm_during_the_replace_acts_after_it(tmp_path, monkeypatch):
    output = build_sudoku(tmp_path / "out", subsample_size=20)
    exchange = common.exchange_paths

    def sigterm_then_exchange(first, second):
        os.kill(os.getpid(), signal.SIGTERM)
        return exchange(first, second)

    monkeypatch.setattr(common, "exchange_paths", sigterm_then_exchange)
    previous = signal.signal(signal.SIGTERM, common._raise_build_terminated)  # as run_cli installs it
    try:
        with pytest.raises(BuildTerminated):
            build_sudoku(output, subsample_size=30)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert load_field(output, "train", "inputs").shape == (30, 81), "the replace completed first"
    assert os.listdir(tmp_path) == ["out"], "the previous dataset was removed too"


def test_leftovers_whose_build_may_still_run_are_reported_with_the_command(tmp_path, capsys):
    output = build_sudoku(tmp_path / "out")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = dead_pid()
        names = {
            "other_host": "out.tmp-another-host-123",
            "running": f"out.tmp-{HOST}-{sleeper.pid}",
            "earlier_version": "out.tmp-4242",
            "dead": f"out.tmp-{HOST}-{gone}",
            "unrelated": "out.tmp-notes",
        }
        for name in names.values():
            (tmp_path / name).mkdir()
        capsys.readouterr()
        build_sudoku(output, subsample_size=30)
    finally:
        sleeper.kill()
        sleeper.wait()
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == f"removed {tmp_path}/{names['dead']}, left by a build (process {gone} on host {HOST}) that is no longer running"
    assert sorted(line for line in captured.err.splitlines() if line.startswith("note: ")) == sorted([
        f"note: {tmp_path}/{names['earlier_version']} belongs to a build of {output} (process 4242): an earlier version of this script "
        f"named it without its host, so whether its build still runs is unknown; if no such build is running, remove it: "
        f"rm -rf {tmp_path}/{names['earlier_version']}",
        f"note: {tmp_path}/{names['other_host']} belongs to a build of {output} (process 123 on host another-host): this machine cannot tell "
        f"whether that build still runs; if no such build is running, remove it: rm -rf {tmp_path}/{names['other_host']}",
        f"note: {tmp_path}/{names['running']} belongs to a build of {output} (process {sleeper.pid} on host {HOST}): that process is running "
        f"(another build of the same --output-dir, or a program that reused the id); if no such build is running, remove it: "
        f"rm -rf {tmp_path}/{names['running']}",
    ])
    assert sorted(os.listdir(tmp_path)) == sorted(["out", names["other_host"], names["running"], names["earlier_version"], names["unrelated"]])


def test_the_remove_command_quotes_an_unusual_path(tmp_path, capsys):
    output = tmp_path / "my data" / "out"
    output.parent.mkdir()
    (output.parent / "out.tmp-elsewhere-7").mkdir()
    clear_build_leftovers(str(output))
    assert capsys.readouterr().err.endswith(f"rm -rf '{output.parent}/out.tmp-elsewhere-7'\n")


# -- output paths and flags -------------------------------------------------------------------


def test_an_output_path_with_spaces_builds_and_loads(tmp_path):
    output = build_sudoku(tmp_path / "my datasets" / "sudoku 1")
    assert len(list(open_dataset(output))) == 500  # 2000 test puzzles, 4 per batch


def test_a_symbolic_link_as_output_dir_is_refused(tmp_path):
    target = build_sudoku(tmp_path / "real")
    os.symlink(target, tmp_path / "link")
    with pytest.raises(DatasetError, match=r"--output-dir .*link exists and is not an earlier dataset build \(it is a symbolic link; pass the folder it points to\)"):
        build_sudoku(tmp_path / "link")


def test_a_parent_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    def permission_denied(path, *arguments, **keywords):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(os, "makedirs", permission_denied)
    with pytest.raises(DatasetError, match=rf"^cannot create {tmp_path}/out.tmp-{HOST}-{os.getpid()}, where --output-dir {tmp_path}/out is built "
                                           rf"\(Permission denied\): choose an --output-dir inside a folder you can write to$"):
        build_sudoku(tmp_path / "out")


@pytest.fixture
def read_only_folder(tmpfs):
    return tmpfs.mount("read-only", "1m", "ro")


def run_builder_script(script, *arguments):
    return subprocess.run([sys.executable, f"dataset/{script}", *arguments], cwd=REPO_ROOT, capture_output=True, text=True)


def test_a_read_only_parent_folder_stops_the_script_with_one_line(read_only_folder):
    result = run_builder_script("build_maze_dataset.py", "--source-repo", MAZE_SAMPLES, "--output-dir", str(read_only_folder / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"build_maze_dataset.py: error: cannot create {read_only_folder}/out.tmp-{HOST}-")
    assert result.stderr.endswith("(Read-only file system): choose an --output-dir inside a folder you can write to\n")


@pytest.mark.parametrize(
    "script, arguments, message",
    [
        ("build_sudoku_dataset.py", ["--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
        ("build_sudoku_dataset.py", ["--subsample-size", "0"], "--subsample-size: Input should be greater than or equal to 1"),
        ("build_sudoku_dataset.py", ["--max-blanks", "-1"], "--max-blanks: Input should be greater than or equal to 0"),
        ("build_sudoku_dataset.py", ["--num-aug", "many"], "--num-aug: Input should be a valid integer"),
        ("build_sudoku_dataset.py", ["--subsample-size", "1001"],
         f"--subsample-size 1001 is larger than the 1000 puzzles of {SUDOKU_SAMPLES}/train.csv; pass at most 1000, or leave the flag out to keep them all"),
        ("build_sudoku_dataset.py", ["--subsample-size", "5", "--min-difficulty", "10000"],
         f"--subsample-size 5 is larger than the 4 puzzles of {SUDOKU_SAMPLES}/train.csv with rating >= 10000"),
        ("build_maze_dataset.py", ["--subsample-size", "101"], f"--subsample-size 101 is larger than the 100 puzzles of {MAZE_SAMPLES}/train.csv"),
        ("build_maze_dataset.py", ["--seed", "-2"], "--seed: Input should be greater than or equal to 0"),
        ("build_arc_dataset.py", ["--num-aug", "-1"], "--num-aug: Input should be greater than or equal to 0"),
        ("build_arc_dataset.py", ["--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
    ],
)
def test_out_of_range_flags_stop_with_one_line_naming_the_flag(tmp_path, script, arguments, message):
    source = ["--dataset-dirs", ARC_EVALUATION] if script == "build_arc_dataset.py" else \
        ["--source-repo", SUDOKU_SAMPLES if "sudoku" in script else MAZE_SAMPLES]
    result = run_builder_script(script, *source, "--output-dir", str(tmp_path / "out"), *arguments)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert_matches(result.stderr.strip(), rf"{script}: error: {message}.*")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["file_as_output", "file_as_parent", "csv_not_utf8"])
def test_unusual_paths_and_encodings_stop_the_script_with_one_line(tmp_path, case):
    (tmp_path / "a_file").write_text("mine")
    source = MAZE_SAMPLES
    output = tmp_path / "out"
    if case == "file_as_output":
        output = tmp_path / "a_file"
        expected = f"--output-dir {output} exists and is not an earlier dataset build (it is a file, not a folder); it is left untouched"
    elif case == "file_as_parent":
        output = tmp_path / "a_file" / "out"
        expected = f"cannot create {output}.tmp-{HOST}-"
    else:
        source = tmp_path / "latin1"
        source.mkdir()
        (source / "train.csv").write_bytes("source,question,answer,rating\nm,S \u00e9,So#,0\n".encode("latin-1"))
        (source / "test.csv").write_text("source,question,answer,rating\n")
        expected = f"{source}/train.csv line 2: not UTF-8 text (invalid continuation byte); save the file as UTF-8"
    result = run_builder_script("build_maze_dataset.py", "--source-repo", str(source), "--output-dir", str(output))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert expected in result.stderr
    assert (tmp_path / "a_file").read_text() == "mine"
