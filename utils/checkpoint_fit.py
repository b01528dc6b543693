"""Whether a checkpoint's weights fit the puzzles they are about to run on, said in the dataset's terms.

A model's shapes come from its arch keys and from the dataset it is built for: the token embedding
has vocab_size rows, a learned position embedding (and TRM's mlp_t) spans the seq_len positions, and
the puzzle embedding has one row per puzzle identifier. Weights trained on one dataset and loaded
for another fail on these shapes; `check_weights_fit` names each case with the dataset's values and
the way out, before the generic state-dict load (models/state_dict.py) reports what else differs (the
architecture). With RoPE no weight depends on seq_len: there the dataset the checkpoint was trained
on tells it, when it is still on disk.
"""

import json
import os
from typing import Dict, Mapping, Optional

import pydantic
import torch
from torch import nn

from dataset.build_arc_dataset import COLOUR_TOKEN_OFFSET, NUM_COLOURS
from dataset.build_maze_dataset import MAZE_CHARSET
from dataset.build_sudoku_dataset import SUDOKU_CHARSET
from dataset.common import PuzzleDatasetMetadata
from models.state_dict import normalise_keys

# The builders' vocabularies (PAD first), to name the kind of puzzle a checkpoint was trained on.
PUZZLE_KINDS = {len(SUDOKU_CHARSET) + 1: "Sudoku", len(MAZE_CHARSET) + 1: "maze", NUM_COLOURS + COLOUR_TOKEN_OFFSET: "ARC"}

# Keys of the ACT model's state dict (checkpoints add the loss head's `model.` in front).
TOKEN_EMBEDDING = "inner.embed_tokens.embedding_weight"
POSITION_EMBEDDING = "inner.embed_pos.embedding_weight"
PUZZLE_EMBEDDING = "inner.puzzle_emb.weights"
POSITION_MLP_SUFFIX = ".mlp_t.down_proj.weight"  # TRM's SwiGLU across positions: [positions, inner]


class CheckpointMismatchError(ValueError):
    """Weights trained on puzzles of another shape than those given; the message says which and what to do."""


def trained_metadata(data_path: str) -> Optional[PuzzleDatasetMetadata]:
    """The shape of the dataset a run trained on (its data_path), if that folder still holds one."""
    path = os.path.join(data_path, "train", "dataset.json")
    try:
        with open(path) as file:
            return PuzzleDatasetMetadata.model_validate(json.load(file))
    except (OSError, ValueError, pydantic.ValidationError):
        return None


def check_weights_fit(weights: Mapping[str, torch.Tensor], model: nn.Module, metadata: PuzzleDatasetMetadata, checkpoint: str,
                      puzzles: str, data_path: Optional[str] = None, trained_on: Optional[str] = None) -> None:
    """Raise CheckpointMismatchError where `weights` were trained with another vocab_size, seq_len or
    number of puzzle identifiers than `metadata` (the puzzles to run: a dataset, or the user's puzzles)
    gives `model` (the ACT model, built for `metadata`).

    `puzzles` names them in the messages (e.g. "the dataset data/x", "Sudoku puzzles"); `data_path`
    is their dataset, if any; `trained_on` is the data_path of the checkpoint's run.
    """
    weights = normalise_keys(weights, model.state_dict().keys())
    positions_in_front = model.inner.puzzle_emb_len
    run = f" (its run trained on data_path={trained_on})" if trained_on else ""

    if TOKEN_EMBEDDING in weights and weights[TOKEN_EMBEDDING].shape[0] != metadata.vocab_size:
        trained_vocab = weights[TOKEN_EMBEDDING].shape[0]
        raise CheckpointMismatchError(
            f"{checkpoint} is {_kind(trained_vocab)} checkpoint: it was trained with vocab_size={trained_vocab} "
            f"(model.{TOKEN_EMBEDDING} has shape {_shape(weights[TOKEN_EMBEDDING].shape)}), while vocab_size={metadata.vocab_size}"
            f"{_named(metadata.vocab_size)} for {puzzles}. Every dataset builder has its own tokens, so a checkpoint runs only on "
            f"puzzles of the kind it was trained on{run}: give it such puzzles, or train a model for these."
        )

    trained_seq_len, evidence = _trained_seq_len(weights, positions_in_front, trained_on)
    if trained_seq_len is not None and trained_seq_len != metadata.seq_len:
        raise CheckpointMismatchError(
            f"{checkpoint} was trained on sequences of seq_len={trained_seq_len} ({evidence}), while seq_len={metadata.seq_len} "
            f"for {puzzles}. A model answers puzzles of the size it was trained on: give it puzzles of that size (a dataset "
            "built by the same builder, with the same grid size), or train a model for these."
        )

    if PUZZLE_EMBEDDING in weights and PUZZLE_EMBEDDING in model.state_dict():
        found, needed = weights[PUZZLE_EMBEDDING].shape, model.state_dict()[PUZZLE_EMBEDDING].shape
        if found[0] != needed[0]:
            raise CheckpointMismatchError(
                f"{checkpoint} does not fit {puzzles}: its puzzle embedding model.{PUZZLE_EMBEDDING} has shape "
                f"{_shape(found)} (one row per puzzle identifier of the dataset it was trained on{f', data_path={trained_on}' if trained_on else ''}), while the "
                f"{metadata.num_puzzle_identifiers} puzzle identifiers of {puzzles} need {_shape([needed[0], *found[1:]])}.\n"
                "Why: puzzle identifiers are numbered per build, so this dataset was built differently from the one the "
                "checkpoint was trained on (another builder command, source folders, --num-aug or --seed); even an equal "
                "count would give the rows to other puzzles.\n"
                "Two ways out:\n"
                "  1. rebuild the dataset the checkpoint was trained on, with the same builder command and seed, and run on "
                "that;\n"
                f"  2. or start from these weights on this dataset: python pretrain.py data_path={data_path or '<this dataset>'} "
                f"load_checkpoint={checkpoint} freeze_weights=true (with the run's arch.* keys). load_checkpoint "
                "re-initialises the puzzle embedding (every row the mean of the checkpoint's rows) and freeze_weights=true "
                "trains the puzzle embedding only."
            )


def _trained_seq_len(weights: Dict[str, torch.Tensor], positions_in_front: int, trained_on: Optional[str]):
    """The seq_len the weights were trained with and how it is known, or (None, "") where nothing tells."""
    if POSITION_EMBEDDING in weights:
        rows = weights[POSITION_EMBEDDING].shape[0]
        return rows - positions_in_front, f"its learned position embedding model.{POSITION_EMBEDDING} has {rows} rows, {positions_in_front} of them for the puzzle embedding"
    for key, value in weights.items():
        if key.endswith(POSITION_MLP_SUFFIX):
            return value.shape[0] - positions_in_front, f"its mlp_t weights model.{key} span {value.shape[0]} positions, {positions_in_front} of them for the puzzle embedding"
    metadata = trained_metadata(trained_on) if trained_on else None
    if metadata is not None:
        return metadata.seq_len, f"the dataset its run trained on, {trained_on}"
    return None, ""


def _kind(vocab_size: int) -> str:
    kind = PUZZLE_KINDS.get(vocab_size)
    return f"a{'n' if kind == 'ARC' else ''} {kind}" if kind else "another kind of"


def _named(vocab_size: int) -> str:
    kind = PUZZLE_KINDS.get(vocab_size)
    return f" ({kind})" if kind else ""


def _shape(shape) -> str:
    return str(list(shape))
