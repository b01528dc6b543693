"""The dataset format shared by every builder and the loader.

Metadata model, dihedral transforms, and the helpers every builder needs: the command line,
finding and validating source CSVs, seeded random streams, and writing a dataset folder
atomically. Nothing here imports torch: builders run without it.
"""

import contextlib
import csv
import json
import os
import shutil
import sys
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Type, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

# Inverse of each dihedral transform id below: applying DIHEDRAL_INVERSE[t] after t is the identity.
DIHEDRAL_INVERSE = [0, 3, 2, 1, 4, 5, 6, 7]

# The five arrays every set of a split holds, saved as `<set>__<field>.npy`.
SET_ARRAY_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")

# Header of the puzzle CSVs published with the original (Sudoku-Extreme, Maze-30x30-Hard).
PUZZLE_CSV_HEADER = ["source", "question", "answer", "rating"]

SPLITS = ("train", "test")


class DatasetError(ValueError):
    """Bad user input (source data, flags, output folder); the message says what and how to fix it."""


class PuzzleDatasetMetadata(BaseModel):
    """Contents of `<split>/dataset.json`; field names are the original's."""

    pad_id: int
    ignore_label_id: Optional[int]
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    sets: List[str]


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
    """Entry point of a builder script: parse flags, build, and turn user errors into one line."""
    config = parse_cli(config_cls, sys.argv[1:], prog)
    try:
        build(config)
    except (DatasetError, FileNotFoundError) as error:
        raise SystemExit(f"{prog}: error: {error}") from None


# ---------------------------------------------------------------------------------------------
# Sources


def _looks_like_hf_dataset_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith(".")


def resolve_source_csv(source_repo: str, split: str) -> str:
    """Path of `<split>.csv`: from a local directory when `source_repo` is one, else downloaded
    from the Hugging Face dataset `source_repo` (as the original)."""
    file_name = f"{split}.csv"
    if os.path.isdir(source_repo):
        path = os.path.join(source_repo, file_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: a local --source-repo folder must hold train.csv and test.csv "
                f"with header {','.join(PUZZLE_CSV_HEADER)}"
            )
        return path
    if not _looks_like_hf_dataset_id(source_repo):
        raise FileNotFoundError(
            f"--source-repo {source_repo!r} is neither an existing folder nor a Hugging Face dataset id "
            f"of the form 'owner/name'; pass a folder holding train.csv and test.csv, or an id such as "
            f"sapientinc/sudoku-extreme"
        )
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
            f"could not download {file_name} of the Hugging Face dataset {source_repo} ({error}); check the "
            f"network and the id, or pass --source-repo a local folder holding train.csv and test.csv"
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


def read_puzzle_csv(path: str, charset: str, cells: Optional[int]) -> PuzzleCSV:
    """Read and validate a `source,question,answer,rating` CSV.

    `cells` is the required grid length; None takes it from the first row (maze sizes vary),
    after which every grid must have that length. Errors name the file, line and field.
    """
    questions: List[str] = []
    answers: List[str] = []
    ratings: List[str] = []
    line_numbers: List[int] = []
    with open(path, newline="", encoding="utf-8") as csv_file:
        reader = csv.reader(csv_file)
        header = next(reader, None)
        if header != PUZZLE_CSV_HEADER:
            raise DatasetError(f"{path} line 1: header is {header}, expected {','.join(PUZZLE_CSV_HEADER)}")
        for row in reader:
            where = f"{path} line {reader.line_num}"
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
            line_numbers.append(reader.line_num)
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


def subsample_indices(rng: np.random.Generator, num_rows: int, subsample_size: Optional[int]) -> np.ndarray:
    """`subsample_size` distinct rows drawn at random (all rows when it is None or not smaller),
    kept in source order so each output row traces back to its CSV line."""
    if subsample_size is None or subsample_size >= num_rows:
        return np.arange(num_rows)
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
    if not os.path.isdir(output_dir):
        return "it is not a folder"
    entries = sorted(os.listdir(output_dir))
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
            f"it is left untouched: choose a new --output-dir, or move that folder away"
        )


@contextlib.contextmanager
def staged_output_dir(output_dir: str) -> Iterator[str]:
    """Yield a fresh sibling folder to write the dataset into; on success it replaces `output_dir`
    by rename, on any failure (or Ctrl-C) it is removed. An interrupted build therefore never
    leaves a folder that looks complete, and an earlier build stays intact until the new one is.
    """
    output_dir = os.path.normpath(output_dir)
    check_output_dir(output_dir)
    staging_dir = f"{output_dir}.tmp-{os.getpid()}"
    if os.path.lexists(staging_dir):
        raise DatasetError(f"{staging_dir} already exists (left by an interrupted build?); remove it and rerun")
    os.makedirs(staging_dir)
    try:
        yield staging_dir
        check_output_dir(output_dir)  # someone may have written there while we built
        if os.path.lexists(output_dir):
            retired_dir = f"{output_dir}.old-{os.getpid()}"
            os.rename(output_dir, retired_dir)
            os.rename(staging_dir, output_dir)
            shutil.rmtree(retired_dir)
        else:
            os.rename(staging_dir, output_dir)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise


def write_json(path: str, value) -> None:
    with open(path, "w") as json_file:
        json.dump(value, json_file)


def write_split_metadata(dataset_dir: str, split: str, metadata: PuzzleDatasetMetadata) -> None:
    os.makedirs(os.path.join(dataset_dir, split), exist_ok=True)
    write_json(os.path.join(dataset_dir, split, "dataset.json"), metadata.model_dump())


def set_array_path(dataset_dir: str, split: str, set_name: str, field: str) -> str:
    return os.path.join(dataset_dir, split, f"{set_name}__{field}.npy")


def open_set_array(dataset_dir: str, split: str, set_name: str, field: str, shape, dtype) -> np.memmap:
    """A writable memory-mapped `.npy` of known shape, so large splits are written in chunks."""
    os.makedirs(os.path.join(dataset_dir, split), exist_ok=True)
    return np.lib.format.open_memmap(set_array_path(dataset_dir, split, set_name, field), mode="w+", dtype=dtype, shape=shape)


def save_set_arrays(dataset_dir: str, split: str, set_name: str, arrays: Dict[str, np.ndarray]) -> None:
    """Save the given arrays of one set; identifiers and CSR offsets as int32, like the original.
    (Large `inputs`/`labels` may instead be written in chunks through `open_set_array`.)"""
    os.makedirs(os.path.join(dataset_dir, split), exist_ok=True)
    for field, array in arrays.items():
        if field not in ("inputs", "labels"):
            array = np.asarray(array, dtype=np.int32)
        np.save(set_array_path(dataset_dir, split, set_name, field), array)
