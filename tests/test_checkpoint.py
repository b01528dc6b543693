"""utils.checkpoint: safe loading of our checkpoints and the original's, clear errors for unreadable
files, a save that reaches the disk before it gets its final name, and which config changes a resume
accepts. Saving and resuming whole runs: tests/test_training.py."""

import os
import pathlib
import random

import pytest
import torch

from models.optimizers import AdamATan2
from utils.checkpoint import (
    CheckpointError,
    config_changes,
    load_checkpoint,
    load_weights,
    save_atomically,
    weights_from_checkpoint,
)


def full_checkpoint() -> dict:
    """A checkpoint with every kind of content pretrain.py stores, after one real optimiser step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 16)
    optimizer = AdamATan2(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizers": [optimizer.state_dict()],
        "step": 1,
        "carry": {"inner_carry": {"z_H": torch.randn(4, 8, 16)}, "steps": torch.zeros(4, dtype=torch.int32)},
        "rng": [{"cpu": torch.get_rng_state()}],
        "loader": {"iteration": 0, "batch_index": 1},
        "config": {"arch": {"name": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1", "hidden_size": 16},
                   "lr": 1e-3, "eval_interval": None, "eval_save_outputs": [], "resume": False},
    }


@pytest.fixture
def saved_checkpoint(tmp_path) -> str:
    path = str(tmp_path / "step_1.pt")
    save_atomically(full_checkpoint(), path)
    return path


def assert_same(expected, actual):
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual)
    elif isinstance(expected, dict):
        assert expected.keys() == actual.keys()
        for key in expected:
            assert_same(expected[key], actual[key])
    elif isinstance(expected, (list, tuple)):
        assert type(expected) is type(actual) and len(expected) == len(actual)
        for expected_item, actual_item in zip(expected, actual):
            assert_same(expected_item, actual_item)
    else:
        assert expected == actual


def test_our_full_checkpoint_loads_back_unchanged(saved_checkpoint):
    assert_same(full_checkpoint(), load_checkpoint(saved_checkpoint))


def test_an_original_weights_only_file_loads(tmp_path):
    # The original saved the compiled model's bare state dict as `step_N`.
    weights = {f"_orig_mod.{key}": value for key, value in full_checkpoint()["model"].items()}
    path = str(tmp_path / "step_7")
    torch.save(weights, path)
    assert_same(weights, weights_from_checkpoint(load_checkpoint(path)))
    # Its step comes from its name; ours holds its own, whatever the file is called.
    loaded, step = load_weights(path)
    assert_same(weights, loaded)
    assert step == 7
    renamed = str(tmp_path / "best.pt")
    save_atomically(full_checkpoint(), renamed)
    loaded, step = load_weights(renamed)
    assert_same(full_checkpoint()["model"], loaded)
    assert step == 1


def test_a_file_holding_no_dict_is_refused_clearly(tmp_path):
    path = str(tmp_path / "step_3")
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match=f"{path} holds a Tensor, not model weights: pass a step_N.pt"):
        load_weights(path)


def assert_unreadable(path: str):
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert path in message
    assert "not a readable PyTorch checkpoint (truncated or corrupt?)" in message
    assert "Pick another checkpoint (step_N.pt), or delete this one" in message
    # torch's own advice to load without weights_only (which would run code from the file) is left out.
    assert "weights_only" not in message


def test_a_file_of_random_bytes_is_refused_clearly(tmp_path):
    path = tmp_path / "step_1.pt"
    path.write_bytes(random.Random(0).randbytes(5000))
    assert_unreadable(str(path))


# torch's zip reader fails in different ways for these cuts: "not a ZIP archive" (7 bytes), "failed
# finding central directory" (2000), an OSError from a seek past the end (8000 and all but the last byte).
@pytest.mark.parametrize("kept_bytes", [7, 2000, 8000, -1])
def test_a_truncated_checkpoint_is_refused_clearly(saved_checkpoint, kept_bytes):
    path = pathlib.Path(saved_checkpoint)
    path.write_bytes(path.read_bytes()[:kept_bytes])
    assert_unreadable(saved_checkpoint)


def test_an_empty_file_is_refused_clearly(tmp_path):
    path = tmp_path / "step_1.pt"
    path.write_bytes(b"")
    assert_unreadable(str(path))


def test_a_text_file_is_refused_clearly(tmp_path):
    path = tmp_path / "all_config.yaml"
    path.write_text("arch:\n  name: hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1\nlr: 0.0001\n")
    assert_unreadable(str(path))


def test_a_folder_is_not_called_a_corrupt_checkpoint(tmp_path):
    with pytest.raises(IsADirectoryError):
        load_checkpoint(str(tmp_path))


def test_save_reaches_the_disk_before_the_rename(tmp_path, disk_events):
    path = str(tmp_path / "step_1.pt")
    save_atomically(full_checkpoint(), path)

    assert disk_events == [("fsync", os.path.getsize(path)), ("replace", "step_1.pt.partial", "step_1.pt")]
    assert os.listdir(tmp_path) == ["step_1.pt"]


def test_implementation_switches_do_not_block_resume():
    # compile and the fused kernels change how a step runs, not what it computes.
    saved = {"lr": 1e-3, "compile": None, "arch": {"hidden_size": 16, "fused_kernels": True}}
    switched = {"lr": 1e-3, "compile": False, "arch": {"hidden_size": 16, "fused_kernels": False}}
    assert config_changes(saved, switched) == []
    resized = {"lr": 1e-3, "compile": None, "arch": {"hidden_size": 32, "fused_kernels": True}}
    assert config_changes(saved, resized) == ["arch.hidden_size: 16 in the checkpoint, 32 now"]
