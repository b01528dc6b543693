"""Reading a built dataset (docs/datasets.md, "Format" and "Loader"): validation on open, seeded training batches, test pass.

Every rank builds the same global batch from the same seeded RNG and keeps its own slice
`[rank * local : (rank + 1) * local]`, so the slices of all ranks together are the 1-rank batch.

Several dataset folders (TRM's `data_paths`) are read as one dataset, as TRM does: their metadata
must agree, each global batch comes from one folder, the folders of each set follow one another
(set-major) with one RNG counter, and the puzzle embedding table has room for all their identifiers.
Unlike TRM, folder k's identifiers are shifted past those of folders 0..k-1, so puzzles of
different folders never share an embedding row.
"""

import copy
import json
import math
import os
import shlex
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pydantic
import torch

from dataset.common import SET_ARRAY_FIELDS, SET_ASIDE, DatasetError, PuzzleDatasetMetadata, find_build_leftovers
from models.losses import IGNORE_LABEL_ID  # the loader turns the dataset's `ignore_label_id` into it

# The token range check reads inputs and labels in blocks of about this many bytes.
RANGE_CHECK_BLOCK_BYTES = 16 << 20


# What every dataset a model reads must share, and what folders read as one must also share.
FORMAT_FIELDS = ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id")
SHARED_METADATA_FIELDS = FORMAT_FIELDS + ("sets",)


class PuzzleDatasetConfig(pydantic.BaseModel):
    seed: int
    dataset_paths: List[str] = pydantic.Field(min_length=1)  # folders read as one dataset, in this order
    global_batch_size: int
    test_set_mode: bool
    epochs_per_iter: int  # epochs per call of __iter__ in training mode
    rank: int
    num_replicas: int

    @pydantic.model_validator(mode="before")
    @classmethod
    def _one_dataset_path(cls, values):
        """HRM's spelling: dataset_path=X is dataset_paths=[X]."""
        if isinstance(values, dict) and "dataset_path" in values:
            values = dict(values)
            path = values.pop("dataset_path")
            if values.setdefault("dataset_paths", [path]) != [path]:
                raise ValueError(f"dataset_path={path!r} and dataset_paths={values['dataset_paths']} disagree: give one of them")
            values["dataset_paths"] = [path]
        return values


def _inconsistent(path: str, problem: str) -> DatasetError:
    return DatasetError(f"{path}: {problem}; the dataset is inconsistent, rebuild it with dataset/build_*_dataset.py")


def _damaged(path: str, problem: str) -> DatasetError:
    return DatasetError(f"{path}: {problem}; the file is damaged, rebuild the dataset with dataset/build_*_dataset.py")


def _open_array(path: str) -> np.memmap:
    """Memory-map one `.npy` after checking its header, its size against the header, and its dtype
    (integers), so a damaged file is named instead of failing inside numpy or mid-run."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the dataset is incomplete; rebuild it with dataset/build_*_dataset.py")
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version[0]}.{version[1]}, expected 1.0 or 2.0")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(file)
            data_offset = file.tell()
            file_size = os.fstat(file.fileno()).st_size
    except OSError as error:
        raise DatasetError(f"cannot read {path} ({error.strerror})") from None
    except (ValueError, TypeError, SyntaxError) as error:  # empty, cut inside the header, or not a .npy file
        raise _damaged(path, f"not a readable .npy array ({error})") from None
    if dtype.kind not in "iu":
        raise _damaged(path, f"holds {dtype} values, expected integers")
    expected_size = data_offset + math.prod(shape) * dtype.itemsize
    if file_size != expected_size:
        cut = "truncated: " if file_size < expected_size else ""
        raise _damaged(path, f"{cut}{file_size:,} bytes, but its header describes {expected_size:,} (a {dtype} array of shape {shape})")
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=shape, order="F" if fortran_order else "C")


def _check_values(path: str, array: np.ndarray, high: int, exception: Optional[int], what: str) -> None:
    """Every value of a memory-mapped [rows, columns] array in 0..high (or equal to `exception`).
    One pass: each block is read once and its max (and, if signed, min) taken while it is in cache."""
    block_rows = max(1, RANGE_CHECK_BLOCK_BYTES // max(1, array.shape[1] * array.itemsize))
    unsigned = array.dtype.kind == "u"
    for start in range(0, len(array), block_rows):
        block = np.asarray(array[start : start + block_rows])
        if block.max() <= high and (unsigned or block.min() >= 0):
            continue
        outside = (block < 0) | (block > high)
        if exception is not None:
            outside &= block != exception
        if outside.any():
            row, column = np.argwhere(outside)[0]
            raise _inconsistent(path, f"value {block[row, column]} at example {start + row}, position {column}, is outside 0..{high} ({what})")


class _SetArrays:
    """The five arrays of one set; inputs/labels memory-mapped, the small index arrays in memory."""

    def __init__(self, split_dir: str, set_name: str):
        self.paths = {field: os.path.join(split_dir, f"{set_name}__{field}.npy") for field in SET_ARRAY_FIELDS}
        arrays = {field: _open_array(path) for field, path in self.paths.items()}
        self.inputs = arrays["inputs"]
        self.labels = arrays["labels"]
        self.puzzle_identifiers = np.array(arrays["puzzle_identifiers"])
        self.puzzle_indices = np.array(arrays["puzzle_indices"])
        self.group_indices = np.array(arrays["group_indices"])

    @property
    def num_examples(self) -> int:
        return len(self.inputs)

    @property
    def num_groups(self) -> int:
        return len(self.group_indices) - 1


class _SplitFolder:
    """One split of one dataset folder: its dataset.json and the arrays of each set, checked on open."""

    def __init__(self, dataset_path: str, split: str, config: PuzzleDatasetConfig):
        self.dataset_path = dataset_path
        self.split_dir = os.path.join(dataset_path, split)
        self.metadata_path = os.path.join(self.split_dir, "dataset.json")
        self.metadata = self._load_metadata()
        self.sets = {set_name: _SetArrays(self.split_dir, set_name) for set_name in self.metadata.sets}
        self.num_puzzles = self._check_arrays()
        self.check_batches_fit(config)
        self._check_token_values()

    def _load_metadata(self) -> PuzzleDatasetMetadata:
        path = self.metadata_path
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: a dataset folder (data_paths) must be one built by dataset/build_*_dataset.py "
                f"(holding {os.path.basename(self.split_dir)}/dataset.json)" + self._set_aside_hint()
            )
        try:
            with open(path, "rb") as metadata_file:
                content = json.loads(metadata_file.read())
        except OSError as error:
            raise DatasetError(f"cannot read {path} ({error.strerror})") from None
        except ValueError as error:  # not UTF-8 text, or not JSON
            raise _damaged(path, f"not a JSON file ({error})") from None
        try:
            return PuzzleDatasetMetadata.model_validate(content)
        except pydantic.ValidationError as error:
            problems = "; ".join(
                (f"field {'.'.join(str(part) for part in issue['loc'])}: " if issue["loc"] else "") + issue["msg"]
                for issue in error.errors()
            )
            raise _damaged(path, f"not a valid dataset.json ({problems})") from None

    def _set_aside_hint(self) -> str:
        """Where a killed replace (without an atomic swap) left the dataset that was under this name."""
        dataset_path = os.path.normpath(self.dataset_path)
        if os.path.lexists(dataset_path):
            return ""
        set_aside = [leftover.path for leftover in find_build_leftovers(dataset_path) if leftover.kind == SET_ASIDE]
        if not set_aside:
            return ""
        return (
            f". {set_aside[-1]} holds the dataset that a build killed while replacing it set aside: rerun that build "
            f"(it puts it back first), or: mv {shlex.quote(set_aside[-1])} {shlex.quote(dataset_path)}"
        )

    def _check_arrays(self) -> int:
        """Check dataset.json against the arrays' shapes, counts, offsets and identifier ranges;
        return the number of puzzles."""
        metadata, metadata_path = self.metadata, self.metadata_path
        if metadata.pad_id >= metadata.vocab_size:
            raise _inconsistent(metadata_path, f"pad_id={metadata.pad_id} is not below vocab_size={metadata.vocab_size}")
        if metadata.blank_identifier_id >= metadata.num_puzzle_identifiers:
            raise _inconsistent(
                metadata_path, f"blank_identifier_id={metadata.blank_identifier_id} is not below num_puzzle_identifiers={metadata.num_puzzle_identifiers}"
            )

        total_groups = total_puzzles = total_examples = 0
        for arrays in self.sets.values():
            for field in ("inputs", "labels"):
                array = getattr(arrays, field)
                if array.ndim != 2 or array.shape[1] != metadata.seq_len:
                    raise _inconsistent(arrays.paths[field], f"shape {array.shape} disagrees with seq_len={metadata.seq_len} in {metadata_path}")
            if arrays.labels.shape != arrays.inputs.shape:
                raise _inconsistent(arrays.paths["labels"], f"shape {arrays.labels.shape} differs from inputs {arrays.inputs.shape}")
            _check_offsets(arrays.paths["puzzle_indices"], arrays.puzzle_indices, arrays.num_examples, "examples")
            num_puzzles = len(arrays.puzzle_indices) - 1
            _check_offsets(arrays.paths["group_indices"], arrays.group_indices, num_puzzles, "puzzles")
            identifiers = arrays.puzzle_identifiers
            if identifiers.shape != (num_puzzles,):
                raise _inconsistent(arrays.paths["puzzle_identifiers"], f"shape {identifiers.shape}, expected ({num_puzzles},): one per puzzle")
            if identifiers.size and (identifiers.min() < 0 or identifiers.max() >= metadata.num_puzzle_identifiers):
                raise _inconsistent(
                    arrays.paths["puzzle_identifiers"],
                    f"identifiers range {identifiers.min()}..{identifiers.max()}, outside 0..{metadata.num_puzzle_identifiers - 1} "
                    f"(num_puzzle_identifiers in {metadata_path})",
                )
            total_groups += arrays.num_groups
            total_puzzles += num_puzzles
            total_examples += arrays.num_examples

        if total_groups != metadata.total_groups:
            raise _inconsistent(metadata_path, f"total_groups={metadata.total_groups} but the group_indices arrays hold {total_groups} groups")
        mean_examples = total_examples / total_puzzles if total_puzzles else 0.0
        if not np.isclose(mean_examples, metadata.mean_puzzle_examples, rtol=1e-6, atol=1e-9):
            raise _inconsistent(metadata_path, f"mean_puzzle_examples={metadata.mean_puzzle_examples} but the arrays hold {mean_examples}")
        return total_puzzles

    def check_batches_fit(self, config: PuzzleDatasetConfig) -> None:
        """Training drops incomplete batches: refuse a batch size no iteration can ever fill.
        A test pass pads its last batch instead, so any size fits it."""
        if config.test_set_mode:
            return
        global_batch_size, epochs_per_iter = config.global_batch_size, config.epochs_per_iter
        for set_name, arrays in self.sets.items():
            puzzle_sizes = np.diff(arrays.puzzle_indices)
            largest_per_group = np.maximum.reduceat(puzzle_sizes, arrays.group_indices[:-1]) if arrays.num_groups else puzzle_sizes
            most_examples = int(largest_per_group.sum()) * epochs_per_iter
            if most_examples < global_batch_size:
                raise DatasetError(
                    f"global_batch_size={global_batch_size} is larger than the at most {most_examples} examples "
                    f"that one iteration ({epochs_per_iter} epochs) of set '{set_name}' in {self.split_dir} "
                    f"yields, so training would get no batch: lower global_batch_size or raise epochs_per_iter"
                )

    def _check_token_values(self) -> None:
        """Token ranges: the only pass over the large memory-mapped arrays, reading each once."""
        metadata = self.metadata
        vocabulary = f"vocab_size={metadata.vocab_size} in {self.metadata_path}"
        for arrays in self.sets.values():
            _check_values(arrays.paths["inputs"], arrays.inputs, metadata.vocab_size - 1, None, vocabulary)
            _check_values(arrays.paths["labels"], arrays.labels, metadata.vocab_size - 1, metadata.ignore_label_id,
                          f"{vocabulary}, and not ignore_label_id={metadata.ignore_label_id}")


def _check_offsets(path: str, offsets: np.ndarray, total: int, what: str) -> None:
    """CSR offsets: int, start at 0, end at `total`, every entry (puzzle or group) non-empty."""
    if offsets.ndim != 1 or offsets.size < 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise _inconsistent(path, f"expected a 1-D integer array of offsets, got {offsets.dtype} {offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != total:
        raise _inconsistent(path, f"offsets run {offsets[0]}..{offsets[-1]}, expected 0..{total} ({what})")
    if np.any(np.diff(offsets) <= 0):
        raise _inconsistent(path, f"offsets must be strictly increasing (every entry holds at least one of its {what})")


def check_same_format(first_path: str, first: PuzzleDatasetMetadata, other_path: str, other: PuzzleDatasetMetadata,
                      fields=SHARED_METADATA_FIELDS, why: str = "folders read as one dataset") -> None:
    """Refuse two datasets (metadata read from the named files) that differ in one of `fields`."""
    for field in fields:
        value, other_value = getattr(first, field), getattr(other, field)
        if value != other_value:
            raise DatasetError(
                f"{first_path} has {field}={value} but {other_path} has {field}={other_value}: {why} must agree on "
                f"{', '.join(fields)}; choose datasets built by the same builder"
            )


def merged_metadata(folders: List[_SplitFolder]) -> PuzzleDatasetMetadata:
    """The metadata of folders read as one: counts and identifiers added up, mean_puzzle_examples
    weighted by each folder's puzzle count (as TRM weighs it by total_puzzles). One folder's is its own."""
    first = folders[0]
    total_puzzles = sum(folder.num_puzzles for folder in folders)
    if len(folders) == 1:
        return first.metadata.model_copy(update={"total_puzzles": total_puzzles})
    for folder in folders[1:]:
        check_same_format(first.metadata_path, first.metadata, folder.metadata_path, folder.metadata)
    weighted_examples = sum(folder.metadata.mean_puzzle_examples * folder.num_puzzles for folder in folders)
    return first.metadata.model_copy(update=dict(
        num_puzzle_identifiers=sum(folder.metadata.num_puzzle_identifiers for folder in folders),
        total_groups=sum(folder.metadata.total_groups for folder in folders),
        mean_puzzle_examples=weighted_examples / total_puzzles if total_puzzles else 0.0,
        total_puzzles=total_puzzles,
    ))


class PuzzleDataset(torch.utils.data.IterableDataset):
    """Yields `(set_name, batch, effective_global_batch_size)`; batch holds int32 tensors
    `inputs` and `labels` [local_batch, seq_len] and `puzzle_identifiers` [local_batch]."""

    def __init__(self, config: PuzzleDatasetConfig, split: str = "train"):
        super().__init__()
        self.config = config
        self.split = split
        self._use_batch_size()
        self._folders = [_SplitFolder(path, split, config) for path in config.dataset_paths]
        self.metadata = merged_metadata(self._folders)
        # Folder k's identifiers are shifted by the identifiers of the folders before it.
        self.identifier_offsets = [int(offset) for offset in np.cumsum([0] + [folder.metadata.num_puzzle_identifiers for folder in self._folders[:-1]])]
        # Batches are drawn from one (set, folder) part at a time, in this order.
        self._parts = [(set_name, index) for set_name in self.metadata.sets for index in range(len(self._folders))]
        # Training position: iterations completed, and the index of the next batch in the current one.
        self._iteration = 0
        self._batch_index = 0

    def _use_batch_size(self) -> None:
        """Check config's batch size against the world size and take this rank's share of it."""
        config = self.config
        if config.num_replicas < 1 or not 0 <= config.rank < config.num_replicas:
            raise DatasetError(f"rank {config.rank} is not in 0..{config.num_replicas - 1} (num_replicas={config.num_replicas})")
        if config.global_batch_size < 1 or config.global_batch_size % config.num_replicas != 0:
            raise DatasetError(
                f"global_batch_size={config.global_batch_size} must be a positive multiple of the world size "
                f"{config.num_replicas}: choose e.g. global_batch_size="
                f"{max(1, round(config.global_batch_size / config.num_replicas)) * config.num_replicas}"
            )
        if config.epochs_per_iter < 1:
            raise DatasetError(f"epochs_per_iter={config.epochs_per_iter} must be at least 1")
        self.local_batch_size = config.global_batch_size // config.num_replicas

    def with_global_batch_size(self, global_batch_size: int) -> "PuzzleDataset":
        """The same opened split in batches of another size, its files not read and checked again."""
        other = copy.copy(self)
        other.config = self.config.model_copy(update={"global_batch_size": global_batch_size})
        other._use_batch_size()
        for folder in other._folders:
            folder.check_batches_fit(other.config)
        return other

    def metadata_path(self) -> str:
        """The first folder's dataset.json, for messages that name the dataset."""
        return self._folders[0].metadata_path

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, int]:
        """Position of the next training batch: restoring it replays exactly the batches that follow."""
        return {"iteration": self._iteration, "batch_index": self._batch_index}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self._iteration = int(state["iteration"])
        self._batch_index = int(state["batch_index"])

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Tuple[str, Dict[str, torch.Tensor], int]]:
        if self.config.test_set_mode:
            return self._iter_test()
        return self._iter_train()

    def _part_arrays(self, part_index: int) -> Tuple[str, _SetArrays, int]:
        """Set name, arrays and identifier offset of one (set, folder) part."""
        set_name, folder_index = self._parts[part_index]
        return set_name, self._folders[folder_index].sets[set_name], self.identifier_offsets[folder_index]

    def _collate(self, arrays: _SetArrays, example_indices: np.ndarray, puzzle_indices: np.ndarray, identifier_offset: int) -> Dict[str, torch.Tensor]:
        """Gather one local batch as int32 tensors; ignored labels become -100; pad a short batch."""
        inputs = arrays.inputs[example_indices].astype(np.int32)
        labels = arrays.labels[example_indices].astype(np.int32)
        identifiers = arrays.puzzle_identifiers[puzzle_indices].astype(np.int32) + identifier_offset
        if self.metadata.ignore_label_id is not None:
            labels[labels == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        pad = self.local_batch_size - len(example_indices)
        if pad:
            inputs = np.pad(inputs, ((0, pad), (0, 0)), constant_values=self.metadata.pad_id)
            labels = np.pad(labels, ((0, pad), (0, 0)), constant_values=IGNORE_LABEL_ID)
            identifiers = np.pad(identifiers, (0, pad), constant_values=self.metadata.blank_identifier_id)
        return {
            "inputs": torch.from_numpy(inputs),
            "labels": torch.from_numpy(labels),
            "puzzle_identifiers": torch.from_numpy(identifiers),
        }

    def num_examples(self) -> int:
        """Examples in the split, over all sets: what a test pass (test_set_mode) yields."""
        return sum(self._part_arrays(index)[1].num_examples for index in range(len(self._parts)))

    def num_test_batches(self) -> int:
        """How many batches a test pass (test_set_mode) yields."""
        return sum(-(-self._part_arrays(index)[1].num_examples // self.config.global_batch_size) for index in range(len(self._parts)))

    def _local_slice(self) -> slice:
        return slice(self.config.rank * self.local_batch_size, (self.config.rank + 1) * self.local_batch_size)

    def _iter_test(self):
        """Every example once, in order; the last global batch of each part is padded, its true size reported."""
        global_batch_size = self.config.global_batch_size
        for part_index in range(len(self._parts)):
            set_name, arrays, identifier_offset = self._part_arrays(part_index)
            for start in range(0, arrays.num_examples, global_batch_size):
                stop = min(start + global_batch_size, arrays.num_examples)
                local = self._local_slice()
                example_indices = np.arange(start, stop)[local]
                puzzle_indices = np.searchsorted(arrays.puzzle_indices, example_indices, side="right") - 1
                yield set_name, self._collate(arrays, example_indices, puzzle_indices, identifier_offset), stop - start

    def _train_batches(self, part_index: int, arrays: _SetArrays) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Global batches (example indices, puzzle indices) of one part for the current iteration.

        As the original: the RNG is Philox seeded with seed + a counter that starts at 1 and
        advances once per part per iteration; group order is one permutation per epoch; each group
        contributes one random puzzle and up to the remaining room of its examples, drawn without
        replacement; the last incomplete batch is dropped.
        """
        counter = self._iteration * len(self._parts) + part_index + 1
        rng = np.random.Generator(np.random.Philox(seed=self.config.seed + counter))
        group_order = np.concatenate([rng.permutation(arrays.num_groups) for _ in range(self.config.epochs_per_iter)])
        global_batch_size = self.config.global_batch_size
        position = 0
        while position < len(group_order):
            example_parts, puzzle_parts = [], []
            size = 0
            while position < len(group_order) and size < global_batch_size:
                group = group_order[position]
                position += 1
                puzzle = rng.integers(arrays.group_indices[group], arrays.group_indices[group + 1])
                first_example = arrays.puzzle_indices[puzzle]
                puzzle_size = int(arrays.puzzle_indices[puzzle + 1] - first_example)
                take = min(puzzle_size, global_batch_size - size)
                # A one-example puzzle needs no draw: this keeps Sudoku/Maze batches identical to
                # the original loader's, whose example draw used an unseeded global RNG.
                chosen = np.zeros(1, dtype=np.int64) if puzzle_size == 1 else rng.choice(puzzle_size, take, replace=False)
                example_parts.append(first_example + chosen)
                puzzle_parts.append(np.full(take, puzzle, dtype=np.int64))
                size += take
            if size < global_batch_size:
                return
            yield np.concatenate(example_parts), np.concatenate(puzzle_parts)

    def _iter_train(self):
        """One iteration (`epochs_per_iter` epochs of every part), resuming at the saved batch index."""
        iteration = self._iteration
        batch_index = 0
        last_part = len(self._parts) - 1
        for part_index in range(len(self._parts)):
            set_name, arrays, identifier_offset = self._part_arrays(part_index)
            batches = self._train_batches(part_index, arrays)
            upcoming = next(batches, None)
            while upcoming is not None:
                example_indices, puzzle_indices = upcoming
                # Look one batch ahead so the state after the last batch already points at the next iteration.
                upcoming = next(batches, None)
                if batch_index >= self._batch_index:
                    local = self._local_slice()
                    batch = self._collate(arrays, example_indices[local], puzzle_indices[local], identifier_offset)
                    if upcoming is None and part_index == last_part:
                        self._iteration, self._batch_index = iteration + 1, 0
                    else:
                        self._batch_index = batch_index + 1
                    yield set_name, batch, len(example_indices)
                batch_index += 1
        if self._iteration == iteration:  # ended without yielding a last batch (e.g. resumed at the end)
            self._iteration, self._batch_index = iteration + 1, 0


def check_test_data_fits(train: PuzzleDataset, test: PuzzleDataset) -> None:
    """The evaluated folders (data_paths_test) must fit the model built for the trained ones."""
    check_same_format(train.metadata_path(), train.metadata, test.metadata_path(), test.metadata,
                      fields=FORMAT_FIELDS, why="the trained and the evaluated datasets (data_paths, data_paths_test)")
    if test.metadata.num_puzzle_identifiers > train.metadata.num_puzzle_identifiers:
        raise DatasetError(
            f"the evaluated datasets (data_paths_test, {test.metadata_path()}) hold {test.metadata.num_puzzle_identifiers} puzzle "
            f"identifiers, more than the {train.metadata.num_puzzle_identifiers} of the trained ones (data_paths, "
            f"{train.metadata_path()}), whose puzzle embeddings the model learns: evaluate datasets built with the same identifiers"
        )
