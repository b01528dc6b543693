"""Checkpoints that do not fit the dataset: another build's puzzle identifiers, another vocabulary,
another sequence length; each stops with both shapes, the reason and the way out."""

import json
import os

import pytest
import torch

import evaluate
from dataset.build_maze_dataset import maze_metadata
from dataset.build_sudoku_dataset import sudoku_metadata
from dataset.common import PuzzleDatasetMetadata
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from tests.tiny_runs import ARC_EXAMPLE, build_tiny_maze, build_tiny_sudoku, save_untrained_run
from utils.checkpoint_fit import CheckpointMismatchError, check_weights_fit
from utils.distributed import DistributedContext

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

ARCH = dict(
    batch_size=2, puzzle_emb_ndim=16, num_puzzle_identifiers=1, H_cycles=1, L_cycles=1, H_layers=1, L_layers=1,
    hidden_size=16, expansion=2, num_heads=2, pos_encodings="rope", halt_max_steps=2, halt_exploration_prob=0.0, forward_dtype="float32",
)  # fmt: skip


def arc_metadata(**changes) -> PuzzleDatasetMetadata:
    with open(os.path.join(ARC_EXAMPLE, "test", "dataset.json")) as file:
        return PuzzleDatasetMetadata.model_validate({**json.load(file), **changes})


def evaluate_on(checkpoint: str, data_path: str):
    return evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=checkpoint, data_path=data_path, save_outputs=[]), CPU)


def test_another_builds_puzzle_identifiers(tmp_path):
    # Trained on a build with 20 identifiers; the shipped ARC example has 17.
    checkpoint = save_untrained_run(str(tmp_path / "run"), arc_metadata(num_puzzle_identifiers=20), data_path="data/arc-other-build",
                                    global_batch_size=8)
    with pytest.raises(CheckpointMismatchError) as error:
        evaluate_on(checkpoint, ARC_EXAMPLE)
    message = str(error.value)
    assert message.startswith(f"{checkpoint} does not fit the dataset {ARC_EXAMPLE}: its puzzle embedding model.inner.puzzle_emb.weights "
                              "has shape [20, 32] (one row per puzzle identifier of the dataset it was trained on, "
                              f"data_path=data/arc-other-build), while the 17 puzzle identifiers of the dataset {ARC_EXAMPLE} need [17, 32].")
    for part in ("puzzle identifiers are numbered per build, so this dataset was built differently from the one the checkpoint was trained on",
                 "rebuild the dataset the checkpoint was trained on, with the same builder command and seed",
                 f"python pretrain.py data_path={ARC_EXAMPLE} load_checkpoint={checkpoint} freeze_weights=true",
                 "re-initialises the puzzle embedding (every row the mean of the checkpoint's rows)",
                 "freeze_weights=true trains the puzzle embedding only"):
        assert part in message


def test_another_vocabulary(tmp_path):
    checkpoint = save_untrained_run(str(tmp_path / "run"), sudoku_metadata(1, 1), data_path=build_tiny_sudoku(str(tmp_path / "sudoku")))
    maze = build_tiny_maze(str(tmp_path / "maze"))
    with pytest.raises(CheckpointMismatchError) as error:
        evaluate_on(checkpoint, maze)
    assert str(error.value).startswith(
        f"{checkpoint} is a Sudoku checkpoint: it was trained with vocab_size=11 (model.inner.embed_tokens.embedding_weight has shape "
        f"[11, 32]), while vocab_size=6 (maze) for the dataset {maze}. Every dataset builder has its own tokens")


def make_model(model_class, metadata: PuzzleDatasetMetadata, **arch):
    fields = dict(seq_len=metadata.seq_len, vocab_size=metadata.vocab_size, num_puzzle_identifiers=metadata.num_puzzle_identifiers)
    return model_class({**ARCH, **arch, **fields})


@pytest.mark.parametrize("model_class, arch, evidence", [
    (HierarchicalReasoningModel_ACTV1, dict(pos_encodings="learned"),
     "its learned position embedding model.inner.embed_pos.embedding_weight has 901 rows, 1 of them for the puzzle embedding"),
    (TinyRecursiveReasoningModel_ACTV1, dict(mlp_t=True, pos_encodings="none", puzzle_emb_len=2, L_layers=2),
     "its mlp_t weights model.inner.L_level.layers.0.mlp_t.down_proj.weight span 902 positions, 2 of them for the puzzle embedding"),
])
def test_another_sequence_length_read_from_the_weights(model_class, arch, evidence):
    trained = make_model(model_class, maze_metadata(30, 1, 1), **arch)
    target = make_model(model_class, maze_metadata(20, 1, 1), **arch)
    with pytest.raises(CheckpointMismatchError) as error:
        check_weights_fit(trained.state_dict(), target, maze_metadata(20, 1, 1), "step_9.pt", "a 20x20 maze")
    assert str(error.value).startswith(f"step_9.pt was trained on sequences of seq_len=900 ({evidence}), while seq_len=400 for a 20x20 maze. "
                                       "A model answers puzzles of the size it was trained on")


def test_another_sequence_length_read_from_the_training_dataset(tmp_path):
    # With RoPE no weight depends on seq_len: the dataset the run trained on tells it, while it is on disk.
    trained = make_model(HierarchicalReasoningModel_ACTV1, sudoku_metadata(1, 1))
    longer = sudoku_metadata(1, 1).model_copy(update={"seq_len": 162})
    target = make_model(HierarchicalReasoningModel_ACTV1, longer)
    sudoku = build_tiny_sudoku(str(tmp_path))
    with pytest.raises(CheckpointMismatchError, match=rf"seq_len=81 \(the dataset its run trained on, {sudoku}\), while seq_len=162 for x"):
        check_weights_fit(trained.state_dict(), target, longer, "c.pt", "x", trained_on=sudoku)
    # Without it nothing tells, and the weights load (RoPE runs at any length).
    check_weights_fit(trained.state_dict(), target, longer, "c.pt", "x", trained_on=str(tmp_path / "gone"))


def test_fitting_weights_pass_in_every_key_format():
    model = make_model(HierarchicalReasoningModel_ACTV1, arc_metadata(), pos_encodings="learned")
    state = model.state_dict()
    for weights in (state, {f"model.{key}": value for key, value in state.items()}, {f"_orig_mod.model.{key}": value for key, value in state.items()}):
        check_weights_fit(weights, model, arc_metadata(), "c.pt", "x")
    with pytest.raises(CheckpointMismatchError, match=r"\[17, 16\]"):
        check_weights_fit({f"_orig_mod.model.{key}": value for key, value in state.items()}, make_model(HierarchicalReasoningModel_ACTV1,
                          arc_metadata(num_puzzle_identifiers=18), pos_encodings="learned"), arc_metadata(num_puzzle_identifiers=18), "c.pt", "x")


def test_evaluate_py_prints_one_line_and_fails(tmp_path, capsys, monkeypatch):
    checkpoint = save_untrained_run(str(tmp_path / "run"), arc_metadata(num_puzzle_identifiers=20), data_path="data/arc-other-build",
                                    global_batch_size=8)
    monkeypatch.setattr("sys.argv", ["evaluate.py", f"checkpoint={checkpoint}", f"data_path={ARC_EXAMPLE}"])
    with pytest.raises(SystemExit) as exit_status:
        evaluate.main()
    assert exit_status.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: {checkpoint} does not fit the dataset {ARC_EXAMPLE}: its puzzle embedding")
