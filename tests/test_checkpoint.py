"""utils.checkpoint: safe loading of our checkpoints and the original's, clear errors for unreadable
or damaged files, a save that reaches the disk before it gets its final name, that never writes a
non-finite number and stops clearly on a full disk, what a new run or a resume accepts in a run
folder, and which config changes a resume accepts. Saving and resuming whole runs:
tests/test_training.py and tests/test_training_faults.py."""

import errno
import io
import os
import pathlib
import random
import shutil

import pytest
import torch

from models.optimizers import AdamATan2
from tests.tiny_runs import tiny_overrides
from utils.checkpoint import (
    CheckpointError,
    config_changes,
    load_checkpoint,
    load_weights,
    prepare_run_folder,
    save_atomically,
    weights_from_checkpoint,
    write_checkpoint,
)
from utils.config import ConfigError, load_config, save_config
from utils.distributed import DistributedContext
from utils.files import DiskFullError, byte_count
from utils.finite import NonFiniteError

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


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
        "dataset_fingerprint": "0123456789abcdef",
    }


@pytest.fixture
def saved_checkpoint(tmp_path) -> str:
    path = str(tmp_path / "step_1.pt")
    write_checkpoint(full_checkpoint(), path)
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


def test_a_folder_is_answered_with_its_checkpoints_not_called_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match=f"^{tmp_path} is a folder that holds no checkpoint \\(step_N.pt, or the original's step_N\\): name a checkpoint file$"):
        load_checkpoint(str(tmp_path))
    for name in ("step_9", "step_10"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"^{tmp_path} is a folder: name one of its checkpoints, e.g. {tmp_path}/step_10$"):
        load_checkpoint(str(tmp_path))
    save_atomically(full_checkpoint(), str(tmp_path / "step_2.pt"))
    with pytest.raises(CheckpointError, match=f"e.g. {tmp_path}/step_2.pt$"):
        load_weights(str(tmp_path))


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


# ----------------------------------------------------------------------------------------------
# The checksum: a damaged checkpoint is refused by name


def flip_byte(path: str, offset: int) -> None:
    data = bytearray(pathlib.Path(path).read_bytes())
    data[offset] ^= 0x01
    pathlib.Path(path).write_bytes(bytes(data))


def assert_damaged(path: str):
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    assert str(raised.value).startswith(f"{path} is damaged: its content differs from what was saved (it fails the checksum written with it)")
    assert "Copy it again from where it came from, or pick another checkpoint" in str(raised.value)
    with pytest.raises(CheckpointError, match="is damaged"):
        load_weights(path)  # what evaluate.py reads


def test_a_flipped_bit_in_a_weight_is_refused(saved_checkpoint):
    # torch does not check the archive's CRCs: the file still loads, with one weight changed.
    weight = full_checkpoint()["model"]["weight"]
    offset = pathlib.Path(saved_checkpoint).read_bytes().find(weight.numpy().tobytes())
    assert offset > 0
    flip_byte(saved_checkpoint, offset + 5)
    assert not torch.equal(torch.load(saved_checkpoint, weights_only=True)["model"]["weight"], weight)
    assert_damaged(saved_checkpoint)


def test_an_edited_value_in_the_pickle_is_refused(saved_checkpoint):
    offset = pathlib.Path(saved_checkpoint).read_bytes().find(b"HierarchicalReasoningModel_ACTV1")
    flip_byte(saved_checkpoint, offset)  # H -> I: same length, still a valid pickle
    assert torch.load(saved_checkpoint, weights_only=True)["config"]["arch"]["name"].endswith("@IierarchicalReasoningModel_ACTV1")
    assert_damaged(saved_checkpoint)


def test_checkpoints_without_a_checksum_still_load(tmp_path, capsys):
    older = str(tmp_path / "step_1.pt")
    save_atomically(full_checkpoint(), older)  # as written before checksums were stored
    assert_same(full_checkpoint(), load_checkpoint(older))
    assert capsys.readouterr().out == f"Note: {older} carries no checksum (it predates them): loaded without checking its content\n"

    original = str(tmp_path / "step_7")
    torch.save(full_checkpoint()["model"], original)  # the original release's weights file
    load_weights(original)
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------------------------
# The save path: no non-finite number written; a full disk stops with the sizes and leaves no partial file


@pytest.mark.parametrize("where, path", [
    (lambda checkpoint: checkpoint["model"]["weight"], "model.weight"),
    (lambda checkpoint: checkpoint["optimizers"][0]["state"][0]["exp_avg_sq"], "optimizers.0.state.0.exp_avg_sq"),
    (lambda checkpoint: checkpoint["carry"]["inner_carry"]["z_H"], "carry.inner_carry.z_H"),
])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_a_non_finite_number_is_not_written(tmp_path, where, path, value):
    previous = str(tmp_path / "step_1.pt")
    write_checkpoint(full_checkpoint(), previous)
    checkpoint = full_checkpoint()
    where(checkpoint).view(-1)[3] = value
    with pytest.raises(NonFiniteError) as raised:
        write_checkpoint(checkpoint, str(tmp_path / "step_2.pt"))
    assert str(raised.value) == (f"step_2.pt was not written: it would hold NaN or infinite values (in {path}). "
                                 f"The newest checkpoint, {previous}, is complete and finite: resume=true continues from it.")
    assert os.listdir(tmp_path) == ["step_1.pt"]


def save_on_a_full_disk(real_save):
    """torch.save as it fails on a full disk: part of the file written, then the OSError, which torch
    turns into a RuntimeError. Writes to nowhere (not a real file) succeed."""
    def save(state, file, *args, **kwargs):
        if not isinstance(file, io.IOBase):
            return real_save(state, file, *args, **kwargs)
        file.write(b"PK" * 100)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    return save


def saved_size(checkpoint: dict) -> int:
    """The bytes of a checkpoint on the disk, checksum included."""
    buffer = io.BytesIO()
    torch.save({**checkpoint, "checksum": "0" * 64}, buffer)
    return len(buffer.getvalue())


def fsync_on_a_full_disk(descriptor):
    raise OSError(errno.ENOSPC, "No space left on device")  # as network file systems report it


@pytest.mark.parametrize("fault", ["write", "fsync"])
def test_a_full_disk_stops_the_save_with_the_sizes_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fault):
    previous = str(tmp_path / "step_1.pt")
    write_checkpoint(full_checkpoint(), previous)
    previous_bytes = pathlib.Path(previous).read_bytes()
    if fault == "write":
        monkeypatch.setattr(torch, "save", save_on_a_full_disk(torch.save))
    else:
        monkeypatch.setattr(os, "fsync", fsync_on_a_full_disk)

    # The free space the message reports, fixed: other processes may write to this disk meanwhile.
    usage = shutil.disk_usage(tmp_path)
    free = 12_345_678
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: type(usage)(usage.total, usage.total - free, free))

    path = str(tmp_path / "step_2.pt")
    with pytest.raises(DiskFullError) as raised:
        write_checkpoint(full_checkpoint(), path)
    monkeypatch.undo()
    assert str(raised.value) == (
        f"no space left on the disk for {path}: it needs {byte_count(saved_size(full_checkpoint()))} and "
        f"{byte_count(free)} are free there. Nothing was left half-written. Free some space (or "
        f"write to another disk), then run again. The newest checkpoint, {previous}, is complete and finite: resume=true continues from it."
    )
    assert os.listdir(tmp_path) == ["step_1.pt"]
    assert pathlib.Path(previous).read_bytes() == previous_bytes


def test_a_full_file_system_stops_the_save_and_a_save_after_freeing_space_works(tmpfs):
    disk = tmpfs.mount("disk", "1m")
    previous = str(disk / "step_1.pt")
    write_checkpoint(full_checkpoint(), previous)
    large = {**full_checkpoint(), "model": {"weight": torch.ones(1024, 1024)}}  # 4 MiB of weights
    path = str(disk / "step_2.pt")
    with pytest.raises(DiskFullError) as raised:
        write_checkpoint(large, path)
    assert str(raised.value).startswith(f"no space left on the disk for {path}: it needs {saved_size(large):,} bytes (4.0 MiB) and "
                                        f"{byte_count(shutil.disk_usage(disk).free)} are free there.")
    assert os.listdir(disk) == ["step_1.pt"]
    assert_same(full_checkpoint(), load_checkpoint(previous))

    tmpfs.resize(disk, "16m")
    write_checkpoint(large, path)
    assert_same(large, load_checkpoint(path))


# ----------------------------------------------------------------------------------------------
# The run folder: a new run refuses another run's files; what a resume accepts


def run_config(folder, **extra):
    return load_config(tiny_overrides("data/sudoku-tiny", str(folder), **extra))


@pytest.mark.parametrize("name", ["step_3.pt", "step_3", "all_config.yaml", "metrics.jsonl", "step_3_all_preds.0", "wandb_run_id.txt"])
def test_a_new_run_refuses_a_folder_holding_another_runs_file(tmp_path, name):
    (tmp_path / name).write_text("another run's")
    with pytest.raises(ConfigError) as raised:
        prepare_run_folder(run_config(tmp_path), CPU)
    assert str(raised.value) == (f"checkpoint_path={tmp_path} already holds another run's files ({name}). Add resume=true to continue "
                                 "that run, or choose another checkpoint_path (or run_name) for a new one.")
    assert (tmp_path / name).read_text() == "another run's"


def test_a_new_run_may_use_an_empty_folder_or_one_of_unrelated_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert prepare_run_folder(run_config(tmp_path), CPU) is None


def test_leftover_partial_files_are_removed_with_a_note(tmp_path, capsys):
    for name in ("step_5.pt.partial", "all_config.yaml.partial", "metrics.jsonl.partial", "step_5_all_preds.0.partial", "notes.partial"):
        (tmp_path / name).write_text("cut short")
    assert prepare_run_folder(run_config(tmp_path), CPU) is None
    assert os.listdir(tmp_path) == ["notes.partial"]  # not a name of ours
    notes = capsys.readouterr().out.splitlines()
    assert f"Note: removed {tmp_path / 'step_5.pt.partial'}, left incomplete by a process stopped while writing it" in notes
    assert len(notes) == 4


def test_resume_picks_the_newest_checkpoint_and_refuses_what_it_cannot_continue(tmp_path, capsys):
    for step in (9, 10):
        write_checkpoint(full_checkpoint(), str(tmp_path / f"step_{step}.pt"))
    assert prepare_run_folder(run_config(tmp_path, resume="true"), CPU) == str(tmp_path / "step_10.pt")

    originals = tmp_path / "original"
    originals.mkdir()
    for step in (2, 4):
        torch.save(full_checkpoint()["model"], originals / f"step_{step}")
    with pytest.raises(ConfigError, match=rf"^resume=true: {originals} holds weights-only files of the original release \(step_2, step_4\) "
                                          "and no step_N.pt: they carry no training state to continue from"):
        prepare_run_folder(run_config(originals, resume="true"), CPU)

    # A run stopped before its first checkpoint restarts from step 0, if it is the same run.
    started = tmp_path / "started"
    save_config(run_config(started), str(started))
    assert prepare_run_folder(run_config(started, resume="true"), CPU) is None
    assert capsys.readouterr().out.endswith(f"resume=true: no checkpoint in {started} yet, starting from step 0\n")
    with pytest.raises(ConfigError, match=rf"^resume=true: {started} holds no checkpoint, and its all_config.yaml is of a run with another "
                                          r"config \(lr: 0.003 in the checkpoint, 0.1 now\)"):
        prepare_run_folder(run_config(started, resume="true", lr=0.1), CPU)
