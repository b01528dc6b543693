"""pretrain.py and evaluate.py end to end on a tiny real dataset, on the CPU."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import evaluate
import pretrain
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
from utils.checkpoint import CheckpointError, list_checkpoints
from utils.config import ConfigError, environment_overrides
from utils.logging import read_metrics


def without_timings(records):
    return [{key: value for key, value in record.items() if not key.startswith("time/")} for record in records]


def assert_same_tensors(expected: dict, actual: dict, exact: bool, tolerance: float = 0.0):
    assert expected.keys() == actual.keys()
    for key in expected:
        if exact:
            assert torch.equal(expected[key], actual[key]), key
        else:
            torch.testing.assert_close(actual[key], expected[key], rtol=tolerance, atol=tolerance, msg=key)


def assert_same_nested(expected, actual, path="state"):
    """Equal nested dicts / lists of tensors and plain values, tensors compared element by element."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and torch.equal(expected, actual), path
    elif isinstance(expected, dict):
        assert expected.keys() == actual.keys(), path
        for key in expected:
            assert_same_nested(expected[key], actual[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), path
        for index, (one, two) in enumerate(zip(expected, actual)):
            assert_same_nested(one, two, f"{path}[{index}]")
    else:
        assert expected == actual, path


def test_training_lowers_the_loss_and_writes_the_run_folder(dataset, tmp_path):
    run = str(tmp_path / "run")
    eval_metrics = train_in_process(tiny_overrides(dataset, run, epochs=16, eval_interval=8))

    records = read_metrics(os.path.join(run, "metrics.jsonl"))
    train = [record for record in records if "train/lm_loss" in record]
    assert [record["step"] for record in train] == list(range(1, 49))
    first, last = train[0]["train/lm_loss"], sum(r["train/lm_loss"] for r in train[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert 0 < eval_metrics["all"]["accuracy"] <= 1
    evals = [record for record in records if "all/accuracy" in record]
    assert [record["step"] for record in evals] == [24, 48]
    assert [os.path.basename(path) for path in list_checkpoints(run)] == ["step_24.pt", "step_48.pt"]
    assert os.path.exists(os.path.join(run, "all_config.yaml"))

    checkpoint = final_weights(run)
    assert checkpoint["step"] == 48
    assert set(checkpoint) >= {"model", "optimizers", "step", "carry", "rng", "loader", "config"}
    assert "model.inner.H_level.layers.0.self_attn.qkv_proj.weight" in checkpoint["model"]


def test_evaluate_reproduces_the_final_eval_and_saves_predictions(dataset, tmp_path):
    run = str(tmp_path / "run")
    train_in_process(tiny_overrides(dataset, run))
    logged = [record for record in read_metrics(os.path.join(run, "metrics.jsonl")) if "all/accuracy" in record][-1]

    output_dir = str(tmp_path / "preds")
    metrics = evaluate.run_evaluation(
        evaluate.EvalConfig(checkpoint=os.path.join(run, "step_24.pt"), output_dir=output_dir), CPU
    )
    for key, value in metrics["all"].items():
        assert value == logged[f"all/{key}"], key
    predictions = torch.load(os.path.join(output_dir, "step_24_all_preds.0"))
    assert predictions["inputs"].shape == (40, 81)
    assert predictions["preds"].shape == (40, 81)
    assert predictions["q_halt_logits"].shape == (40,)

    # A renamed checkpoint keeps its step (in the file) for the predictions' name.
    shutil.copy(os.path.join(run, "step_24.pt"), os.path.join(run, "best.pt"))
    evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=os.path.join(run, "best.pt"), output_dir=str(tmp_path / "best"), save_outputs=["preds"]), CPU)
    assert os.listdir(tmp_path / "best") == ["step_24_all_preds.0"]

    # The evaluation's overrides are validated like a training config.
    with pytest.raises(ConfigError, match="eval_batch_size=0 must be a positive integer"):
        evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=os.path.join(run, "step_24.pt"), eval_batch_size=0), CPU)
    with pytest.raises(ConfigError, match="save_outputs: unknown pred; choose from inputs"):
        evaluate.parse_eval_config([f"checkpoint={run}/step_24.pt", "save_outputs=[inputs,pred]"])


def test_an_original_weights_only_checkpoint_evaluates(dataset, tmp_path):
    run = str(tmp_path / "run")
    train_in_process(tiny_overrides(dataset, run, epochs=4))
    ours = evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=os.path.join(run, "step_12.pt"), save_outputs=[]), CPU)

    # The original's run folder: all_config.yaml with only its own keys, and the compiled model's
    # bare state dict saved as `step_N` (no suffix), keys prefixed `_orig_mod.`.
    original_run = tmp_path / "original_run"
    original_run.mkdir()
    config = yaml.safe_load(open(os.path.join(run, "all_config.yaml")))
    for key in ("resume", "checkpoint_every_steps", "keep_checkpoints", "stop_after_minutes", "gradient_accumulation_steps", "compile", "cuda_graphs", "wandb"):
        del config[key]
    (original_run / "all_config.yaml").write_text(yaml.dump(config))
    weights = torch.load(os.path.join(run, "step_12.pt"), weights_only=False)["model"]
    torch.save({f"_orig_mod.{key}": value for key, value in weights.items()}, original_run / "step_12")
    theirs = evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=str(original_run / "step_12"), save_outputs=[]), CPU)
    assert theirs == ours


@pytest.mark.parametrize("ema", [False, True])
def test_killed_run_resumes_to_the_same_weights(dataset, tmp_path, ema):
    # With ema=true the average is part of the state (and the evaluations, logged, run on it).
    common = dict(epochs=8, eval_interval=4, checkpoint_every_steps=5, seed=3, ema=ema, ema_rate=0.9)
    straight = str(tmp_path / "straight")
    result = run_script(["pretrain.py", *tiny_overrides(dataset, straight, **common)])
    assert result.returncode == 0, result.stderr

    interrupted = str(tmp_path / "interrupted")
    process = subprocess.Popen([sys.executable, "pretrain.py", *tiny_overrides(dataset, interrupted, **common)],
                               cwd=REPO_ROOT, env=training_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list_checkpoints(interrupted) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = list_checkpoints(interrupted)
    assert killed_at and not killed_at[-1].endswith("step_24.pt"), "the run ended before it could be killed"

    result = run_script(["pretrain.py", *tiny_overrides(dataset, interrupted, resume="true", **common)])
    assert result.returncode == 0, result.stderr
    expected, actual = final_weights(straight), final_weights(interrupted)
    assert actual["step"] == expected["step"] == 24
    assert_same_tensors(expected["model"], actual["model"], exact=True)
    assert ("ema" in expected) == ("ema" in actual) == ema
    if ema:
        assert_same_tensors(expected["ema"], actual["ema"], exact=True)
    assert len(expected["optimizers"]) == len(actual["optimizers"]) == 2
    for expected_optimizer, actual_optimizer in zip(expected["optimizers"], actual["optimizers"]):
        assert_same_nested(expected_optimizer, actual_optimizer)
    assert without_timings(read_metrics(os.path.join(interrupted, "metrics.jsonl"))) == without_timings(
        read_metrics(os.path.join(straight, "metrics.jsonl"))
    )


def test_crash_before_an_evaluation_does_not_skip_it_on_resume(dataset, tmp_path, monkeypatch):
    # 12 steps per evaluation: the step-12 checkpoint falls on an iteration's last batch. A crash
    # before that evaluation must not leave a checkpoint that resumes after it.
    common = dict(checkpoint_every_steps=12, checkpoint_every_eval="false")
    straight = str(tmp_path / "straight")
    train_in_process(tiny_overrides(dataset, straight, **common))

    real_evaluate = pretrain.evaluate

    def crashing_evaluate(*args, **kwargs):
        raise KeyboardInterrupt

    crashed = str(tmp_path / "crashed")
    monkeypatch.setattr(pretrain, "evaluate", crashing_evaluate)
    with pytest.raises(KeyboardInterrupt):
        train_in_process(tiny_overrides(dataset, crashed, **common))
    monkeypatch.setattr(pretrain, "evaluate", real_evaluate)
    train_in_process(tiny_overrides(dataset, crashed, resume="true", **common))

    assert [os.path.basename(path) for path in list_checkpoints(crashed)] == ["step_12.pt", "step_24.pt"]
    assert_same_tensors(final_weights(straight)["model"], final_weights(crashed)["model"], exact=True)
    assert without_timings(read_metrics(os.path.join(crashed, "metrics.jsonl"))) == without_timings(
        read_metrics(os.path.join(straight, "metrics.jsonl"))
    )


def without_eval_at(records, step):
    return [record for record in records if not (record["step"] == step and "time/eval_seconds" in record)]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_time_limit_stops_with_an_evaluation_and_a_checkpoint_and_resume_finishes_the_same_run(dataset, tmp_path, accumulation):
    # The clock is read every 10 steps, so a limit that is already spent stops the run at step 10,
    # inside the first iteration (12 steps per evaluation). With micro-batches, each has its own
    # ACT carry in flight, and all of them must come back.
    common = dict(gradient_accumulation_steps=accumulation)
    straight = str(tmp_path / "straight")
    train_in_process(tiny_overrides(dataset, straight, **common))

    stopped = str(tmp_path / "stopped")
    eval_metrics = train_in_process(tiny_overrides(dataset, stopped, stop_after_minutes=1e-9, **common))
    assert [os.path.basename(path) for path in list_checkpoints(stopped)] == ["step_10.pt"]
    records = read_metrics(os.path.join(stopped, "metrics.jsonl"))
    assert records[-1]["step"] == 10 and records[-1]["all/lm_loss"] == eval_metrics["all"]["lm_loss"]

    train_in_process(tiny_overrides(dataset, stopped, resume="true", **common))
    assert_same_tensors(final_weights(straight)["model"], final_weights(stopped)["model"], exact=True)
    assert without_timings(without_eval_at(read_metrics(os.path.join(stopped, "metrics.jsonl")), 10)) == without_timings(
        read_metrics(os.path.join(straight, "metrics.jsonl"))
    )


def assert_same_run(expected_folder, actual_folder, stopped_at=None):
    """The same losses, accuracies and final weights, up to float rounding. `stopped_at`: the step
    at which the actual run stopped on its time limit, whose extra evaluation is left out."""
    expected_log = read_metrics(os.path.join(expected_folder, "metrics.jsonl"))
    actual_log = without_eval_at(read_metrics(os.path.join(actual_folder, "metrics.jsonl")), stopped_at)
    assert [record["step"] for record in expected_log] == [record["step"] for record in actual_log]
    for one, two in zip(expected_log, actual_log):
        for key in one:
            if key.endswith("loss") or key.endswith("accuracy"):
                assert math.isclose(one[key], two[key], rel_tol=1e-5, abs_tol=1e-6), (one["step"], key, one[key], two[key])
    assert_same_tensors(final_weights(expected_folder)["model"], final_weights(actual_folder)["model"], exact=False, tolerance=1e-4)


def train_whole_and_in_two_micro_batches(data_path, tmp_path, common) -> str:
    """Train once on whole batches and once on two micro-batches per batch; assert they are the same
    run and return the whole-batch run's folder. Without ACT exploration no random draw depends on
    how the batch is split."""
    common = {**common, "arch.halt_exploration_prob": 0.0}
    whole = str(tmp_path / "whole")
    train_in_process(tiny_overrides(data_path, whole, **common))
    accumulated = str(tmp_path / "accumulated")
    train_in_process(tiny_overrides(data_path, accumulated, gradient_accumulation_steps=2, **common))
    assert_same_run(whole, accumulated)
    return whole


def test_gradient_accumulation_trains_like_the_whole_batch_and_resumes_with_another_split(dataset, tmp_path):
    # Two micro-batches of 16 in one process are the two ranks of a 2-process run: the same
    # gradients, puzzle-embedding update and metrics as one batch of 32, up to float rounding.
    common = {"arch.halt_exploration_prob": 0.0}
    whole = train_whole_and_in_two_micro_batches(dataset, tmp_path, common)

    # The checkpoint keeps the carry rows in batch order, so a run stopped with 4 micro-batches
    # continues with 1.
    switched = str(tmp_path / "switched")
    train_in_process(tiny_overrides(dataset, switched, gradient_accumulation_steps=4, stop_after_minutes=1e-9, **common))
    train_in_process(tiny_overrides(dataset, switched, gradient_accumulation_steps=1, resume="true", **common))
    assert_same_run(whole, switched, stopped_at=10)


def test_gradient_accumulation_updates_the_puzzle_embeddings_like_the_whole_batch(tmp_path):
    # ARC puzzles have their own embedding rows (17 here), so this checks that the rows of every
    # micro-batch reach the sign-SGD step, not only the last micro-batch's, in one process and in two.
    arc_data = os.path.join(REPO_ROOT, "tests", "data", "arc_example", "data")
    common = {"global_batch_size": 8, "epochs": 24, "eval_interval": 8, "arch.halt_exploration_prob": 0.0}
    whole = train_whole_and_in_two_micro_batches(arc_data, tmp_path, common)
    # Two processes of two micro-batches each: every process's set-aside rows are all-gathered too.
    both = str(tmp_path / "both")
    result = run_torchrun(2, ["pretrain.py", *tiny_overrides(arc_data, both, gradient_accumulation_steps=2, **common)])
    assert result.returncode == 0, result.stderr
    assert_same_run(whole, both)
    embedding_key = next(key for key in final_weights(whole)["model"] if key.endswith("puzzle_emb.weights"))
    assert final_weights(whole)["model"][embedding_key].abs().sum() > 0

    # A run stopped on one process resumes on two, and one stopped on two resumes on one: the
    # embedding optimiser gathers over the processes of the resumed run, not those of the checkpoint.
    def launch(folder, processes, **extra):
        overrides = tiny_overrides(arc_data, folder, **common, **extra)
        if processes == 1:
            train_in_process(overrides)
            return
        result = run_torchrun(processes, ["pretrain.py", *overrides])
        assert result.returncode == 0, result.stderr

    for first, second in ((1, 2), (2, 1)):
        switched = str(tmp_path / f"from_{first}_to_{second}")
        launch(switched, first, stop_after_minutes=1e-9)
        launch(switched, second, resume="true")
        assert_same_run(whole, switched, stopped_at=10)


def test_two_processes_match_one(dataset, tmp_path):
    common = dict(epochs=4, eval_interval=4, **{"arch.halt_exploration_prob": 0.0})
    single = str(tmp_path / "single")
    assert run_script(["pretrain.py", *tiny_overrides(dataset, single, **common)]).returncode == 0

    # The two-process run is stopped by its time limit at step 10 (rank 0's clock decides for both)
    # and resumed: that must not change its numbers either.
    double = str(tmp_path / "double")
    for extra in ({"stop_after_minutes": 1e-9}, {"resume": "true"}):
        result = run_torchrun(2, ["pretrain.py", *tiny_overrides(dataset, double, **common, **extra)])
        assert result.returncode == 0, result.stderr
    assert os.path.exists(os.path.join(double, "step_10.pt"))
    assert_same_run(single, double, stopped_at=10)

    # Evaluation over two processes: each rank writes its slice, together the whole test split.
    result = run_torchrun(2, ["evaluate.py", f"checkpoint={double}/step_12.pt", f"output_dir={tmp_path}/preds"])
    assert result.returncode == 0, result.stderr
    rank_files = [torch.load(tmp_path / "preds" / f"step_12_all_preds.{rank}") for rank in (0, 1)]
    evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=f"{double}/step_12.pt", output_dir=f"{tmp_path}/one"), CPU)
    one_process = torch.load(tmp_path / "one" / "step_12_all_preds.0")

    def example_rows(predictions):
        return sorted(map(tuple, torch.cat([predictions["inputs"], predictions["preds"].to(torch.int32)], dim=1).tolist()))

    assert sum(len(rank_file["inputs"]) for rank_file in rank_files) == 40
    assert example_rows({key: torch.cat([rank_file[key] for rank_file in rank_files]) for key in ("inputs", "preds")}) == example_rows(one_process)


def test_wandb_offline_needs_no_login(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    overrides = tiny_overrides(dataset, str(run), epochs=4, **{"wandb.mode": "offline"})
    train_in_process(overrides)
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert any(offline_runs[0].glob("*.wandb"))

    # A resumed run continues the same W&B run (same id, a second offline segment to sync).
    train_in_process(overrides + ["resume=true"])
    run_id = (run / "wandb_run_id.txt").read_text()
    assert sorted(path.name.endswith(run_id) for path in (run / "wandb").glob("offline-run-*")) == [True, True]


def test_starting_over_an_existing_run_is_refused(dataset, tmp_path):
    run = str(tmp_path / "run")
    train_in_process(tiny_overrides(dataset, run, epochs=4))
    before = sorted(os.listdir(run))
    with pytest.raises(ConfigError, match="resume=true"):
        train_in_process(tiny_overrides(dataset, run, epochs=4))
    assert sorted(os.listdir(run)) == before


@pytest.mark.parametrize(
    "override, message",
    [
        ({"lrr": 1}, "lrr: unknown key. Did you mean 'lr'"),
        ({"arch.hiden_size": 8}, "arch.hiden_size: unknown key. Did you mean 'arch.hidden_size'"),
        ({"epochs": 8, "eval_interval": 3}, "eval_interval=3 must divide epochs=8"),
        ({"global_batch_size": "many"}, "global_batch_size"),
        ({"stop_after_minutes": 0}, "stop_after_minutes=0.0 must be a positive number of minutes"),
        ({"gradient_accumulation_steps": 3}, r"global_batch_size=32 is not divisible by the world size 1 x gradient_accumulation_steps=3 = 3"),
        ({"cuda_graphs": "true", "compile": "false"}, "cuda_graphs=true needs torch.compile"),
        ({"cuda_graphs": "true", "gradient_accumulation_steps": 2}, "Set gradient_accumulation_steps=1 \\(now 2\\) or cuda_graphs=false"),
        ({"lr": -1}, "lr=-1.0 must be >= 0"),
        ({"seed": -1}, "seed=-1 must be >= 0"),
        ({"beta1": 1.5}, "beta1=1.5 must be in \\[0, 1\\)"),
        ({"lr_min_ratio": 2}, "lr_min_ratio=2.0 must be in \\[0, 1\\]"),
        ({"arch.loss.loss_type": "foo"}, "arch.loss.loss_type: Input should be 'stablemax_cross_entropy' or 'softmax_cross_entropy'"),
        ({"eval_save_outputs": "[inputs,pred]"}, "eval_save_outputs: unknown pred; choose from inputs, labels"),
        ({"arch.num_heads": "two"}, "arch.num_heads: Input should be a valid integer"),
    ],
)
def test_bad_config_stops_before_writing_anything(dataset, tmp_path, override, message):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        train_in_process(tiny_overrides(dataset, str(run), **override))
    assert not run.exists()


def test_batch_size_must_divide_over_processes(dataset, tmp_path):
    run = tmp_path / "run"
    result = run_torchrun(2, ["pretrain.py", *tiny_overrides(dataset, str(run), global_batch_size=33)])
    assert result.returncode != 0
    assert "global_batch_size=33 is not divisible by the world size 2" in result.stderr
    assert not run.exists()


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    from models.losses import ACTLossHead

    calls = {"count": 0}
    original_forward = ACTLossHead.forward

    def forward_turning_nan_at_step_7(self, *args, **kwargs):
        carry, loss, metrics, outputs, halted = original_forward(self, *args, **kwargs)
        if self.training:
            calls["count"] += 1
            if calls["count"] == 7:
                loss = loss * float("nan")
                metrics = {**metrics, "lm_loss": metrics["lm_loss"] * float("nan")}
        return carry, loss, metrics, outputs, halted

    monkeypatch.setattr(ACTLossHead, "forward", forward_turning_nan_at_step_7)
    run = str(tmp_path / "run")
    with pytest.raises(pretrain.NonFiniteError, match="step 7"):
        train_in_process(tiny_overrides(dataset, run, checkpoint_every_steps=3))
    assert [os.path.basename(path) for path in list_checkpoints(run)] == ["step_3.pt", "step_6.pt"]


def test_keep_checkpoints_prunes_old_files(dataset, tmp_path):
    run = str(tmp_path / "run")
    train_in_process(tiny_overrides(dataset, run, checkpoint_every_steps=4, keep_checkpoints=2))
    assert [os.path.basename(path) for path in list_checkpoints(run)] == ["step_20.pt", "step_24.pt"]


def test_resume_with_another_config_is_refused(dataset, tmp_path):
    run = str(tmp_path / "run")
    train_in_process(tiny_overrides(dataset, run, epochs=4))
    with pytest.raises(ConfigError, match="lr: 0.003 in the checkpoint, 0.001 now"):
        train_in_process(tiny_overrides(dataset, run, epochs=4, lr=1e-3, resume="true"))
    shutil.rmtree(run)


def test_resume_from_a_weights_only_file_is_refused(dataset, tmp_path):
    run = str(tmp_path / "run")
    train_in_process(tiny_overrides(dataset, run, epochs=4))
    newest = list_checkpoints(run)[-1]
    torch.save(final_weights(run)["model"], newest)
    before = sorted(os.listdir(run))
    with pytest.raises(CheckpointError, match=r"step_12.pt is not a full training state \(it lacks model, optimizers, step, carry, rng, loader, config\)"):
        train_in_process(tiny_overrides(dataset, run, epochs=4, resume="true"))
    assert sorted(os.listdir(run)) == before


def test_disable_compile_is_recorded_as_compile_false(dataset, tmp_path):
    # The original's switch is set-or-not (DISABLE_COMPILE=0 disables too); the entry points turn it
    # into a config key, so the saved config says how the run ran.
    assert environment_overrides({"DISABLE_COMPILE": "0"}) == ["compile=false"]
    assert environment_overrides({}) == []
    run = str(tmp_path / "run")
    environment = dict(training_environment(), DISABLE_COMPILE="1")
    result = subprocess.run([sys.executable, "pretrain.py", *tiny_overrides(dataset, run, epochs=4)], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(open(os.path.join(run, "all_config.yaml")))["compile"] is False


def test_cuda_graphs_are_advised_only_for_quack_kernels_launched_from_python():
    assert "add cuda_graphs=true" in pretrain.cuda_graphs_hint("quack block, quack MLP with gradient", "on")
    assert pretrain.cuda_graphs_hint("quack block", "on, CUDA graphs") is None
    assert pretrain.cuda_graphs_hint("quack block", "off") is None
    assert pretrain.cuda_graphs_hint("off", "on") is None


def test_copy_tensors_copies_a_carry_out_of_shared_memory():
    # CudaGraphStep's copy of what a graph replay returns: same classes and values, its own memory.
    from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1Carry, HierarchicalReasoningModel_ACTV1InnerCarry

    inner = HierarchicalReasoningModel_ACTV1InnerCarry(z_H=torch.randn(2, 3), z_L=torch.randn(2, 3))
    carry = HierarchicalReasoningModel_ACTV1Carry(inner, torch.tensor([1, 2]), torch.tensor([True, False]), {"inputs": torch.arange(6).view(2, 3)})
    copied, count = pretrain.copy_tensors((carry, 7))
    assert count == 7 and type(copied) is type(carry) and type(copied.inner_carry) is type(inner)
    pairs = [(copied.inner_carry.z_H, inner.z_H), (copied.inner_carry.z_L, inner.z_L), (copied.steps, carry.steps),
             (copied.halted, carry.halted), (copied.current_data["inputs"], carry.current_data["inputs"])]
    for copy, original in pairs:
        assert torch.equal(copy, original) and copy.data_ptr() != original.data_ptr()
    inner.z_H.zero_()  # the next replay overwriting the original leaves the copy as it was
    assert not torch.equal(copied.inner_carry.z_H, inner.z_H)


def test_reproduce_script_trains_evaluates_and_plots(dataset, tmp_path):
    # The recipe script with a tiny model on the tiny dataset: wiring, resume=true on a fresh folder, plot.
    run = tmp_path / "run"
    environment = dict(training_environment(), DATA=dataset, RUN=str(run))
    arguments = [item for item in tiny_overrides(dataset, str(run)) if not item.startswith(("data_path=", "checkpoint_path="))]
    result = subprocess.run(["bash", "scripts/reproduce_sudoku_1k.sh", *arguments], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = read_metrics(run / "metrics.jsonl")
    assert all("time/elapsed_seconds" in record for record in records)
    assert [os.path.basename(path) for path in list_checkpoints(str(run))] == ["step_12.pt", "step_24.pt"]
    assert (run / "curves.png").stat().st_size > 10_000


def test_command_line_help_and_a_missing_dataset(tmp_path):
    result = run_script(["pretrain.py", "--help"])
    assert result.returncode == 0
    assert "global_batch_size: 768" in result.stdout and "halt_max_steps: 16" in result.stdout

    result = run_script(["pretrain.py", f"data_path={tmp_path}/nowhere", f"checkpoint_path={tmp_path}/run", "wandb.mode=disabled"])
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert f"{tmp_path}/nowhere" in result.stderr
    assert not (tmp_path / "run").exists()
