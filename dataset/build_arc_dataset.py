"""Build an ARC dataset (30x30 canvas, seq_len 900, vocab 12: PAD 0, end-of-grid 1, colour c as c + 2).

Examples (HRM's input, folders of task files):
    python dataset/build_arc_dataset.py                      # ARC-AGI-1 + ConceptARC -> data/arc-aug-1000
    python dataset/build_arc_dataset.py --dataset-dirs dataset/raw-data/ARC-AGI-2/data --output-dir data/arc-2-aug-1000

Examples (TRM's input, Kaggle-style files {prefix}_{subset}_challenges.json and _solutions.json,
which `python -m dataset.make_kaggle_combined` writes from dataset/raw-data):
    python -m dataset.build_arc_dataset --input-file-prefix kaggle/combined/arc-agi --output-dir data/arc1concept-aug-1000 \
        --subsets training evaluation concept --test-set-name evaluation

A task's "train" examples go to the train split; its "test" examples go to the test split when
the task sits in a folder named `evaluation` (or, from Kaggle-style files, belongs to the subset
--test-set-name or --test-set-name2), otherwise to the train split too.
Every task becomes one puzzle per destination split, plus up to `--num-aug` augmented copies
(dihedral transform + permutation of colours 1..9) in the same group. Augmented puzzles are
named `<task>_t<transform id>_<colour map digits>`, e.g. `007bbfb7_t3_0513249786`: colour c
became digit c of the map, then dihedral transform 3 was applied.
"""

import contextlib
import glob
import json
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from pydantic import BaseModel, Field
from tqdm import tqdm

if __package__ in (None, ""):
    # Run as `python dataset/build_arc_dataset.py`: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.common import (  # noqa: E402
    DatasetError,
    PuzzleDatasetMetadata,
    SPLITS,
    check_output_dir,
    dihedral_transform,
    open_set_array,
    run_cli,
    save_set_arrays,
    seeded_rng,
    staged_output_dir,
    write_json,
    write_split_metadata,
)

ARC_MAX_GRID_SIZE = 30
SEQ_LEN = ARC_MAX_GRID_SIZE * ARC_MAX_GRID_SIZE
END_OF_GRID_TOKEN = 1
COLOUR_TOKEN_OFFSET = 2  # colour c is token c + 2
NUM_COLOURS = 10
NUM_DIHEDRAL_TRANSFORMS = 8
AUGMENT_RETRIES_FACTOR = 5  # up to this x num_aug candidate augmentations per task, as the original
# A folder of this name holds tasks whose "test" examples form the test split.
EVALUATION_FOLDER = "evaluation"

# Random streams (see seeded_rng): augmentation plans, then translations.
AUGMENT_STREAM, TRANSLATE_STREAM = 0, 1


class ArcBuildConfig(BaseModel):
    """Build an ARC dataset folder (train/ and test/ with numpy arrays) from ARC task JSON files."""

    dataset_dirs: List[str] = Field(
        ["dataset/raw-data/ARC-AGI/data", "dataset/raw-data/ConceptARC/corpus"],
        description="folders searched recursively for task .json files; tasks under a folder named "
        "'evaluation' send their test examples to the test split. Given flags replace this list "
        "(--dataset-dirs A B, or --dataset-dirs A --dataset-dirs B)",
    )
    input_file_prefix: Optional[str] = Field(
        None,
        description="read Kaggle-style {prefix}_{subset}_challenges.json and _solutions.json files (TRM's input) "
        "instead of --dataset-dirs, e.g. kaggle/combined/arc-agi; python -m dataset.make_kaggle_combined writes them",
    )
    subsets: Optional[List[str]] = Field(None, description="with --input-file-prefix (required): the subsets to read, in order, e.g. training evaluation concept")
    test_set_name: Optional[str] = Field(
        None, description="with --input-file-prefix (required): the subset whose tasks' test examples form the test split, e.g. evaluation"
    )
    test_set_name2: str = Field("evaluation2", description="with --input-file-prefix: a second such subset (when among --subsets)")
    output_dir: str = Field("data/arc-aug-1000", description="dataset folder to create (an earlier build there is replaced)")
    seed: int = Field(42, ge=0, description="random seed: the same command and seed give byte-identical output")
    num_aug: int = Field(1000, ge=0, description="augmented copies per task (fewer when a task has fewer distinct ones)")


@dataclass
class ArcTask:
    name: str
    path: str
    # Destination split -> (input grid, output grid) pairs, colours 0..9 as uint8.
    examples: Dict[str, List[Tuple[np.ndarray, np.ndarray]]]

    def all_pairs(self) -> List[Tuple[np.ndarray, np.ndarray]]:
        return [pair for split in SPLITS for pair in self.examples[split]]


@dataclass
class Augmentations:
    """Accepted augmentations of one task; index 0 is the identity (the task itself)."""

    transform_ids: np.ndarray  # int [num_puzzles]
    colour_maps: np.ndarray  # uint8 [num_puzzles, 10]: colour c becomes colour_maps[k, c]

    def puzzle_names(self, task_name: str) -> List[str]:
        names = [task_name]
        for transform_id, colour_map in zip(self.transform_ids[1:], self.colour_maps[1:]):
            names.append(f"{task_name}_t{transform_id}_{''.join(str(colour) for colour in colour_map)}")
        return names


# ---------------------------------------------------------------------------------------------
# Reading tasks


def find_task_files(dataset_dir: str) -> List[str]:
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"--dataset-dirs {dataset_dir} is not a folder; pass folders that hold ARC task .json files")
    paths = sorted(glob.glob(os.path.join(dataset_dir, "**", "*.json"), recursive=True))
    if not paths:
        raise DatasetError(f"--dataset-dirs {dataset_dir} holds no .json task files (searched recursively); pass the folder that holds them")
    return paths


def destination_of_test_examples(path: str, dataset_dir: str) -> str:
    """"test" for a task inside a folder named `evaluation` (the dataset dir itself included)."""
    base = os.path.dirname(os.path.normpath(os.path.abspath(dataset_dir)))
    folders = os.path.relpath(os.path.dirname(os.path.abspath(path)), base).split(os.sep)
    return "test" if EVALUATION_FOLDER in folders else "train"


def grid_from_json(value, where: str) -> np.ndarray:
    """Validate one ARC grid: a rectangular list of rows, 1..30 x 1..30, integers 0..9."""
    rectangular = (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(row, list) for row in value)
        and len({len(row) for row in value}) == 1
        and len(value[0]) > 0
    )
    if not rectangular:
        raise DatasetError(f"{where}: not a grid (a non-empty list of rows of equal, non-zero length)")
    if not all(isinstance(cell, int) and not isinstance(cell, bool) for row in value for cell in row):
        raise DatasetError(f"{where}: cells must be integer colours 0-9")
    grid = np.array(value)
    rows, cols = grid.shape
    if rows > ARC_MAX_GRID_SIZE or cols > ARC_MAX_GRID_SIZE:
        raise DatasetError(f"{where}: grid is {rows}x{cols}, larger than {ARC_MAX_GRID_SIZE}x{ARC_MAX_GRID_SIZE}")
    if grid.min() < 0 or grid.max() > NUM_COLOURS - 1:
        bad = grid[(grid < 0) | (grid > NUM_COLOURS - 1)][0]
        raise DatasetError(f"{where}: colour {bad} outside 0-9")
    return grid.astype(np.uint8)


def read_json(path: str, fix: str):
    """The content of a JSON file; a file that cannot be read or parsed is named (with `fix`)."""
    try:
        with open(path, "rb") as json_file:
            return json.loads(json_file.read())  # bytes: UTF-8 with or without a byte-order mark, or UTF-16/32
    except OSError as error:
        raise DatasetError(f"cannot read {path} ({error.strerror}): {fix}") from None
    except ValueError as error:  # not JSON, or not text in a Unicode encoding
        raise DatasetError(f"{path}: not valid JSON ({error})") from None


def task_from_json(content, where: str, default_name: str, destinations: Dict[str, str], path: str) -> ArcTask:
    """Validate one task ({"train": [...], "test": [...]}, pairs of input and output grids, an
    optional "name"); its examples of each kind go to the split `destinations[kind]`."""
    if not isinstance(content, dict) or not set(content) <= {"train", "test", "name"}:
        raise DatasetError(f"{where}: an ARC task is an object with keys 'train' and 'test' (and optionally 'name')")
    name = content.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{where}: 'name' must be a non-empty string")

    examples: Dict[str, List[Tuple[np.ndarray, np.ndarray]]] = {split: [] for split in SPLITS}
    for kind in ("train", "test"):
        pairs = content.get(kind)
        if not isinstance(pairs, list) or not pairs:
            raise DatasetError(f"{where}: '{kind}' must be a non-empty list of examples")
        for index, pair in enumerate(pairs):
            if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
                raise DatasetError(f"{where}: {kind} example {index} needs 'input' and 'output' grids")
            examples[destinations[kind]].append(
                tuple(grid_from_json(pair[side], f"{where}: {kind} example {index} '{side}'") for side in ("input", "output"))
            )
    return ArcTask(name, path, examples)


def load_task(path: str, dataset_dir: str) -> ArcTask:
    content = read_json(path, "pass readable task files")
    destinations = {"train": "train", "test": destination_of_test_examples(path, dataset_dir)}
    return task_from_json(content, path, os.path.splitext(os.path.basename(path))[0], destinations, path)


def check_unique_names(tasks: List[ArcTask], flag: str) -> None:
    seen: Dict[str, str] = {}
    for task in tasks:
        if task.name in seen:
            raise DatasetError(
                f"task name {task.name!r} appears in both {seen[task.name]} and {task.path}; puzzle names must be "
                f"unique: drop one of the overlapping {flag}"
            )
        seen[task.name] = task.path


def load_tasks(dataset_dirs: List[str]) -> List[ArcTask]:
    tasks: List[ArcTask] = []
    for dataset_dir in dataset_dirs:
        paths = find_task_files(dataset_dir)
        tasks += [load_task(path, dataset_dir) for path in paths]
        print(f"[{dataset_dir}] tasks: {len(paths)}")
    check_unique_names(tasks, "--dataset-dirs")
    return tasks


def kaggle_file(prefix: str, subset: str, kind: str) -> str:
    """`kind` is "challenges" or "solutions"."""
    return f"{prefix}_{subset}_{kind}.json"


# TRM's builder gives test inputs without a solutions file this output, so their predictions can still be made.
PLACEHOLDER_OUTPUT = [[0]]


def load_kaggle_subset(prefix: str, subset: str, test_destination: str) -> List[ArcTask]:
    """The tasks of `{prefix}_{subset}_challenges.json` ({task id: {"train": [pairs], "test": [{"input"}]}})
    with the test outputs of `_solutions.json` ({task id: [output grid per test input]})."""
    challenges_path = kaggle_file(prefix, subset, "challenges")
    if not os.path.isfile(challenges_path):
        raise FileNotFoundError(
            f"{challenges_path} not found: --input-file-prefix {prefix} reads {prefix}_<subset>_challenges.json and "
            f"_solutions.json for each of --subsets; write them from the shipped tasks with "
            f"python -m dataset.make_kaggle_combined --output-prefix {prefix}"
        )
    challenges = read_json(challenges_path, "pass readable files")
    if not isinstance(challenges, dict) or not challenges:
        raise DatasetError(f"{challenges_path}: expected a non-empty object mapping task ids to tasks ({{\"train\": [...], \"test\": [...]}})")
    solutions_path = kaggle_file(prefix, subset, "solutions")
    solutions = None
    if os.path.isfile(solutions_path):
        solutions = read_json(solutions_path, "pass readable files")
        if not isinstance(solutions, dict):
            raise DatasetError(f"{solutions_path}: expected an object mapping task ids to lists of output grids")
    elif test_destination == "train":
        raise FileNotFoundError(f"{solutions_path} not found: the test examples of subset {subset} are trained on and need their outputs")
    else:
        print(f"note: {solutions_path} not found: the test split's labels of subset {subset} are the placeholder "
              f"{PLACEHOLDER_OUTPUT}; predictions work, scores do not")

    tasks = []
    for task_id, content in challenges.items():
        where = f"{challenges_path}, task {task_id}"
        test = content.get("test") if isinstance(content, dict) else None
        if isinstance(test, list):
            if solutions is None:
                outputs = [PLACEHOLDER_OUTPUT] * len(test)
            else:
                outputs = solutions.get(task_id)
                if not isinstance(outputs, list) or len(outputs) != len(test):
                    found = f"{len(outputs)} output grids" if isinstance(outputs, list) else "no list of output grids"
                    raise DatasetError(f"{solutions_path}: task {task_id} has {found} for its {len(test)} test inputs in {challenges_path}")
                for index, output in enumerate(outputs):
                    grid_from_json(output, f"{solutions_path}: task {task_id} output {index}")
            content = {**content, "test": [{**example, "output": output} if isinstance(example, dict) else example
                                           for example, output in zip(test, outputs)]}
        tasks.append(task_from_json(content, where, task_id, {"train": "train", "test": test_destination}, challenges_path))
    print(f"[{challenges_path}] tasks: {len(tasks)}")
    return tasks


def load_kaggle_tasks(config: ArcBuildConfig) -> List[ArcTask]:
    """TRM's input: every subset in order, each task's test examples in the test split for the
    test-set subsets and in the train split for the others."""
    test_sets = (config.test_set_name, config.test_set_name2)
    tasks = [task for subset in config.subsets
             for task in load_kaggle_subset(config.input_file_prefix, subset, "test" if subset in test_sets else "train")]
    check_unique_names(tasks, "--subsets")
    return tasks


def check_input_flags(config: ArcBuildConfig) -> None:
    """One input: folders (--dataset-dirs) or Kaggle-style files (--input-file-prefix with --subsets and --test-set-name)."""
    if config.input_file_prefix is None:
        if config.subsets is not None or config.test_set_name is not None:
            raise DatasetError("--subsets and --test-set-name select Kaggle-style input files: add --input-file-prefix "
                               "(e.g. kaggle/combined/arc-agi), or drop them to read --dataset-dirs")
        return
    if config.dataset_dirs != ArcBuildConfig.model_fields["dataset_dirs"].default:
        raise DatasetError("give either --dataset-dirs (folders of task files) or --input-file-prefix (Kaggle-style files), not both")
    if not config.subsets or config.test_set_name is None:
        raise DatasetError("--input-file-prefix needs --subsets and --test-set-name, e.g. --subsets training evaluation concept --test-set-name evaluation")
    if len(set(config.subsets)) != len(config.subsets):
        raise DatasetError(f"--subsets {' '.join(config.subsets)}: name each subset once")
    if not {config.test_set_name, config.test_set_name2} & set(config.subsets):
        raise DatasetError(
            f"--test-set-name {config.test_set_name} is not one of --subsets {' '.join(config.subsets)}, so the test split "
            f"would be empty: name the subset to evaluate on (e.g. --test-set-name evaluation)"
        )


# ---------------------------------------------------------------------------------------------
# Augmentation plans and duplicate rejection


# Fixed random weights for the duplicate-rejection hashes: [hash, input/output, canvas position].
_HASH_WEIGHTS = np.random.default_rng(20250621).integers(0, 2**63, size=(2, 2, SEQ_LEN), dtype=np.uint64) * 2 + 1


def _colour_position_sums(task: ArcTask) -> np.ndarray:
    """uint64 [8 transforms, num_pairs, 2 hashes, 10 colours]: for each transformed pair, the sum of
    position weights of the cells holding each colour (inputs and outputs weighted differently).

    The hash of a pair under (transform t, colour map m) is sum_c (m[c] + 1) * sums[t, pair, :, c]:
    a linear hash of the grid laid on the 30x30 canvas (0 outside, colour + 1 inside), so grids
    of different shapes or colours hash apart, and all candidates hash in one vectorised step.
    """
    pairs = task.all_pairs()
    sums = np.zeros((NUM_DIHEDRAL_TRANSFORMS, len(pairs), 2, NUM_COLOURS), dtype=np.uint64)
    for transform_id in range(NUM_DIHEDRAL_TRANSFORMS):
        for pair_index, pair in enumerate(pairs):
            for side, grid in enumerate(pair):
                image = dihedral_transform(grid, transform_id)
                rows, cols = np.indices(image.shape)
                weights = _HASH_WEIGHTS[:, side, (rows * ARC_MAX_GRID_SIZE + cols).ravel()]
                for colour in np.unique(image):
                    sums[transform_id, pair_index, :, colour] += weights[:, image.ravel() == colour].sum(axis=1)
    return sums


def augmentation_keys(sums: np.ndarray, transform_ids: np.ndarray, colour_maps: np.ndarray) -> List[bytes]:
    """One key per candidate: its pairs' hashes sorted, so two candidates get the same key exactly
    when they produce the same set of (input, output) pairs (the original's duplicate test)."""
    factors = (colour_maps.astype(np.uint64) + 1)[:, None, None, :]
    hashes = (sums[transform_ids] * factors).sum(axis=-1, dtype=np.uint64)  # [candidates, pairs, 2]
    order = np.argsort(hashes[:, :, 0], axis=1, kind="stable")
    hashes = np.take_along_axis(hashes, order[:, :, None], axis=1)
    return [row.tobytes() for row in hashes]


def random_colour_maps(rng: np.random.Generator, count: int) -> np.ndarray:
    """Permutations of colours 1..9; colour 0 (black background) stays 0."""
    maps = np.zeros((count, NUM_COLOURS), dtype=np.uint8)
    maps[:, 1:] = rng.permuted(np.tile(np.arange(1, NUM_COLOURS, dtype=np.uint8), (count, 1)), axis=1)
    return maps


def plan_augmentations(rng: np.random.Generator, task: ArcTask, num_aug: int) -> Augmentations:
    """The identity plus up to `num_aug` distinct random augmentations, from at most
    AUGMENT_RETRIES_FACTOR x num_aug candidates (drawn in blocks; each is accepted in order
    unless it duplicates an earlier puzzle of the group)."""
    transform_ids = [0]
    colour_maps = [np.arange(NUM_COLOURS, dtype=np.uint8)]
    if num_aug > 0:
        sums = _colour_position_sums(task)
        seen = set(augmentation_keys(sums, np.array(transform_ids), np.stack(colour_maps)))
        candidates_left = AUGMENT_RETRIES_FACTOR * num_aug
        while len(transform_ids) < num_aug + 1 and candidates_left > 0:
            block = min(candidates_left, num_aug)
            candidates_left -= block
            block_transforms = rng.integers(0, NUM_DIHEDRAL_TRANSFORMS, size=block)
            block_maps = random_colour_maps(rng, block)
            for index, key in enumerate(augmentation_keys(sums, block_transforms, block_maps)):
                if key in seen:
                    continue
                seen.add(key)
                transform_ids.append(int(block_transforms[index]))
                colour_maps.append(block_maps[index])
                if len(transform_ids) == num_aug + 1:
                    break
    return Augmentations(np.array(transform_ids), np.stack(colour_maps))


# ---------------------------------------------------------------------------------------------
# Encoding grids on the canvas


def place_on_canvas(grids: np.ndarray, top: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Lay grids ([n, rows, cols] colours) on 30x30 canvases at the given offsets, as tokens, and
    mark the cells just below the last row and just right of the last column (within the grid's
    column / row span) with the end-of-grid token. Returns uint8 [n, 900]."""
    count, rows, cols = grids.shape
    canvases = np.zeros((count, ARC_MAX_GRID_SIZE, ARC_MAX_GRID_SIZE), dtype=np.uint8)
    canvas_index = np.arange(count)
    row_index = top[:, None] + np.arange(rows)
    col_index = left[:, None] + np.arange(cols)
    canvases[canvas_index[:, None, None], row_index[:, :, None], col_index[:, None, :]] = grids + COLOUR_TOKEN_OFFSET

    below = top + rows < ARC_MAX_GRID_SIZE
    canvases[canvas_index[below, None], (top + rows)[below, None], col_index[below]] = END_OF_GRID_TOKEN
    right = left + cols < ARC_MAX_GRID_SIZE
    canvases[canvas_index[right, None], row_index[right], (left + cols)[right, None]] = END_OF_GRID_TOKEN
    return canvases.reshape(count, SEQ_LEN)


def transformed_shape(grid: np.ndarray, transform_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rows and columns of `grid` after each transform (rot90, rot270, transpose and anti-transpose swap them)."""
    swaps = np.isin(transform_ids, (1, 3, 6, 7))
    rows, cols = grid.shape
    return np.where(swaps, cols, rows), np.where(swaps, rows, cols)


def translation_offsets(rng: np.random.Generator, pairs, transform_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Random top-left offsets [num_puzzles, num_pairs] shared by each pair's input and output, so
    both fit on the canvas; one random pair of every puzzle stays at the origin."""
    num_puzzles = len(transform_ids)
    top = np.zeros((num_puzzles, len(pairs)), dtype=np.int64)
    left = np.zeros_like(top)
    for pair_index, (grid_in, grid_out) in enumerate(pairs):
        rows_in, cols_in = transformed_shape(grid_in, transform_ids)
        rows_out, cols_out = transformed_shape(grid_out, transform_ids)
        top[:, pair_index] = rng.integers(0, ARC_MAX_GRID_SIZE - np.maximum(rows_in, rows_out) + 1)
        left[:, pair_index] = rng.integers(0, ARC_MAX_GRID_SIZE - np.maximum(cols_in, cols_out) + 1)
    at_origin = rng.integers(0, len(pairs), size=num_puzzles)
    top[np.arange(num_puzzles), at_origin] = 0
    left[np.arange(num_puzzles), at_origin] = 0
    return top, left


def encode_puzzles(pairs, augmentations: Augmentations, top: np.ndarray, left: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Inputs and labels uint8 [num_puzzles * num_pairs, 900], puzzle-major: puzzle k's pairs in order."""
    num_puzzles, num_pairs = len(augmentations.transform_ids), len(pairs)
    encoded = np.zeros((2, num_puzzles, num_pairs, SEQ_LEN), dtype=np.uint8)
    for transform_id in np.unique(augmentations.transform_ids):
        puzzles = np.nonzero(augmentations.transform_ids == transform_id)[0]
        colour_maps = augmentations.colour_maps[puzzles]
        for pair_index, pair in enumerate(pairs):
            for side, grid in enumerate(pair):
                images = colour_maps[:, dihedral_transform(grid, transform_id)]  # [puzzles, rows, cols]
                encoded[side, puzzles, pair_index] = place_on_canvas(images, top[puzzles, pair_index], left[puzzles, pair_index])
    return encoded[0].reshape(-1, SEQ_LEN), encoded[1].reshape(-1, SEQ_LEN)


# ---------------------------------------------------------------------------------------------
# Writing


def assign_identifiers(tasks: List[ArcTask], plans: List[Augmentations]) -> Tuple[List[str], List[List[int]]]:
    """Identifier 0 is `<blank>`; then every puzzle name in order of appearance. A task's puzzles
    in train and test share their names, hence their identifiers (and puzzle embeddings)."""
    identifiers = ["<blank>"]
    puzzle_identifiers = []
    for task, plan in zip(tasks, plans):
        first = len(identifiers)
        names = plan.puzzle_names(task.name)
        identifiers.extend(names)
        puzzle_identifiers.append(list(range(first, first + len(names))))
    return identifiers, puzzle_identifiers


def write_arc_split(dataset_dir, split, tasks, plans, puzzle_identifiers, num_identifiers, rng) -> None:
    """One group per task that has examples in this split: its puzzle and augmented copies."""
    members = [index for index, task in enumerate(tasks) if task.examples[split]]
    pairs_per_puzzle = [len(tasks[index].examples[split]) for index in members]
    puzzles_per_group = [len(plans[index].transform_ids) for index in members]
    puzzle_sizes = np.repeat(pairs_per_puzzle, puzzles_per_group).astype(np.int64)
    num_examples = int(puzzle_sizes.sum())

    with contextlib.ExitStack() as files:
        arrays = {
            field: files.enter_context(open_set_array(dataset_dir, split, "all", field, (num_examples, SEQ_LEN), np.uint8))
            for field in ("inputs", "labels")
        }
        for index in tqdm(members, desc=f"arc {split}", unit="task"):
            pairs, plan = tasks[index].examples[split], plans[index]
            if split == "train":
                top, left = translation_offsets(rng, pairs, plan.transform_ids)
            else:  # test examples stay at the origin
                top = left = np.zeros((len(plan.transform_ids), len(pairs)), dtype=np.int64)
            inputs, labels = encode_puzzles(pairs, plan, top, left)
            arrays["inputs"].append(inputs)
            arrays["labels"].append(labels)

    save_set_arrays(
        dataset_dir,
        split,
        "all",
        {
            "puzzle_identifiers": [identifier for index in members for identifier in puzzle_identifiers[index]],
            "puzzle_indices": np.concatenate([[0], np.cumsum(puzzle_sizes)]),
            "group_indices": np.concatenate([[0], np.cumsum(puzzles_per_group, dtype=np.int64)]),
        },
    )
    num_puzzles = len(puzzle_sizes)
    write_split_metadata(
        dataset_dir,
        split,
        PuzzleDatasetMetadata(
            pad_id=0,
            ignore_label_id=0,
            blank_identifier_id=0,
            vocab_size=NUM_COLOURS + COLOUR_TOKEN_OFFSET,  # PAD + end-of-grid + 10 colours
            seq_len=SEQ_LEN,
            num_puzzle_identifiers=num_identifiers,
            total_groups=len(members),
            mean_puzzle_examples=num_examples / num_puzzles if num_puzzles else 0.0,
            total_puzzles=num_puzzles,
            sets=["all"],
        ),
    )
    if not members:
        print(f"note: no task sits in a folder named '{EVALUATION_FOLDER}', so the {split} split is empty")


def build_arc_dataset(config: ArcBuildConfig) -> None:
    check_input_flags(config)
    check_output_dir(config.output_dir)  # fail before the work, not after
    # Read, validate and plan everything before writing anything.
    tasks = load_kaggle_tasks(config) if config.input_file_prefix is not None else load_tasks(config.dataset_dirs)
    augment_rng = seeded_rng(config.seed, AUGMENT_STREAM)
    plans = [plan_augmentations(augment_rng, task, config.num_aug) for task in tqdm(tasks, desc="augmenting", unit="task")]
    identifiers, puzzle_identifiers = assign_identifiers(tasks, plans)
    print(f"total puzzle identifiers (including <blank>): {len(identifiers)}")

    translate_rng = seeded_rng(config.seed, TRANSLATE_STREAM)
    with staged_output_dir(config.output_dir) as dataset_dir:
        for split in SPLITS:
            write_arc_split(dataset_dir, split, tasks, plans, puzzle_identifiers, len(identifiers), translate_rng)
        write_json(os.path.join(dataset_dir, "identifiers.json"), identifiers)
    print(f"wrote {config.output_dir}")


if __name__ == "__main__":
    run_cli(ArcBuildConfig, build_arc_dataset, prog="build_arc_dataset.py")
