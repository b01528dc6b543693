"""The dataset format shared by every builder and the loader.

Metadata model, dihedral transforms, and the helpers every builder needs: the command line,
finding and validating source CSVs, seeded random streams, writing a dataset folder atomically
(and cleaning up after killed builds), and the dataset fingerprint. Nothing here imports torch:
builders run without it.
"""

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import sys
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Type, TypeVar

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator

from utils.files import OUT_OF_SPACE_ERRNOS, exchange_paths, process_is_running, sync_folder

# Inverse of each dihedral transform id below: applying DIHEDRAL_INVERSE[t] after t is the identity.
DIHEDRAL_INVERSE = [0, 3, 2, 1, 4, 5, 6, 7]

# The five arrays every set of a split holds, saved as `<set>__<field>.npy`.
SET_ARRAY_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")

# Header of the puzzle CSVs published with the original (Sudoku-Extreme, Maze-30x30-Hard).
PUZZLE_CSV_HEADER = ["source", "question", "answer", "rating"]

SPLITS = ("train", "test")


class DatasetError(ValueError):
    """Bad user input (source data, flags, output folder) or a damaged dataset; the message says
    what and how to fix it."""


class PuzzleDatasetMetadata(BaseModel):
    """Contents of `<split>/dataset.json`; field names are the original's."""

    pad_id: int = Field(ge=0)
    ignore_label_id: Optional[int]
    blank_identifier_id: int = Field(ge=0)
    vocab_size: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    num_puzzle_identifiers: int = Field(ge=1)
    total_groups: int = Field(ge=0)
    mean_puzzle_examples: float = Field(ge=0, allow_inf_nan=False)
    # TRM's field (its loader requires it); datasets built before it lack it. The loader counts the
    # puzzles in the arrays instead of reading it: TRM's own Sudoku and Maze builders write their
    # group count here.
    total_puzzles: Optional[int] = Field(None, ge=0)
    sets: List[str] = Field(min_length=1)

    @field_validator("sets")
    @classmethod
    def _set_names_are_file_name_parts(cls, sets: List[str]) -> List[str]:
        for name in sets:
            if not name or "/" in name or os.sep in name or name in (".", ".."):
                raise ValueError(f"set name {name!r} is not a plain name (its arrays are <split>/{name}__<field>.npy)")
        if len(set(sets)) != len(sets):
            raise ValueError(f"set names {sets} repeat")
        return sets


def dihedral_transform(grid: np.ndarray, transform_id: int) -> np.ndarray:
    """Apply one of the 8 symmetries of the square to the last two axes of `grid`.

    Ids: 0 identity, 1 rot90, 2 rot180, 3 rot270, 4 flip left-right, 5 flip up-down,
    6 transpose, 7 anti-diagonal reflection (flip left-right of rot90).
    """
    axes = (-2, -1)
    if transform_id == 0:
        return grid
    if transform_id == 1:
        return np.rot90(grid, k=1, axes=axes)
    if transform_id == 2:
        return np.rot90(grid, k=2, axes=axes)
    if transform_id == 3:
        return np.rot90(grid, k=3, axes=axes)
    if transform_id == 4:
        return np.flip(grid, axis=-1)
    if transform_id == 5:
        return np.flip(grid, axis=-2)
    if transform_id == 6:
        return np.swapaxes(grid, -2, -1)
    if transform_id == 7:
        return np.flip(np.rot90(grid, k=1, axes=axes), axis=-1)
    raise ValueError(f"dihedral transform id must be 0..7, got {transform_id}")


def inverse_dihedral_transform(grid: np.ndarray, transform_id: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[transform_id])


def seeded_rng(seed: int, stream: int) -> np.random.Generator:
    """An independent random stream per purpose, so e.g. the test split's draws do not depend on
    how many numbers the train split consumed (changing --num-aug leaves the test split alone)."""
    return np.random.default_rng([seed, stream])


# ---------------------------------------------------------------------------------------------
# Command line


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class BuildTerminated(BaseException):
    """SIGTERM (what `timeout`, `kill` and job schedulers send) arrived during a build. A
    BaseException, like KeyboardInterrupt, so that only clean-up code catches it."""


def _raise_build_terminated(signum, frame) -> None:
    raise BuildTerminated


def _add_argument_list_replaces_default(parser, *names, **kwargs):
    """pydantic-settings adds list fields with argparse's `append`; `extend` with nargs="+" also
    accepts the original's space-separated form (`--dataset-dirs A B`). The parsed list replaces
    the field default; the original's argdantic appended to it (docs/datasets.md, "Commands")."""
    if kwargs.get("action") == "append":
        kwargs["action"] = "extend"
        kwargs["nargs"] = "+"
    return parser.add_argument(*names, **kwargs)


def parse_cli(config_cls: Type[ConfigT], argv: Sequence[str], prog: str) -> ConfigT:
    """Flags are the config fields in kebab case (`--source-repo`); `--help` lists them with defaults.

    A plain pydantic model (not BaseSettings) is used on purpose: environment variables never
    change a build.
    """
    from pydantic_settings import CliApp, CliSettingsSource  # only the command line needs it

    source = CliSettingsSource(
        config_cls,
        cli_prog_name=prog,
        cli_kebab_case=True,
        cli_implicit_flags=True,  # booleans are `--aug` / `--no-aug`, as with argdantic
        cli_parse_none_str="None",
        add_argument_method=_add_argument_list_replaces_default,
    )
    try:
        return CliApp.run(config_cls, cli_args=list(argv), cli_settings_source=source)
    except ValidationError as error:
        problems = "; ".join(
            f"--{'-'.join(str(part) for part in issue['loc']).replace('_', '-')}: {issue['msg']}"
            for issue in error.errors()
        )
        raise SystemExit(f"{prog}: error: {problems}") from None


def run_cli(config_cls: Type[ConfigT], build: Callable[[ConfigT], None], prog: str) -> None:
    """Entry point of a builder script: parse flags, build, and turn user errors into one line.

    SIGTERM and Ctrl-C stop the build like an error: its partial files are removed, the exit
    status is 128 + the signal number, as the shell reports a process killed by it.
    """
    config = parse_cli(config_cls, sys.argv[1:], prog)
    signal.signal(signal.SIGTERM, _raise_build_terminated)
    try:
        build(config)
    except (DatasetError, FileNotFoundError) as error:
        raise SystemExit(f"{prog}: error: {error}") from None
    except (BuildTerminated, KeyboardInterrupt) as stop:
        signum = signal.SIGTERM if isinstance(stop, BuildTerminated) else signal.SIGINT
        print(f"{prog}: stopped by {signum.name}", file=sys.stderr)
        raise SystemExit(128 + signum) from None


# ---------------------------------------------------------------------------------------------
# Sources


SOURCE_REPO_RULE = (
    "a value that starts with '.', '/' or '~', is not of the form owner/name, or whose first part exists "
    "here (data/x when ./data exists) names a local folder; any other owner/name is a Hugging Face dataset "
    "id and is downloaded"
)


def source_is_local(source_repo: str) -> bool:
    """Whether --source-repo names a local folder rather than a Hugging Face dataset id (SOURCE_REPO_RULE)."""
    if source_repo.startswith((".", "/", "~")) or "\\" in source_repo or source_repo.count("/") != 1:
        return True
    return os.path.lexists(source_repo.split("/")[0])


def resolve_source_csv(source_repo: str, split: str) -> str:
    """Path of `<split>.csv`: from a local folder when `source_repo` names one (SOURCE_REPO_RULE),
    else downloaded from the Hugging Face dataset `source_repo` (as the original)."""
    file_name = f"{split}.csv"
    if source_is_local(source_repo):
        folder = os.path.expanduser(source_repo)
        if not os.path.isdir(folder):
            problem = "is not a folder" if os.path.exists(folder) else "no such folder"
            raise FileNotFoundError(
                f"--source-repo {source_repo}: {problem}; pass a folder holding train.csv and test.csv, "
                f"or a Hugging Face dataset id such as sapientinc/sudoku-extreme"
            )
        path = os.path.join(folder, file_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: a local --source-repo folder must hold train.csv and test.csv "
                f"with header {','.join(PUZZLE_CSV_HEADER)}"
            )
        return path
    from huggingface_hub import hf_hub_download  # only needed (and slow to import) for downloads
    from huggingface_hub.utils import HFValidationError

    try:
        return hf_hub_download(source_repo, file_name, repo_type="dataset")
    except HFValidationError as error:  # the Hub's own id rules (characters, length), checked before any request
        raise DatasetError(
            f"--source-repo {source_repo!r} is not a valid Hugging Face dataset id ({error}); pass a folder that "
            f"exists holding train.csv and test.csv, or a dataset id such as sapientinc/sudoku-extreme"
        ) from error
    except OSError as error:  # network and Hub errors (not found, offline, gated) are all OSErrors
        raise DatasetError(
            f"could not download {file_name} of the Hugging Face dataset {source_repo} ({error}); no local folder "
            f"{source_repo} exists either. Check the network and the id, or pass --source-repo a local folder "
            f"holding train.csv and test.csv"
        ) from error


class PuzzleCSV(NamedTuple):
    """A validated puzzle CSV: grids as token ids (charset index + 1), one row per puzzle."""

    questions: np.ndarray  # uint8 [num_rows, cells]
    answers: np.ndarray  # uint8 [num_rows, cells]
    ratings: List[str]
    line_numbers: List[int]  # file line of each row, for error messages


def _tokens_from_strings(strings: List[str], charset: str, cells: int) -> np.ndarray:
    """Map each character to its charset index + 1; 0 marks a character outside the charset."""
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[np.frombuffer(charset.encode("ascii"), dtype=np.uint8)] = np.arange(1, len(charset) + 1, dtype=np.uint8)
    codes = np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8).reshape(len(strings), cells)
    return lookup[codes]


def _first_line_not_utf8(path: str) -> int:
    with open(path, "rb") as csv_file:
        for line_number, line in enumerate(csv_file, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return line_number
    return 0


def _csv_rows(path: str) -> Iterator[Tuple[int, List[str]]]:
    """(line number, fields) of every row of a UTF-8 CSV (a leading byte-order mark, as
    spreadsheet programs write, is skipped); a file that cannot be read or parsed is named."""
    try:
        csv_file = open(path, newline="", encoding="utf-8-sig")
    except OSError as error:
        raise DatasetError(f"cannot read {path} ({error.strerror}): pass a readable CSV file") from None
    with csv_file:
        reader = csv.reader(csv_file)
        try:
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError as error:
            raise DatasetError(
                f"{path} line {_first_line_not_utf8(path)}: not UTF-8 text ({error.reason}); save the file as UTF-8"
            ) from None
        except csv.Error as error:
            raise DatasetError(f"{path} line {reader.line_num}: not a valid CSV row ({error})") from None


def read_puzzle_csv(path: str, charset: str, cells: Optional[int]) -> PuzzleCSV:
    """Read and validate a `source,question,answer,rating` CSV.

    `cells` is the required grid length; None takes it from the first row (maze sizes vary),
    after which every grid must have that length. Errors name the file, line and field.
    """
    questions: List[str] = []
    answers: List[str] = []
    ratings: List[str] = []
    line_numbers: List[int] = []
    rows = _csv_rows(path)
    _, header = next(rows, (1, None))
    if header != PUZZLE_CSV_HEADER:
        raise DatasetError(f"{path} line 1: header is {header}, expected {','.join(PUZZLE_CSV_HEADER)}")
    for line_number, row in rows:
        where = f"{path} line {line_number}"
        if len(row) != len(PUZZLE_CSV_HEADER):
            raise DatasetError(f"{where}: {len(row)} columns, expected {len(PUZZLE_CSV_HEADER)} ({','.join(PUZZLE_CSV_HEADER)})")
        _, question, answer, rating = row
        if cells is None:
            cells = len(question)
        for field, grid in (("question", question), ("answer", answer)):
            if len(grid) != cells:
                raise DatasetError(f"{where}, field {field}: {len(grid)} characters, expected {cells}")
            if not grid.isascii():
                bad = next(char for char in grid if not char.isascii())
                raise DatasetError(f"{where}, field {field}: character {bad!r} is not one of {charset!r}")
        questions.append(question)
        answers.append(answer)
        ratings.append(rating)
        line_numbers.append(line_number)
    if not questions:
        raise DatasetError(f"{path}: no puzzle rows after the header")

    tokens = {}
    for field, strings in (("question", questions), ("answer", answers)):
        tokens[field] = _tokens_from_strings(strings, charset, cells)
        bad_rows, bad_cells = np.nonzero(tokens[field] == 0)
        if bad_rows.size:
            row, cell = bad_rows[0], bad_cells[0]
            raise DatasetError(
                f"{path} line {line_numbers[row]}, field {field}: character {strings[row][cell]!r} at position "
                f"{cell} is not one of {charset!r}"
            )
    return PuzzleCSV(tokens["question"], tokens["answer"], ratings, line_numbers)


def subsample_indices(rng: np.random.Generator, num_rows: int, subsample_size: Optional[int], source: str) -> np.ndarray:
    """`subsample_size` distinct rows drawn at random (all rows when it is None or equal), kept in
    source order so each output row traces back to its CSV line. `source` names the rows in errors."""
    if subsample_size is None or subsample_size == num_rows:
        return np.arange(num_rows)
    if subsample_size > num_rows:
        raise DatasetError(
            f"--subsample-size {subsample_size} is larger than the {num_rows} puzzles of {source}; pass at most "
            f"{num_rows}, or leave the flag out to keep them all"
        )
    return np.sort(rng.choice(num_rows, size=subsample_size, replace=False))


# ---------------------------------------------------------------------------------------------
# Output folder


def _is_dataset_file(split_entry: str) -> bool:
    stem, extension = os.path.splitext(split_entry)
    if split_entry == "dataset.json":
        return True
    set_name, separator, field = stem.partition("__")
    return extension == ".npy" and bool(separator) and bool(set_name) and field in SET_ARRAY_FIELDS


def _shorten(paths: List[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def why_not_replaceable(output_dir: str) -> Optional[str]:
    """Why an existing `output_dir` must not be replaced; None when it is empty or an earlier build.

    An earlier build is `identifiers.json` plus `train/` and `test/`, each with `dataset.json`
    and `<set>__<field>.npy` files only; anything else belongs to someone and is never deleted.
    """
    if os.path.islink(output_dir):
        return "it is a symbolic link; pass the folder it points to"
    if not os.path.isdir(output_dir):
        return "it is a file, not a folder"
    try:
        entries = sorted(os.listdir(output_dir))
    except OSError as error:
        return f"it cannot be read: {error.strerror}"
    if not entries:
        return None
    unexpected = []
    for entry in entries:
        path = os.path.join(output_dir, entry)
        if entry == "identifiers.json" and os.path.isfile(path):
            continue
        if entry in SPLITS and os.path.isdir(path):
            unexpected += [
                os.path.join(path, name)
                for name in sorted(os.listdir(path))
                if not (_is_dataset_file(name) and os.path.isfile(os.path.join(path, name)))
            ]
        else:
            unexpected.append(path)
    if unexpected:
        return f"it holds {_shorten(unexpected)}"
    required = ["identifiers.json"] + [os.path.join(split, "dataset.json") for split in SPLITS]
    missing = [os.path.join(output_dir, name) for name in required if not os.path.isfile(os.path.join(output_dir, name))]
    if missing:
        return f"it lacks {_shorten(missing)}"
    return None


def check_output_dir(output_dir: str) -> None:
    """Refuse an --output-dir that exists and is not an earlier dataset build (or empty)."""
    if not os.path.lexists(output_dir):
        return
    reason = why_not_replaceable(output_dir)
    if reason:
        raise DatasetError(
            f"--output-dir {output_dir} exists and is not an earlier dataset build ({reason}); "
            f"it is left untouched: choose a new --output-dir, or move it away"
        )


# A build writes into `<output-dir>.tmp-<host>-<pid>`; replacing an earlier build without an
# atomic swap first renames it to `<output-dir>.old-<host>-<pid>`. The name tells a later build
# whose folder it is. Earlier versions named them `<output-dir>.tmp-<pid>` (no host).
STAGING, SET_ASIDE = "tmp", "old"


def _build_folder_name(output_dir: str, kind: str) -> str:
    return f"{output_dir}.{kind}-{socket.gethostname()}-{os.getpid()}"


class BuildLeftover(NamedTuple):
    """A folder a build of some --output-dir created next to it and did not remove."""

    path: str
    kind: str  # STAGING (a build in progress or killed; after a swap, the build it replaced) or SET_ASIDE
    host: Optional[str]  # None: named by an earlier version, host unknown
    pid: int


def find_build_leftovers(output_dir: str) -> List[BuildLeftover]:
    output_dir = os.path.normpath(output_dir)
    parent, base = os.path.split(output_dir)
    pattern = re.compile(re.escape(base) + rf"\.({STAGING}|{SET_ASIDE})-(?:(.+)-)?([0-9]+)")
    try:
        names = sorted(os.listdir(parent or "."))
    except OSError:  # no parent folder yet: nothing was ever built there
        return []
    leftovers = []
    for name in names:
        match = pattern.fullmatch(name)
        path = os.path.join(parent, name)
        if match and os.path.isdir(path) and not os.path.islink(path):
            leftovers.append(BuildLeftover(path, match[1], match[2], int(match[3])))
    return leftovers


def clear_build_leftovers(output_dir: str) -> None:
    """Remove the folders that killed builds of `output_dir` left on this machine, put back an
    earlier build that a killed replace had set aside, and report (with the command to remove
    them) the folders whose builds may still be running: on another host, of a live process id,
    or named by an earlier version."""
    output_dir = os.path.normpath(output_dir)
    this_host = socket.gethostname()
    for leftover in find_build_leftovers(output_dir):
        owner = f"process {leftover.pid}" + (f" on host {leftover.host}" if leftover.host else "")
        if leftover.host == this_host and leftover.pid != os.getpid() and not process_is_running(leftover.pid):
            if leftover.kind == SET_ASIDE and not os.path.lexists(output_dir):
                os.rename(leftover.path, output_dir)
                print(f"restored {output_dir} from {leftover.path}, where a build ({owner}) killed while replacing it had moved it")
            else:
                shutil.rmtree(leftover.path)
                print(f"removed {leftover.path}, left by a build ({owner}) that is no longer running")
            continue
        if leftover.host is None:
            why = "an earlier version of this script named it without its host, so whether its build still runs is unknown"
        elif leftover.host != this_host:
            why = "this machine cannot tell whether that build still runs"
        else:
            why = "that process is running (another build of the same --output-dir, or a program that reused the id)"
        print(
            f"note: {leftover.path} belongs to a build of {output_dir} ({owner}): {why}; if no such build is running, "
            f"remove it: rm -rf {shlex.quote(leftover.path)}",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT received in the block act when it ends, so that a replace is never cut
    between its steps (SIGKILL cannot be deferred: the next build recovers from it)."""
    received = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received:
            signal.raise_signal(signum)


def _sync_tree(folder: str) -> None:
    for root, _, _ in os.walk(folder):
        sync_folder(root)


def _replace(staging_dir: str, output_dir: str) -> None:
    """Put the finished build in place of `output_dir`: a kill at any point leaves either the
    earlier build or the new one under the name (or, without an atomic swap, the earlier one
    set aside, which the next build puts back)."""
    if not os.path.lexists(output_dir):
        os.rename(staging_dir, output_dir)
        retired_dir = None
    elif exchange_paths(staging_dir, output_dir):
        retired_dir = staging_dir  # now holds the earlier build
    else:
        retired_dir = _build_folder_name(output_dir, SET_ASIDE)
        os.rename(output_dir, retired_dir)
        try:
            os.rename(staging_dir, output_dir)
        except BaseException:
            os.rename(retired_dir, output_dir)
            raise
    sync_folder(os.path.dirname(output_dir) or ".")
    if retired_dir is not None:
        shutil.rmtree(retired_dir)


class _NoRoomForFile(Exception):
    """A write of the build found the file system full; staged_output_dir turns it into a DatasetError
    that also counts what the build wrote before. `needed_bytes` is the size of the file being written."""

    def __init__(self, path: str, needed_bytes: Optional[int]):
        super().__init__(f"no space left on the device writing {path}")
        self.path = path
        self.needed_bytes = needed_bytes


@contextlib.contextmanager
def _naming_a_full_disk(path: str, needed_bytes: int) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        if error.errno in OUT_OF_SPACE_ERRNOS:
            raise _NoRoomForFile(path, needed_bytes) from None
        raise


def _bytes_in(folder: str, excluding: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(folder)
        for name in names
        if os.path.join(root, name) != excluding
    )


def _disk_full_message(error: _NoRoomForFile, written_bytes: int, staging_dir: str, output_dir: str) -> str:
    """Written after the partial build is removed: the free space then is what the user has."""
    free = shutil.disk_usage(os.path.dirname(output_dir) or ".").free
    relative = os.path.relpath(error.path, staging_dir)
    what = f"{relative} needs {error.needed_bytes:,} bytes" if error.needed_bytes else f"writing {relative} failed"
    if written_bytes:
        what += f" after {written_bytes:,} bytes of other files (the dataset needs at least {written_bytes + (error.needed_bytes or 0):,})"
    return (
        f"no space left on the device for --output-dir {output_dir}: {what}, and {free:,} bytes are free there. "
        f"The partial build {staging_dir} was removed and {output_dir} left as it was: free space, or choose an "
        f"--output-dir on another disk, and rerun"
    )


@contextlib.contextmanager
def staged_output_dir(output_dir: str) -> Iterator[str]:
    """Yield a fresh sibling folder to write the dataset into; on success it replaces `output_dir`
    (_replace), on any failure, Ctrl-C or SIGTERM it is removed. An interrupted build therefore
    never leaves a folder that looks complete, and an earlier build stays intact until the new one
    is. Leftovers of killed builds are cleared first (clear_build_leftovers).
    """
    output_dir = os.path.normpath(output_dir)
    clear_build_leftovers(output_dir)
    check_output_dir(output_dir)
    staging_dir = _build_folder_name(output_dir, STAGING)
    try:
        os.makedirs(staging_dir)
    except OSError as error:
        raise DatasetError(
            f"cannot create {staging_dir}, where --output-dir {output_dir} is built ({error.strerror}): choose an "
            f"--output-dir inside a folder you can write to"
        ) from None
    try:
        yield staging_dir
        _sync_tree(staging_dir)
        check_output_dir(output_dir)  # someone may have written there while we built
    except BaseException as error:
        if isinstance(error, OSError) and error.errno in OUT_OF_SPACE_ERRNOS:
            error = _NoRoomForFile(error.filename or staging_dir, None)
        written_bytes = _bytes_in(staging_dir, excluding=error.path) if isinstance(error, _NoRoomForFile) else 0
        shutil.rmtree(staging_dir, ignore_errors=True)
        if isinstance(error, _NoRoomForFile):
            raise DatasetError(_disk_full_message(error, written_bytes, staging_dir, output_dir)) from None
        if not isinstance(error, Exception):  # Ctrl-C, SIGTERM
            print(f"removed the partial build {staging_dir}; {output_dir} is left as it was", file=sys.stderr)
        raise
    with _signals_deferred():
        _replace(staging_dir, output_dir)


# ---------------------------------------------------------------------------------------------
# Writing a dataset


def write_json(path: str, value) -> None:
    text = json.dumps(value)
    with _naming_a_full_disk(path, len(text.encode())):
        with open(path, "w") as json_file:
            json_file.write(text)
            json_file.flush()
            os.fsync(json_file.fileno())


def write_split_metadata(dataset_dir: str, split: str, metadata: PuzzleDatasetMetadata) -> None:
    os.makedirs(os.path.join(dataset_dir, split), exist_ok=True)
    write_json(os.path.join(dataset_dir, split, "dataset.json"), metadata.model_dump())


def set_array_path(dataset_dir: str, split: str, set_name: str, field: str) -> str:
    return os.path.join(dataset_dir, split, f"{set_name}__{field}.npy")


def _reserve_disk_space(file, size: int) -> None:
    """Allocate a file's blocks now, so a full disk stops the build before the work of filling it."""
    if not hasattr(os, "posix_fallocate"):  # e.g. macOS: the writes themselves report a full disk
        return
    try:
        os.posix_fallocate(file.fileno(), 0, size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it
            raise


class ArrayFileWriter:
    """Writes one `.npy` file of known shape front to back, in blocks of rows, with ordinary
    writes: a full disk is an error naming the file (writes through a memory map would kill the
    process with SIGBUS instead). The file's size is reserved on opening."""

    def __init__(self, path: str, shape: Sequence[int], dtype):
        self.path = path
        self.shape = tuple(int(size) for size in shape)
        self.dtype = np.dtype(dtype)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        )
        self.size = header.tell() + math.prod(self.shape) * self.dtype.itemsize
        self.rows_written = 0
        with _naming_a_full_disk(path, self.size):
            self.file = open(path, "wb")
            try:
                _reserve_disk_space(self.file, self.size)
                self.file.write(header.getvalue())
            except BaseException:
                self.file.close()
                raise

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows_written + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path}: rows of shape {rows.shape} do not fit {self.shape} after {self.rows_written} rows")
        with _naming_a_full_disk(self.path, self.size):
            self.file.write(rows.data)
        self.rows_written += len(rows)

    def close(self) -> None:
        if self.rows_written != self.shape[0]:
            raise ValueError(f"{self.path}: {self.rows_written} of {self.shape[0]} rows written")
        with _naming_a_full_disk(self.path, self.size):
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def __enter__(self) -> "ArrayFileWriter":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.close()
        else:
            with contextlib.suppress(OSError):  # the error that stopped the writing is the one to report
                self.file.close()


def open_set_array(dataset_dir: str, split: str, set_name: str, field: str, shape, dtype) -> ArrayFileWriter:
    """A writer of one `.npy` of known shape, so large splits are written in blocks."""
    os.makedirs(os.path.join(dataset_dir, split), exist_ok=True)
    return ArrayFileWriter(set_array_path(dataset_dir, split, set_name, field), shape, dtype)


INT32_RANGE = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)


def save_set_arrays(dataset_dir: str, split: str, set_name: str, arrays: Dict[str, np.ndarray]) -> None:
    """Save the given arrays of one set; identifiers and CSR offsets as int32, like the original.
    (Large `inputs`/`labels` may instead be written in blocks through `open_set_array`.)"""
    for field, array in arrays.items():
        array = np.asarray(array)
        if field not in ("inputs", "labels"):
            if array.size and (array.min() < INT32_RANGE[0] or array.max() > INT32_RANGE[1]):
                raise DatasetError(
                    f"{split}/{set_name}__{field}.npy would hold {array.max()}, beyond the int32 of the dataset format: "
                    f"build fewer examples (lower --num-aug or --subsample-size)"
                )
            array = array.astype(np.int32)
        with open_set_array(dataset_dir, split, set_name, field, array.shape, array.dtype) as writer:
            writer.append(array)


# ---------------------------------------------------------------------------------------------
# Fingerprint


# Of each array file, this many evenly spaced blocks are hashed (all of a smaller file).
FINGERPRINT_BLOCKS = 256
FINGERPRINT_BLOCK_BYTES = 4096


def dataset_files(dataset_dir: str) -> List[str]:
    """Paths (relative, sorted) of a dataset's files: identifiers.json, and of each split its
    dataset.json and `<set>__<field>.npy` arrays."""
    files = ["identifiers.json"] if os.path.isfile(os.path.join(dataset_dir, "identifiers.json")) else []
    for split in SPLITS:
        split_dir = os.path.join(dataset_dir, split)
        if os.path.isdir(split_dir):
            files += [os.path.join(split, name) for name in sorted(os.listdir(split_dir)) if _is_dataset_file(name)]
    return files


def dataset_fingerprint(dataset_dir: str) -> str:
    """A 16-hex-digit hash of a dataset's content that changes when it is rebuilt with other content
    (another source, flags or seed) and stays when it is rebuilt identically.

    Cheap for any size: the JSON files are read whole; of each array file its size and
    FINGERPRINT_BLOCKS evenly spaced blocks of FINGERPRINT_BLOCK_BYTES. A change confined to bytes
    between the sampled blocks of a large array goes unnoticed: it tells builds apart, it does not
    detect damage.
    """
    files = dataset_files(dataset_dir)
    if not files:
        raise FileNotFoundError(f"{dataset_dir} holds no dataset (identifiers.json, train/, test/): build one with dataset/build_*_dataset.py")
    digest = hashlib.sha256()
    for relative in files:
        path = os.path.join(dataset_dir, relative)
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            digest.update(f"{relative}\0{size}\0".encode())
            if relative.endswith(".json") or size <= FINGERPRINT_BLOCKS * FINGERPRINT_BLOCK_BYTES:
                digest.update(file.read())
                continue
            for offset in np.linspace(0, size - FINGERPRINT_BLOCK_BYTES, FINGERPRINT_BLOCKS, dtype=np.int64):
                file.seek(int(offset))
                digest.update(file.read(FINGERPRINT_BLOCK_BYTES))
    return digest.hexdigest()[:16]


def datasets_fingerprint(dataset_dirs: Sequence[str]) -> str:
    """The fingerprint of dataset folders read as one (data_paths): one folder's own fingerprint, so
    it does not change when a run names its folder as data_paths=[X] instead of data_path=X; of
    several folders, a hash of theirs in order."""
    fingerprints = [dataset_fingerprint(dataset_dir) for dataset_dir in dataset_dirs]
    if len(fingerprints) == 1:
        return fingerprints[0]
    return hashlib.sha256(" ".join(fingerprints).encode()).hexdigest()[:16]
