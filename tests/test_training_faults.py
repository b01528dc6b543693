"""pretrain.py and evaluate.py under faults and bad input, end to end on a tiny real dataset (CPU):
weights that turn non-finite, a full disk, another run's files, two runs in one folder, a damaged
checkpoint, a changed dataset."""

import errno
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import evaluate
import pretrain
from evaluators.arc import load_predictions
from models.optimizers import AdamATan2
from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed
from tests.tiny_runs import (
    CPU,
    REPO_ROOT,
    final_weights,
    run_script,
    run_torchrun,
    tiny_overrides,
    train_in_process,
    training_environment,
)
from utils.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from utils.config import ConfigError
from utils.files import DiskFullError
from utils.finite import NonFiniteError, non_finite_paths
from utils.logging import RunLogger, read_metrics
from utils.run_lock import LOCK_FILE_NAME, RunFolderError, acquire_run_lock


def checkpoint_names(folder) -> list:
    return [os.path.basename(path) for path in list_checkpoints(str(folder))]


def newest_advice(path) -> str:
    return f"The newest checkpoint, {path}, is complete and finite: resume=true continues from it."


# ----------------------------------------------------------------------------------------------
# Non-finite numbers: the run stops naming the step, and no checkpoint holding one is written


def corrupt_after_step(monkeypatch, optimizer_class, at_call: int, corrupt):
    """After the optimiser's `at_call`-th step, `corrupt(optimizer)` puts an infinity in what it updates."""
    calls = {"count": 0}
    real_step = optimizer_class.step

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls["count"] += 1
        if calls["count"] == at_call:
            with torch.no_grad():
                corrupt(self)
        return result

    monkeypatch.setattr(optimizer_class, "step", step)


def first_parameter(optimizer):
    return optimizer.param_groups[0]["params"][0]


CORRUPTIONS = {
    "a parameter": (AdamATan2, lambda optimizer: first_parameter(optimizer).view(-1)[0].fill_(float("nan"))),
    "the optimiser state": (AdamATan2, lambda optimizer: optimizer.state[first_parameter(optimizer)]["exp_avg_sq"].view(-1)[0].fill_(float("inf"))),
    # The puzzle-embedding table is a buffer that the sign-SGD optimiser updates.
    "the puzzle embeddings": (CastedSparseEmbeddingSignSGD_Distributed, lambda optimizer: first_parameter(optimizer).view(-1)[0].fill_(float("inf"))),
}


@pytest.mark.parametrize("where", list(CORRUPTIONS))
def test_an_update_that_makes_the_weights_non_finite_stops_the_run_before_anything_is_saved(dataset, tmp_path, monkeypatch, where):
    # The step-7 loss is computed before the update, so it is finite; the check after the update
    # stops the run before the step-7 checkpoint is written or step_6.pt is pruned.
    optimizer_class, corrupt = CORRUPTIONS[where]
    corrupt_after_step(monkeypatch, optimizer_class, 7, corrupt)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError) as raised:
        train_in_process(tiny_overrides(dataset, str(run), checkpoint_every_steps=1, keep_checkpoints=1))
    assert str(raised.value) == (
        "the update of step 7 left NaN or infinite values in the weights or the optimiser state (its loss, computed before the "
        f"update, was finite). The run stops here; nothing of this step was saved. {newest_advice(run / 'step_6.pt')} "
        "With the same settings a resumed run repeats these steps; a new run (another checkpoint_path) with a lower lr, or checked data, avoids them."
    )
    assert checkpoint_names(run) == ["step_6.pt"]
    assert non_finite_paths(load_checkpoint(str(run / "step_6.pt"))) == []
    assert [record["step"] for record in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert not (run / LOCK_FILE_NAME).exists()


def test_a_diverging_run_stops_at_its_first_update_and_says_no_checkpoint_exists(dataset, tmp_path):
    # A decay factor of 1 - lr * weight_decay = -1e39 overflows every weight in the first update,
    # whose loss (of the initial weights) is finite: the case a loss check alone lets through.
    run = tmp_path / "run"
    result = run_script(["pretrain.py", *tiny_overrides(dataset, str(run), lr=100, weight_decay=1e37, lr_warmup_steps=0,
                                                         checkpoint_every_steps=1, keep_checkpoints=1)])
    assert result.returncode == 1
    assert f"error: the update of step 1 left NaN or infinite values" in result.stderr and "Traceback" not in result.stderr
    assert f"No checkpoint of this run was written in {run}." in result.stderr
    assert sorted(os.listdir(run)) == ["all_config.yaml", "metrics.jsonl"]


def test_a_non_finite_evaluation_stops_the_run_before_its_checkpoint(dataset, tmp_path, monkeypatch):
    real_evaluate = pretrain.evaluate

    def evaluate_to_nan(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        metrics["all"]["lm_loss"] = float("nan")
        return metrics

    monkeypatch.setattr(pretrain, "evaluate", evaluate_to_nan)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError) as raised:
        train_in_process(tiny_overrides(dataset, str(run), checkpoint_every_steps=5))
    assert str(raised.value).startswith(f"non-finite evaluation metrics at step 12 (all/lm_loss nan). The run stops here; nothing of this "
                                        f"step was saved. {newest_advice(run / 'step_10.pt')}")
    assert checkpoint_names(run) == ["step_5.pt", "step_10.pt"]


# ----------------------------------------------------------------------------------------------
# A full disk: one message with the sizes, no partial file, the previous checkpoint kept; a resume
# after freeing space finishes the same run


def test_a_full_disk_stops_the_run_and_a_resume_after_freeing_space_finishes_it(dataset, tmp_path, tmpfs, capsys):
    common = dict(checkpoint_every_steps=5, keep_checkpoints=1)
    straight = tmp_path / "straight"
    train_in_process(tiny_overrides(dataset, str(straight), **common))

    disk = tmpfs.mount("disk", "2m")  # room for one checkpoint of this model (1.4 MB), not two
    run = disk / "run"
    with pytest.raises(DiskFullError) as raised:
        train_in_process(tiny_overrides(dataset, str(run), **common))
    message = str(raised.value)
    assert message.startswith(f"no space left on the disk for {run / 'step_10.pt'}: it needs 1,4")
    assert message.endswith(f"Free some space (or write to another disk), then run again. {newest_advice(run / 'step_5.pt')}")
    assert sorted(os.listdir(run)) == ["all_config.yaml", "metrics.jsonl", "step_5.pt"]

    # A process killed while writing leaves a partial file; the next start removes it.
    (run / "step_10.pt.partial").write_bytes(b"cut short")
    tmpfs.resize(disk, "8m")
    capsys.readouterr()
    train_in_process(tiny_overrides(dataset, str(run), resume="true", **common))
    assert f"Note: removed {run / 'step_10.pt.partial'}, left incomplete by a process stopped while writing it" in capsys.readouterr().out
    assert checkpoint_names(run) == ["step_24.pt"]
    expected, actual = final_weights(straight), final_weights(run)
    for key in expected["model"]:
        assert torch.equal(expected["model"][key], actual["model"][key]), key


def test_every_process_of_a_torchrun_stops_when_rank_0_finds_the_disk_full(dataset, tmpfs):
    # Rank 0 writes the checkpoints; the others must stop with its error rather than wait for it.
    disk = tmpfs.mount("disk", "2m")
    run = disk / "run"
    result = run_torchrun(2, ["pretrain.py", *tiny_overrides(dataset, str(run), checkpoint_every_steps=5, keep_checkpoints=1)])
    assert result.returncode != 0
    assert result.stderr.count(f"error: no space left on the disk for {run / 'step_10.pt'}: it needs 1,4") == 2, result.stderr
    assert sorted(os.listdir(run)) == ["all_config.yaml", "metrics.jsonl", "step_5.pt"]


class FillingUpFile:
    """The metrics file on a disk that fills up during the third record: part of it is written,
    then the operating system reports no space left."""

    def __init__(self, file):
        self.file, self.writes = file, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == 3:
            return self.file.write(data[:10])
        if self.writes > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_full_disk_on_the_metrics_file_stops_the_run_and_cuts_the_partial_line(dataset, tmp_path, monkeypatch, capsys):
    real_init = RunLogger.__init__

    def init_on_a_filling_disk(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.metrics_file = FillingUpFile(self.metrics_file)

    monkeypatch.setattr(RunLogger, "__init__", init_on_a_filling_disk)
    run = tmp_path / "run"
    with pytest.raises(DiskFullError, match=f"^no space left on the disk for {run / 'metrics.jsonl'}: it needs \\d{{3}} bytes and"):
        train_in_process(tiny_overrides(dataset, str(run)))
    assert (run / "metrics.jsonl").read_text().endswith("}\n")
    capsys.readouterr()
    assert [record["step"] for record in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert capsys.readouterr().out == ""  # no half-written line to leave out


# ----------------------------------------------------------------------------------------------
# A run folder belongs to one run


@pytest.mark.parametrize("files", [
    # The original release's run folder: weights-only step_N files and its config.
    {"step_12": b"weights", "all_config.yaml": b"arch: {}\n"},
    {"metrics.jsonl": b'{"step": 1, "train/lm_loss": 2.0}\n'},
])
def test_a_new_run_refuses_a_folder_with_another_runs_files_and_leaves_them_alone(dataset, tmp_path, files):
    run = tmp_path / "run"
    run.mkdir()
    for name, content in files.items():
        (run / name).write_bytes(content)
    result = run_script(["pretrain.py", *tiny_overrides(dataset, str(run))])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: checkpoint_path={run} already holds another run's files ({', '.join(sorted(files))}). "
                                    "Add resume=true to continue that run, or choose another checkpoint_path (or run_name) for a new one.")
    assert {path.name: path.read_bytes() for path in run.iterdir()} == files


def start_run(arguments) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "pretrain.py", *arguments], cwd=REPO_ROOT, env=training_environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_run_into_a_running_runs_folder_is_refused(dataset, tmp_path):
    run = tmp_path / "run"
    first = start_run(tiny_overrides(dataset, str(run), epochs=48, eval_interval=48))
    deadline = time.monotonic() + 120
    while not (run / LOCK_FILE_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_script(["pretrain.py", *tiny_overrides(dataset, str(run), epochs=48, eval_interval=48, resume="true")])
    assert second.returncode == 1
    assert second.stderr.startswith(f"error: {run} is in use: process {first.pid} on host ")
    assert first.wait(timeout=300) == 0, first.stderr
    assert [record["step"] for record in read_metrics(run / "metrics.jsonl") if "train/lm_loss" in record] == list(range(1, 145))
    assert not (run / LOCK_FILE_NAME).exists()


def test_of_two_runs_started_together_into_one_folder_exactly_one_runs(dataset, tmp_path):
    run = tmp_path / "run"
    runs = [start_run(tiny_overrides(dataset, str(run), seed=seed)) for seed in (1, 2)]
    outputs = [process.communicate(timeout=300) for process in runs]
    codes = [process.returncode for process in runs]
    assert sorted(codes) == [0, 1], outputs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert outputs[loser][1].startswith(f"error: {run} is in use: process {runs[winner].pid} on host "), outputs[loser][1]
    # The winner's run is whole: its seed in the config, every step in the metrics.
    assert f"seed: {winner + 1}\n" in (run / "all_config.yaml").read_text()
    assert [record["step"] for record in read_metrics(run / "metrics.jsonl") if "train/lm_loss" in record] == list(range(1, 25))


def test_every_process_of_a_torchrun_stops_when_the_folder_is_in_use(dataset, tmp_path):
    run = tmp_path / "run"
    lock = acquire_run_lock(str(run))
    try:
        result = run_torchrun(2, ["pretrain.py", *tiny_overrides(dataset, str(run))])
    finally:
        lock.release()
    assert result.returncode != 0
    assert f"error: {run} is in use: process {os.getpid()} on host " in result.stderr
    assert not run.exists()  # nothing written: the folder, made by the test's lock, went with it


def test_a_file_or_an_unwritable_folder_as_checkpoint_path_is_refused(dataset, tmp_path, tmpfs):
    file = tmp_path / "run"
    file.write_text("not a folder")
    with pytest.raises(RunFolderError, match=f"^checkpoint_path={file} is a file, not a folder"):
        train_in_process(tiny_overrides(dataset, str(file)))
    read_only = tmpfs.mount("read_only", "64k", "ro")
    with pytest.raises(RunFolderError, match=rf"^cannot write in checkpoint_path={read_only}/run \(Read-only file system\)"):
        train_in_process(tiny_overrides(dataset, str(read_only / "run")))


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints, changed datasets, bad paths


def flip_byte_in_weights(path: pathlib.Path) -> None:
    checkpoint = torch.load(path, weights_only=True)
    weight = checkpoint["model"]["model.inner.lm_head.weight"]
    data = bytearray(path.read_bytes())
    offset = data.find(weight.numpy().tobytes())
    data[offset + 3] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_by_resume_and_by_evaluate(dataset, tmp_path):
    run = tmp_path / "run"
    train_in_process(tiny_overrides(dataset, str(run), epochs=4))
    flip_byte_in_weights(run / "step_12.pt")
    with pytest.raises(CheckpointError, match=f"^{run / 'step_12.pt'} is damaged: its content differs from what was saved"):
        train_in_process(tiny_overrides(dataset, str(run), epochs=4, resume="true"))
    with pytest.raises(CheckpointError, match=f"^{run / 'step_12.pt'} is damaged"):
        evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=str(run / "step_12.pt")), CPU)
    assert not list(run.glob("*_all_preds.*"))

    # evaluate.py given the run folder instead of a file
    with pytest.raises(CheckpointError, match=f"^{run} is a folder: name one of its checkpoints, e.g. {run / 'step_12.pt'}$"):
        evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=str(run)), CPU)


def shuffle_training_inputs(data_path: str) -> None:
    """The same dataset rebuilt with other content: its training inputs in another order (still valid)."""
    path = os.path.join(data_path, "train", "all__inputs.npy")
    inputs = np.load(path)
    np.save(path, inputs[np.random.default_rng(0).permutation(len(inputs))])


def test_resume_refuses_a_changed_dataset_unless_allowed(dataset, tmp_path, capsys):
    data = str(tmp_path / "data")
    shutil.copytree(dataset, data)
    run = tmp_path / "run"
    train_in_process(tiny_overrides(data, str(run), stop_after_minutes=1e-9))
    fingerprint = load_checkpoint(str(run / "step_10.pt"))["dataset_fingerprint"]
    shuffle_training_inputs(data)
    with pytest.raises(ConfigError) as raised:
        train_in_process(tiny_overrides(data, str(run), resume="true"))
    assert str(raised.value).startswith(
        f"resume: the dataset at data_path={data} is not the one this run trained on (fingerprint {fingerprint} in "
        f"{run / 'step_10.pt'}, ")
    assert str(raised.value).endswith("it was rebuilt or replaced. Resume with the original dataset, or add allow_dataset_change=true "
                                      "to continue on this one.")
    assert checkpoint_names(run) == ["step_10.pt"]

    capsys.readouterr()
    train_in_process(tiny_overrides(data, str(run), resume="true", allow_dataset_change="true"))
    assert f"Note: allow_dataset_change=true: continuing on the dataset at data_path={data}" in capsys.readouterr().out
    assert checkpoint_names(run) == ["step_10.pt", "step_12.pt", "step_24.pt"]
    assert load_checkpoint(str(run / "step_24.pt"))["dataset_fingerprint"] != fingerprint


def test_a_checkpoint_from_before_fingerprints_and_checksums_resumes_with_notes(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train_in_process(tiny_overrides(dataset, str(run), stop_after_minutes=1e-9))
    path = run / "step_10.pt"
    older = torch.load(path, weights_only=True)
    del older["dataset_fingerprint"], older["checksum"]
    torch.save(older, path)
    capsys.readouterr()
    train_in_process(tiny_overrides(dataset, str(run), resume="true"))
    out = capsys.readouterr().out
    assert f"Note: {path} carries no checksum (it predates them): loaded without checking its content" in out
    assert f"Note: {path} records no dataset fingerprint (it predates them): the dataset at data_path={dataset} is not checked" in out
    assert checkpoint_names(run) == ["step_10.pt", "step_12.pt", "step_24.pt"]


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04" + bytes(100)])
def test_an_unreadable_prediction_file_is_named_for_arc_scoring(tmp_path, content):
    path = tmp_path / "step_5_all_preds.0"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"^{path} is not a readable prediction file \(truncated or corrupt\?\): .*\. "
                                              r"Run evaluate.py again to write it anew, or leave this file out.$"):
        load_predictions([str(tmp_path)])
