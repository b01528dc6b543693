"""ARC scoring of evaluate.py's predictions: crop, un-augment, vote, pass@K, submission.

Command line (`python -m utils.arc_score` is the same command):

    python -m evaluators.arc CHECKPOINT_DIR_OR_PRED_FILES... --dataset data/arc-aug-1000 \
        [--output results.json] [--submission submission.json]

Python:

    preds = load_predictions(["checkpoints/.../run"])
    results = score(preds, "data/arc-aug-1000")
    print(results.summary())
    write_submission(results, "submission.json")

During training, the `ARC` class scores each evaluation's batches as they come (TRM's evaluator
interface); evaluators/arc_plot.py draws a task's candidates for arc_eval.ipynb.

Every test example of every augmented copy of a task is one vote for the grid it predicts, once
that grid is cropped at its end-of-grid markers and mapped back through the inverse colour
permutation and inverse dihedral transform named in the puzzle's name. Per test input the
distinct grids are ranked by (votes, mean sigmoid(q_halt)); a task is solved at K when the true
output of each of its test inputs is among its top K grids.
"""

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from dataset.common import PuzzleDatasetMetadata, inverse_dihedral_transform
from utils.checkpoint import load_tensor_file
from utils.files import DiskFullError, write_text_atomically

PASS_AT_K = (1, 2, 5, 10, 100, 1000)

GRID_SIZE = 30
# Token ids of the ARC builder: 0 PAD, 1 end-of-grid marker, colour c stored as c + 2.
COLOUR_OFFSET = 2
NUM_COLOURS = 10
BLANK_IDENTIFIER = 0

# `<task>_t<dihedral id>_<colour permutation, 10 digits>`; the digit at position c is the colour
# that original colour c became.
AUGMENTED_NAME = re.compile(r"^(?P<task>.+)_t(?P<dihedral>[0-7])_(?P<perm>[0-9]{10})$")
PREDICTION_FILE = re.compile(r"^step_(?P<step>\d+)_all_preds\.(?P<rank>\d+)$")
# What scoring reads of each evaluated row: its inputs and puzzle identifier, the predicted tokens, q_halt.
REQUIRED_OUTPUTS = ("inputs", "puzzle_identifiers", "preds", "q_halt_logits")


# ----------------------------------------------------------------------------------------------
# Grids: crop and un-augment


def crop_grids(tokens: np.ndarray) -> List[Optional[np.ndarray]]:
    """Crop each row of `tokens` ([N, 900] token ids) to its grid of colours 0..9.

    The grid is the largest-area top-left rectangle holding colour tokens only (the original's
    rule: it ends where the end-of-grid marker or padding starts). A row whose top-left cell is
    not a colour has no grid and gives None. A full canvas of colours is a 30x30 grid, which
    ARC allows.
    """
    canvas = np.asarray(tokens).reshape(-1, GRID_SIZE, GRID_SIZE)
    is_colour = (canvas >= COLOUR_OFFSET) & (canvas < COLOUR_OFFSET + NUM_COLOURS)
    # Length of the colour run at the start of each row, then the width usable by the rectangle
    # made of rows 0..r (a running minimum over rows).
    starts_with_gap = ~is_colour
    run = np.where(starts_with_gap.any(-1), starts_with_gap.argmax(-1), GRID_SIZE)
    width = np.minimum.accumulate(run, axis=1)
    area = width * np.arange(1, GRID_SIZE + 1)
    best_rows = area.argmax(-1)  # first maximum, as the original's strict ">" scan
    best_widths = width[np.arange(len(canvas)), best_rows]
    return [(grid[: r + 1, :w] - COLOUR_OFFSET).astype(np.uint8) if w > 0 else None
            for grid, r, w in zip(canvas, best_rows.tolist(), best_widths.tolist())]


@dataclass(frozen=True)
class PuzzleName:
    """A puzzle name split into its original task and the augmentation applied to it."""

    task: str
    dihedral: int = 0
    # inverse_colours[c] is the original colour of augmented colour c.
    inverse_colours: Optional[np.ndarray] = None

    def undo(self, grid: np.ndarray) -> np.ndarray:
        """Map a grid of the augmented puzzle back to the original task's frame and colours."""
        if self.inverse_colours is not None:
            grid = self.inverse_colours[grid]
        return np.ascontiguousarray(inverse_dihedral_transform(grid, self.dihedral))


def parse_name(name: str) -> PuzzleName:
    """Split `<task>_t<k>_<digits>` into task, dihedral id and inverse colour map; else task only."""
    match = AUGMENTED_NAME.match(name)
    if match is None:
        return PuzzleName(task=name)
    colours = np.array([int(d) for d in match["perm"]], dtype=np.uint8)
    if sorted(colours.tolist()) != list(range(NUM_COLOURS)):
        raise ValueError(f"puzzle name {name!r}: {match['perm']} is not a permutation of the 10 colours")
    return PuzzleName(task=match["task"], dihedral=int(match["dihedral"]),
                      inverse_colours=np.argsort(colours).astype(np.uint8))


def grid_to_list(grid: np.ndarray) -> List[List[int]]:
    return [[int(v) for v in row] for row in grid]


def is_arc_dataset(data_path: str, metadata: PuzzleDatasetMetadata) -> bool:
    """Whether a dataset folder looks built by dataset/build_arc_dataset.py: 30x30 canvases of 12 token
    ids (padding, end-of-grid marker, 10 colours) and an identifiers.json naming the puzzles."""
    return (metadata.seq_len == GRID_SIZE * GRID_SIZE and metadata.vocab_size == COLOUR_OFFSET + NUM_COLOURS
            and os.path.isfile(os.path.join(data_path, "identifiers.json")))


# ----------------------------------------------------------------------------------------------
# Prediction files


@dataclass
class Predictions:
    """Rows of the test split as evaluated; one row per test example (any order, any rank)."""

    inputs: np.ndarray  # uint8 [N, 900] token ids
    puzzle_identifiers: np.ndarray  # int64 [N]
    preds: np.ndarray  # uint8 [N, 900] token ids (argmax of the logits)
    q_halt_logits: np.ndarray  # float32 [N]
    files: List[str] = field(default_factory=list)


def find_prediction_files(path: str) -> List[str]:
    """A file is taken as is; a folder gives its newest `step_<N>_all_preds.<rank>` set."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or folder; give a checkpoint folder or "
                                "`step_<N>_all_preds.<rank>` files written by evaluate.py")
    by_step: Dict[int, List[Tuple[int, str]]] = {}
    for entry in os.listdir(path):
        match = PREDICTION_FILE.match(entry)
        if match:
            by_step.setdefault(int(match["step"]), []).append((int(match["rank"]), os.path.join(path, entry)))
    if not by_step:
        raise FileNotFoundError(f"{path} holds no `step_<N>_all_preds.<rank>` files; run "
                                f"`python evaluate.py checkpoint=<checkpoint in {path}>` first")
    return [file for _, file in sorted(by_step[max(by_step)])]


def _load_file(file: str) -> Dict[str, np.ndarray]:
    data = load_tensor_file(file, "prediction file", "Run evaluate.py again to write it anew, or leave this file out.")
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a dict of tensors as written by evaluate.py, got {type(data).__name__}")
    missing = [k for k in ("inputs", "puzzle_identifiers", "q_halt_logits") if k not in data]
    if "preds" not in data and "logits" not in data:
        missing.append("preds or logits")
    if missing:
        raise ValueError(f"{file} lacks {', '.join(missing)}; evaluate with "
                         "eval_save_outputs=[inputs,labels,puzzle_identifiers,logits,q_halt_logits]")
    preds = data["preds"] if "preds" in data else data["logits"].argmax(-1)
    return _as_arrays({**data, "preds": preds})


def _as_arrays(tensors: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """The REQUIRED_OUTPUTS of a prediction file or an evaluation batch as the scorer's arrays."""
    return {
        "inputs": tensors["inputs"].cpu().numpy().astype(np.uint8),
        "puzzle_identifiers": tensors["puzzle_identifiers"].cpu().numpy().astype(np.int64).reshape(-1),
        "preds": tensors["preds"].cpu().numpy().astype(np.uint8),
        "q_halt_logits": tensors["q_halt_logits"].cpu().float().numpy().reshape(-1),
    }


def _row_keys(part: Dict[str, np.ndarray]) -> np.ndarray:
    """One int64 per row of (puzzle identifier, input tokens), equal for equal rows (a hash: equal keys
    of different rows are possible but, with 64 bits, not to be expected)."""
    weights = np.random.default_rng(0).integers(1, 2**62, size=part["inputs"].shape[1], dtype=np.int64)
    with np.errstate(over="ignore"):  # the sums wrap around, as a hash may
        return part["inputs"].astype(np.int64) @ weights + part["puzzle_identifiers"] * np.int64(1_000_003)


def _refuse_rows_in_two_files(parts: List[Dict[str, np.ndarray]], files: List[str]) -> None:
    """The rank files of one evaluation hold disjoint rows. The same rows in two files mean files of
    two evaluations (say 8 processes, then 1, into one folder), whose votes would count twice."""
    owner: Dict[int, int] = {}
    for index, part in enumerate(parts):
        keep = part["puzzle_identifiers"] != BLANK_IDENTIFIER
        for key in np.unique(_row_keys(part)[keep]).tolist():
            if owner.setdefault(key, index) != index:
                raise ValueError(
                    f"{files[owner[key]]} and {files[index]} hold the same predictions: they come from two evaluations "
                    "(e.g. with different numbers of processes into one folder). Delete the older files, or name the "
                    "files of one evaluation on the command line."
                )


def load_predictions(paths: Sequence[str]) -> Predictions:
    """Read and concatenate the prediction files named by `paths` (files or checkpoint folders)."""
    files = [file for path in paths for file in find_prediction_files(path)]
    if not files:
        raise ValueError("no prediction files given")
    parts = [_load_file(file) for file in files]
    _refuse_rows_in_two_files(parts, files)
    merged = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    for key in ("inputs", "preds"):
        if merged[key].ndim != 2 or merged[key].shape[1] != GRID_SIZE * GRID_SIZE:
            raise ValueError(f"`{key}` has shape {merged[key].shape}; ARC predictions are 30x30 = 900 "
                             "tokens per row: were these files evaluated on an ARC dataset?")
    # evaluate.py drops the padding rows of the last batch; the blank id marks any left over.
    keep = merged["puzzle_identifiers"] != BLANK_IDENTIFIER
    return Predictions(**{key: value[keep] for key, value in merged.items()}, files=files)


# ----------------------------------------------------------------------------------------------
# The dataset's test split: where each puzzle's examples are, and the true answers


class _TestSplit:
    """Memory-mapped test split of an ARC dataset folder, indexed by puzzle identifier."""

    def __init__(self, dataset_dir: str):
        split_dir = os.path.join(dataset_dir, "test")
        for required in (os.path.join(dataset_dir, "identifiers.json"), os.path.join(split_dir, "dataset.json")):
            if not os.path.isfile(required):
                raise FileNotFoundError(f"{required} not found; --dataset must be a folder built by "
                                        "dataset/build_arc_dataset.py (e.g. data/arc-aug-1000)")
        with open(os.path.join(dataset_dir, "identifiers.json")) as file:
            self.names: List[str] = json.load(file)
        with open(os.path.join(split_dir, "dataset.json")) as file:
            metadata = json.load(file)
        if metadata["seq_len"] != GRID_SIZE * GRID_SIZE:
            raise ValueError(f"{dataset_dir} has seq_len {metadata['seq_len']}, not 900: not an ARC dataset")

        # Per identifier: which set, first example row, number of examples (-1: not in the split).
        n = len(self.names)
        self.set_of = np.full(n, -1, dtype=np.int64)
        self.start = np.full(n, -1, dtype=np.int64)
        self.count = np.zeros(n, dtype=np.int64)
        self.inputs: List[np.ndarray] = []
        self.labels: List[np.ndarray] = []
        for set_index, set_name in enumerate(metadata["sets"]):
            load = lambda kind: np.load(os.path.join(split_dir, f"{set_name}__{kind}.npy"), mmap_mode="r")
            self.inputs.append(load("inputs"))
            self.labels.append(load("labels"))
            identifiers = np.asarray(load("puzzle_identifiers"), dtype=np.int64)
            offsets = np.asarray(load("puzzle_indices"), dtype=np.int64)
            self.set_of[identifiers] = set_index
            self.start[identifiers] = offsets[:-1]
            self.count[identifiers] = np.diff(offsets)

        self.parsed = {i: parse_name(self.names[i]) for i in np.flatnonzero(self.set_of >= 0).tolist()}

    def tasks(self) -> Dict[str, int]:
        """Each original task of the split and the identifier of the copy its answers are read from.

        The un-augmented copy when present, else the lowest identifier: all copies hold the
        same test inputs, in the same order, so any copy un-augmented gives the same answers.
        """
        reference: Dict[str, int] = {}
        for identifier, parsed in sorted(self.parsed.items()):
            if parsed.task not in reference or self.names[identifier] == parsed.task:
                reference[parsed.task] = identifier
        return dict(sorted(reference.items()))

    def grids(self, identifier: int, kind: str) -> List[np.ndarray]:
        """Un-augmented input or label grids of one puzzle's examples, in order."""
        array = (self.inputs if kind == "inputs" else self.labels)[self.set_of[identifier]]
        first = self.start[identifier]
        rows = np.asarray(array[first:first + self.count[identifier]])
        parsed = self.parsed[identifier]
        grids = []
        for grid in crop_grids(rows):
            if grid is None:
                raise ValueError(f"test {kind} of puzzle {self.names[identifier]!r} holds no grid; "
                                 "rebuild the dataset with dataset/build_arc_dataset.py")
            grids.append(parsed.undo(grid))
        return grids

    def example_positions(self, preds: Predictions) -> np.ndarray:
        """Position of each prediction row among its puzzle's test examples.

        Rows are matched on their input tokens rather than on their order, because the ranks of
        evaluate.py each save an interleaved slice of every batch. (Two identical test inputs in
        one task would both match the first; no task of the shipped ARC sources has any.)
        """
        ids = preds.puzzle_identifiers
        unknown = (ids < 0) | (ids >= len(self.names))
        unknown[~unknown] = self.set_of[ids[~unknown]] < 0
        if unknown.any():
            raise ValueError(f"{int(unknown.sum())} prediction rows name puzzle identifiers absent from this "
                             f"dataset's test split (e.g. {int(ids[unknown][0])}); score with the --dataset "
                             "the checkpoint was evaluated on")
        positions = np.full(len(ids), -1, dtype=np.int64)
        for set_index, inputs in enumerate(self.inputs):
            in_set = np.flatnonzero(self.set_of[ids] == set_index)
            for j in range(int(self.count[ids[in_set]].max(initial=0))):
                todo = in_set[(positions[in_set] < 0) & (self.count[ids[in_set]] > j)]
                if len(todo) == 0:
                    continue
                rows = self.start[ids[todo]] + j
                order = np.argsort(rows)  # sorted reads keep the memory map sequential
                same = np.empty(len(todo), dtype=bool)
                same[order] = (np.asarray(inputs[rows[order]]) == preds.inputs[todo[order]]).all(-1)
                positions[todo[same]] = j
        unmatched = positions < 0
        if unmatched.any():
            name = self.names[int(ids[unmatched][0])]
            raise ValueError(f"{int(unmatched.sum())} prediction rows have inputs that match no test example "
                             f"of their puzzle (e.g. {name!r}); score with the --dataset the checkpoint "
                             "was evaluated on")
        return positions


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class Candidate:
    grid: np.ndarray
    votes: int
    mean_q: float  # mean sigmoid(q_halt) of its votes


@dataclass
class TestInputResult:
    index: int  # position among the task's test inputs
    input: np.ndarray
    target: np.ndarray
    candidates: List[Candidate]  # best first
    num_uncroppable: int = 0  # predictions with no grid; they vote for nothing

    @property
    def correct_rank(self) -> Optional[int]:
        """1-based rank of the true output among the candidates, None when absent."""
        for rank, candidate in enumerate(self.candidates, start=1):
            if np.array_equal(candidate.grid, self.target):
                return rank
        return None


@dataclass
class TaskResult:
    name: str
    test_inputs: List[TestInputResult]

    def solved_at(self, k: int) -> bool:
        return all(test.correct_rank is not None and test.correct_rank <= k for test in self.test_inputs)


@dataclass
class ArcResults:
    tasks: Dict[str, TaskResult]
    pass_at: Dict[int, float]
    num_predictions: int
    files: List[str] = field(default_factory=list)

    def solved(self, k: int) -> int:
        return sum(task.solved_at(k) for task in self.tasks.values())

    def summary(self) -> str:
        lines = [f"{len(self.tasks)} tasks, {self.num_predictions} predictions"]
        lines += [f"pass@{k}: {self.pass_at[k]:.4f} ({self.solved(k)}/{len(self.tasks)})" for k in self.pass_at]
        return "\n".join(lines)

    def report(self) -> str:
        """One line per task: solved at 1 and 2, and per test input the answer's rank."""
        width = max([len(name) for name in self.tasks] + [4])
        lines = [f"{'task':<{width}}  pass@1  pass@2  answer rank / candidates per test input"]
        for name, task in self.tasks.items():
            ranks = "  ".join(f"{test.correct_rank or '-'}/{len(test.candidates)}" for test in task.test_inputs)
            lines.append(f"{name:<{width}}  {'yes' if task.solved_at(1) else 'no':<6}  "
                         f"{'yes' if task.solved_at(2) else 'no':<6}  {ranks}")
        return "\n".join(lines)

    def to_json(self, max_candidates: int = 10) -> dict:
        """Scores and per-task details; each test input lists its top `max_candidates` grids."""
        return {
            "prediction_files": self.files,
            "num_tasks": len(self.tasks),
            "num_predictions": self.num_predictions,
            "pass_at": {str(k): v for k, v in self.pass_at.items()},
            "tasks": {
                name: {
                    "solved_at": {str(k): task.solved_at(k) for k in self.pass_at},
                    "test_inputs": [{
                        "index": test.index,
                        "correct_rank": test.correct_rank,
                        "num_candidates": len(test.candidates),
                        "num_votes": sum(candidate.votes for candidate in test.candidates),
                        "num_uncroppable": test.num_uncroppable,
                        "target": grid_to_list(test.target),
                        "top": [{"grid": grid_to_list(candidate.grid), "votes": candidate.votes, "mean_q": candidate.mean_q}
                                for candidate in test.candidates[:max_candidates]],
                    } for test in task.test_inputs],
                } for name, task in self.tasks.items()
            },
        }


class Votes:
    """The votes of prediction rows: per (task, test input position), each distinct un-augmented grid
    predicted (in the order first seen) with the sigmoid(q_halt) of each of its votes."""

    def __init__(self):
        self.grids: Dict[Tuple[str, int], Dict[bytes, Tuple[np.ndarray, List[float]]]] = {}
        self.uncroppable: Dict[Tuple[str, int], int] = {}
        self.num_predictions = 0

    def add(self, split: _TestSplit, predictions: Predictions) -> None:
        positions = split.example_positions(predictions)
        q = 1.0 / (1.0 + np.exp(-predictions.q_halt_logits.astype(np.float64)))
        for identifier, position, grid, q_row in zip(predictions.puzzle_identifiers.tolist(), positions.tolist(),
                                                     crop_grids(predictions.preds), q.tolist()):
            key = (split.parsed[identifier].task, position)
            if grid is None:
                self.uncroppable[key] = self.uncroppable.get(key, 0) + 1
                continue
            grid = split.parsed[identifier].undo(grid)
            self.grids.setdefault(key, {}).setdefault(bytes(grid.shape) + grid.tobytes(), (grid, []))[1].append(q_row)
        self.num_predictions += len(positions)

    def merge(self, other: "Votes") -> None:
        """Add `other`'s votes after these, as if its rows had come after this one's."""
        for key, grids in other.grids.items():
            mine = self.grids.setdefault(key, {})
            for grid_key, (grid, qs) in grids.items():
                mine.setdefault(grid_key, (grid, []))[1].extend(qs)
        for key, count in other.uncroppable.items():
            self.uncroppable[key] = self.uncroppable.get(key, 0) + count
        self.num_predictions += other.num_predictions


def _rank(grids: Dict[bytes, Tuple[np.ndarray, List[float]]]) -> List[Candidate]:
    candidates = [Candidate(grid=grid, votes=len(qs), mean_q=sum(qs) / len(qs)) for grid, qs in grids.values()]
    # Stable sort: exact ties keep the order in which the grids were first predicted.
    candidates.sort(key=lambda candidate: (candidate.votes, candidate.mean_q), reverse=True)
    return candidates


def tally(split: _TestSplit, votes: Votes, ks: Sequence[int] = PASS_AT_K, files: Sequence[str] = ()) -> ArcResults:
    """Rank each test input's candidates and compute pass@K. Every task of the test split counts,
    also those without votes (they are unsolved)."""
    tasks: Dict[str, TaskResult] = {}
    for task, identifier in split.tasks().items():
        inputs, targets = split.grids(identifier, "inputs"), split.grids(identifier, "labels")
        tasks[task] = TaskResult(name=task, test_inputs=[
            TestInputResult(index=j, input=inputs[j], target=targets[j],
                            candidates=_rank(votes.grids.get((task, j), {})),
                            num_uncroppable=votes.uncroppable.get((task, j), 0))
            for j in range(len(targets))
        ])
    pass_at = {k: (sum(task.solved_at(k) for task in tasks.values()) / len(tasks) if tasks else 0.0) for k in ks}
    return ArcResults(tasks=tasks, pass_at=pass_at, num_predictions=votes.num_predictions, files=list(files))


def score(predictions: Predictions, dataset_dir: str, ks: Sequence[int] = PASS_AT_K) -> ArcResults:
    """Vote over the augmented copies of every test input of the dataset and compute pass@K."""
    split = _TestSplit(dataset_dir)
    votes = Votes()
    votes.add(split, predictions)
    return tally(split, votes, ks, files=predictions.files)


def submission(results: ArcResults, attempts: int = 2) -> Dict[str, List[Dict[str, List[List[int]]]]]:
    """ARC Prize format: per task, per test input in order, the `attempts` best grids (the best
    repeated where fewer were predicted; [[0]] where none was)."""
    out = {}
    for name, task in results.tasks.items():
        entries = []
        for test in task.test_inputs:
            top = [grid_to_list(candidate.grid) for candidate in test.candidates[:attempts]] or [[[0]]]
            entries.append({f"attempt_{i + 1}": top[i] if i < len(top) else top[0] for i in range(attempts)})
        out[name] = entries
    return out


def write_submission(results: ArcResults, path: str, attempts: int = 2) -> None:
    write_text_atomically(path, json.dumps(submission(results, attempts)))


# ----------------------------------------------------------------------------------------------
# The evaluator of evaluations during training


class ARC:
    """ARC pass@K of an evaluation, fed batch by batch (TRM's evaluator interface).

        evaluator = ARC(data_path, eval_metadata)
        evaluator.begin_eval()
        for each test batch: evaluator.update_batch(batch, outputs)  # outputs hold preds, q_halt_logits
        metrics = evaluator.result(save_path, rank, world_size)     # {"ARC/pass@K": ...} on rank 0

    Each rank votes on its own rows; `result` gathers the votes on rank 0 (in rank order, so the
    numbers equal `score` of the prediction files the ranks write) and writes `submission.json` with
    `submission_K` attempts into `save_path`. With `aggregated_voting` (TRM's default) the votes of
    earlier evaluations by this evaluator stay and count again; without it each evaluation starts
    afresh.
    """

    required_outputs = set(REQUIRED_OUTPUTS)

    def __init__(self, data_path: str, eval_metadata: PuzzleDatasetMetadata, submission_K: int = 2,
                 pass_Ks: Sequence[int] = PASS_AT_K, aggregated_voting: bool = True):
        self.split = _TestSplit(data_path)
        self.blank_identifier_id = eval_metadata.blank_identifier_id
        self.submission_K = submission_K
        self.pass_Ks = tuple(pass_Ks)
        self.aggregated_voting = aggregated_voting
        self.votes = Votes()

    def begin_eval(self) -> None:
        if not self.aggregated_voting:
            self.votes = Votes()

    def update_batch(self, batch: Dict[str, torch.Tensor], outputs: Dict[str, torch.Tensor]) -> None:
        """Vote with one batch's rows; padding rows (the blank puzzle identifier) are left out."""
        tensors = {**batch, **outputs}
        missing = [key for key in REQUIRED_OUTPUTS if key not in tensors]
        if missing:
            raise ValueError(f"the ARC evaluator needs {', '.join(missing)} from each evaluation batch: "
                             "add them to the loss head's return_keys")
        arrays = _as_arrays(tensors)
        keep = arrays["puzzle_identifiers"] != self.blank_identifier_id
        self.votes.add(self.split, Predictions(**{key: value[keep] for key, value in arrays.items()}))

    def result(self, save_path: Optional[str], rank: int, world_size: int,
               group: Optional[dist.ProcessGroup] = None) -> Optional[Dict[str, float]]:
        """{"ARC/pass@K": ...} on rank 0, None on the others (every rank must call it)."""
        if world_size > 1:
            gathered = [None] * world_size if rank == 0 else None
            dist.gather_object(self.votes, gathered, dst=0, group=group)
        else:
            gathered = [self.votes]
        if rank != 0:
            return None
        votes = Votes()
        for part in gathered:
            votes.merge(part)
        results = tally(self.split, votes, self.pass_Ks)
        if save_path is not None:
            os.makedirs(save_path, exist_ok=True)
            write_submission(results, os.path.join(save_path, "submission.json"), attempts=self.submission_K)
        return {f"ARC/pass@{k}": value for k, value in results.pass_at.items()}


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: Optional[Sequence[str]] = None) -> ArcResults:
    parser = argparse.ArgumentParser(prog="python -m evaluators.arc", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="checkpoint folder (its newest step_<N>_all_preds.* set) or prediction files")
    parser.add_argument("--dataset", required=True, help="the ARC dataset folder evaluated, e.g. data/arc-aug-1000")
    parser.add_argument("--output", help="write scores and per-task results here (JSON)")
    parser.add_argument("--submission", help="write an ARC Prize submission.json here")
    parser.add_argument("--candidates", type=int, default=10, help="grids listed per test input in --output")
    args = parser.parse_args(argv)

    results = score(load_predictions(args.paths), args.dataset)
    print(results.summary())
    if args.output:
        write_text_atomically(args.output, json.dumps(results.to_json(args.candidates), indent=1))
    if args.submission:
        write_submission(results, args.submission)
    return results


def command_line() -> None:
    """`python -m evaluators.arc` (and its alias `python -m utils.arc_score`): errors as one line."""
    try:
        main()
    except (FileNotFoundError, ValueError, DiskFullError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    command_line()
