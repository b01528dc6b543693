"""TRM's training keys, for any architecture: ema / ema_rate, load_checkpoint, freeze_weights,
min_eval_interval and evaluators (ARC pass@K during training's evaluations). On the CPU.
Resuming a run with ema=true after SIGKILL: tests/test_training.py."""

import contextlib
import json
import os

import pytest
import torch

import evaluate
import pretrain
from dataset.common import PuzzleDatasetMetadata
from evaluators.arc import ARC, load_predictions, main as arc_command, score, write_submission
from models.ema import EMAHelper
from models.losses import IGNORE_LABEL_ID, ACTLossHead
from tests.test_training import CPU, assert_same_tensors, final_weights, run_script, train_in_process
from tests.tiny_runs import REPO_ROOT, tiny_overrides
from utils.checkpoint import config_changes, list_checkpoints, with_defaults_of_newer_keys
from utils.config import ConfigError, load_config
from utils.logging import read_metrics

ARC_DATA = os.path.join(REPO_ROOT, "tests", "data", "arc_example", "data")
EMBEDDING = "model.inner.puzzle_emb.weights"
# A tiny model on the 17-puzzle ARC example: 9 steps, one evaluation at the end.
ARC_RUN = {"global_batch_size": 8, "epochs": 8, "eval_interval": 8}


def eval_records(folder):
    return [record for record in read_metrics(os.path.join(folder, "metrics.jsonl")) if "time/eval_seconds" in record]


# ----------------------------------------------------------------------------------------------
# EMA


def test_ema_update_rule_by_hand():
    # Values with few binary digits and mu = 3/4: every step is exact in float32, so the average must
    # equal the hand computation bit for bit.
    model = torch.nn.Linear(3, 2)
    model.register_buffer("table", torch.ones(4))  # a buffer (as the puzzle embedding): not averaged
    model.bias.requires_grad_(False)  # not trained: not averaged
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [4.0, 0.0, -1.5]]))
    ema = EMAHelper(model, mu=0.75)
    assert list(ema.state_dict()) == ["weight"]

    expected = model.weight.detach().clone()
    for step in range(1, 4):
        with torch.no_grad():  # what an optimiser step does: new values in the same tensor
            model.weight.copy_(torch.tensor([[2.0, 8.0, -4.0], [0.25, -1.0, 16.0]]) * step)
        ema.update()
        expected = 0.25 * model.weight.detach() + 0.75 * expected
    assert torch.equal(ema.state_dict()["weight"], expected)
    assert ema.state_dict()["weight"][0, 0].item() == 0.25 * 6 + 0.75 * (0.25 * 4 + 0.75 * (0.25 * 2 + 0.75 * 1.0))

    # Inside `applied` the model holds the average, in the same memory; afterwards its own values again.
    trained, address = model.weight.detach().clone(), model.weight.data_ptr()
    with ema.applied():
        assert torch.equal(model.weight, expected) and model.weight.data_ptr() == address
    assert torch.equal(model.weight, trained) and model.weight.data_ptr() == address


def test_ema_rate_and_min_eval_interval_are_checked():
    for override, message in (("ema_rate=1.0", r"ema_rate=1.0 must be in \(0, 1\)"), ("ema_rate=0", r"ema_rate=0.0 must be in \(0, 1\)"),
                              ("min_eval_interval=-1", "min_eval_interval=-1 must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            load_config(["data_path=data/x", override])
    config = load_config(["data_path=data/x"])
    assert (config.ema, config.ema_rate, config.min_eval_interval, config.load_checkpoint, config.freeze_weights, config.evaluators) == (
        False, 0.999, 0, None, False, None)


def test_evaluations_use_the_ema_weights_and_training_is_unchanged(dataset, tmp_path):
    common = dict(epochs=8, eval_interval=4, seed=1)
    plain, averaged = str(tmp_path / "plain"), str(tmp_path / "ema")
    train_in_process(tiny_overrides(dataset, plain, **common))
    train_in_process(tiny_overrides(dataset, averaged, ema="true", ema_rate=0.8, **common))

    # The evaluation at step 12 swapped the average in and the trained weights back: training went
    # on exactly as without EMA. The checkpoint keeps both: the raw weights and the average.
    without, checkpoint = final_weights(plain), final_weights(averaged)
    assert_same_tensors(without["model"], checkpoint["model"], exact=True)
    trained_names = [name for name, parameter in pretrain.build_loss_head(load_config(tiny_overrides(dataset, plain)),
                                                                          evaluate_metadata(dataset), CPU).named_parameters()]
    assert sorted(checkpoint["ema"]) == sorted(trained_names) and EMBEDDING not in checkpoint["ema"]
    assert all(not torch.equal(checkpoint["ema"][name], checkpoint["model"][name]) for name in trained_names)
    train_records = lambda folder: [r for r in read_metrics(os.path.join(folder, "metrics.jsonl")) if "train/lm_loss" in r]
    assert [{k: v for k, v in r.items() if k != "time/elapsed_seconds"} for r in train_records(plain)] == [
        {k: v for k, v in r.items() if k != "time/elapsed_seconds"} for r in train_records(averaged)]

    # evaluate.py evaluates the average (as training's last evaluation did); ema=false the raw
    # weights, which is what a checkpoint without an average (an older one) gives.
    logged = {key.removeprefix("all/"): value for key, value in eval_records(averaged)[-1].items() if key.startswith("all/")}
    step_file = os.path.join(averaged, "step_24.pt")
    assert evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=step_file, save_outputs=[]), CPU)["all"] == logged
    raw = evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=step_file, save_outputs=[], ema=False), CPU)["all"]
    assert raw != logged
    older = str(tmp_path / "ema" / "older.pt")
    torch.save({key: value for key, value in checkpoint.items() if key not in ("ema", "checksum")}, older)
    assert evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=older, save_outputs=[]), CPU)["all"] == raw
    # The plain run's evaluation (raw weights) is the same computation.
    assert evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=os.path.join(plain, "step_24.pt"), save_outputs=[]), CPU)["all"] == raw
    with pytest.raises(ConfigError, match="ema=true: .*older.pt holds no EMA weights"):
        evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=older, save_outputs=[], ema=True), CPU)
    assert "ema=false evaluates its raw (last trained) weights" in run_script(["evaluate.py", "--help"]).stdout


def evaluate_metadata(data_path: str) -> PuzzleDatasetMetadata:
    with open(os.path.join(data_path, "test", "dataset.json")) as file:
        return PuzzleDatasetMetadata(**json.load(file))


def test_a_checkpoint_written_before_the_new_keys_resumes():
    # Keys added to the config later are read as their defaults, so older checkpoints stay resumable.
    current = load_config(["data_path=data/x"]).model_dump()
    saved = {key: value for key, value in current.items()
             if key not in ("evaluators", "min_eval_interval", "ema", "ema_rate", "load_checkpoint", "freeze_weights")}
    assert config_changes(with_defaults_of_newer_keys(saved), current) == []
    assert config_changes(with_defaults_of_newer_keys(saved), {**current, "ema": True}) == ["ema: False in the checkpoint, True now"]


# ----------------------------------------------------------------------------------------------
# load_checkpoint and freeze_weights


@pytest.fixture(scope="module")
def arc_run(tmp_path_factory):
    """A trained tiny model on the ARC example, with an EMA: the weights to start other runs from."""
    folder = str(tmp_path_factory.mktemp("arc") / "run")
    train_in_process(tiny_overrides(ARC_DATA, folder, ema="true", ema_rate=0.9, evaluators="[]", **ARC_RUN))
    return list_checkpoints(folder)[-1]


def test_load_checkpoint_with_frozen_weights_trains_only_the_puzzle_embedding(arc_run, tmp_path, capsys):
    source = torch.load(arc_run, weights_only=True)
    run = str(tmp_path / "adapted")
    train_in_process(tiny_overrides(ARC_DATA, run, load_checkpoint=arc_run, freeze_weights="true", ema="true", **ARC_RUN))
    printed = capsys.readouterr().out
    assert f"load_checkpoint: starting from the EMA weights of {arc_run}" in printed
    assert "ema=true: nothing to average, as freeze_weights=true trains only the puzzle embedding" in printed

    # Started from the file's EMA weights, and 9 steps changed none of them but the puzzle embedding.
    adapted = final_weights(run)
    start = {**source["model"], **source["ema"]}
    assert adapted["step"] == source["step"] == 9
    assert_same_tensors({k: v for k, v in start.items() if k != EMBEDDING}, {k: v for k, v in adapted["model"].items() if k != EMBEDDING}, exact=True)
    assert not torch.equal(adapted["model"][EMBEDDING], start[EMBEDDING])
    # One optimiser (the embedding's sign-SGD), no Adam state for frozen weights, no average.
    assert len(adapted["optimizers"]) == 1 and "ema" not in adapted


def test_load_checkpoint_resizes_the_puzzle_embedding_of_an_original_weights_file(arc_run, tmp_path, capsys):
    # An original weights-only file (compiled model's keys, `_orig_mod.`), made for 5 puzzles.
    weights = dict(torch.load(arc_run, weights_only=True)["model"])
    weights[EMBEDDING] = torch.arange(5 * 32, dtype=torch.float32).view(5, 32) / 64
    original = tmp_path / "original" / "step_100"
    original.parent.mkdir()
    torch.save({f"_orig_mod.{key}": value for key, value in weights.items()}, original)

    run = str(tmp_path / "adapted")
    train_in_process(tiny_overrides(ARC_DATA, run, load_checkpoint=str(original), freeze_weights="true", **ARC_RUN))
    printed = capsys.readouterr().out
    assert (f"load_checkpoint: {EMBEDDING} [5, 32] -> [17, 32]: every row set to the mean of the checkpoint's rows\n"
            f"load_checkpoint: starting from the weights of {original}\n") in printed

    adapted = final_weights(run)["model"]
    assert_same_tensors({k: v for k, v in weights.items() if k != EMBEDDING}, {k: v for k, v in adapted.items() if k != EMBEDDING}, exact=True)
    # Every row started at the mean; the rows of the puzzles drawn for training moved. Row 0 is the
    # blank puzzle, which no training batch uses.
    moved = (adapted[EMBEDDING] != weights[EMBEDDING].mean(dim=0)).any(dim=1)
    assert not moved[0] and moved.any()


def test_load_checkpoint_refuses_other_shapes_and_missing_files(arc_run, tmp_path):
    weights = dict(torch.load(arc_run, weights_only=True)["model"])
    weights["model.inner.lm_head.weight"] = weights["model.inner.lm_head.weight"][:11]
    mismatched = str(tmp_path / "mismatched.pt")
    torch.save(weights, mismatched)
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"(?s)load_checkpoint={mismatched}: .*shape mismatches: model.inner.lm_head.weight: expected \(12, 32\) vs found \(11, 32\)\nFix: train with the arch.\* settings"):
        train_in_process(tiny_overrides(ARC_DATA, str(run), load_checkpoint=mismatched, **ARC_RUN))
    with pytest.raises(ConfigError, match=rf"load_checkpoint={tmp_path}/nowhere.pt: no such file"):
        train_in_process(tiny_overrides(ARC_DATA, str(run), load_checkpoint=f"{tmp_path}/nowhere.pt", **ARC_RUN))
    assert not run.exists()


def test_freeze_weights_needs_a_puzzle_embedding(dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"freeze_weights=true trains only the puzzle embedding, and this model has none \(arch.puzzle_emb_ndim=0\)"):
        train_in_process(tiny_overrides(dataset, str(tmp_path / "run"), freeze_weights="true", **{"arch.puzzle_emb_ndim": 0}))


# ----------------------------------------------------------------------------------------------
# min_eval_interval


@pytest.mark.parametrize("min_eval_interval, eval_steps", [(0, [6, 12, 18, 24]), (2, [18, 24]), (10, [24])])
def test_min_eval_interval_skips_the_early_evaluations(dataset, tmp_path, min_eval_interval, eval_steps):
    run = str(tmp_path / "run")
    train_in_process(tiny_overrides(dataset, run, eval_interval=2, min_eval_interval=min_eval_interval))
    assert [record["step"] for record in eval_records(run)] == eval_steps
    # Checkpoints are still written at every interval (checkpoint_every_eval).
    assert [os.path.basename(path) for path in list_checkpoints(run)] == ["step_6.pt", "step_12.pt", "step_18.pt", "step_24.pt"]


# ----------------------------------------------------------------------------------------------
# evaluators


def arc_metadata() -> PuzzleDatasetMetadata:
    return evaluate_metadata(ARC_DATA)


def test_evaluators_default_to_arc_on_arc_data_only_and_take_keyword_arguments(dataset):
    def build(data_path, *overrides):
        config = load_config([f"data_path={data_path}", *overrides])
        return pretrain.create_evaluators(config, [data_path], evaluate_metadata(data_path))

    assert build(dataset) == [] and build(ARC_DATA, "evaluators=[]") == []
    (automatic,) = build(ARC_DATA)
    assert type(automatic) is ARC and automatic.aggregated_voting is False and automatic.submission_K == 2
    (given,) = build(ARC_DATA, "evaluators=[{name: arc@ARC, submission_K: 3, pass_Ks: [1, 2], aggregated_voting: true}]")
    assert (given.submission_K, given.pass_Ks, given.aggregated_voting) == (3, (1, 2), True)

    with pytest.raises(ConfigError, match="'arc@Arc' names no class: expected module@Class under evaluators/, e.g. arc@ARC"):
        build(ARC_DATA, "evaluators=[{name: arc@Arc}]")
    with pytest.raises(ConfigError, match=r"evaluators\[0\] \(arc@ARC\) on .*: .*unexpected keyword argument 'submision_K'"):
        build(ARC_DATA, "evaluators=[{name: arc@ARC, submision_K: 3}]")
    with pytest.raises(ConfigError, match=r"evaluators\[0\] \(arc@ARC\) on .*sudoku-tiny: .* has seq_len 81, not 900: not an ARC dataset"):
        build(dataset, "evaluators=[{name: arc@ARC}]")


def test_arc_pass_at_k_is_logged_at_each_evaluation_as_the_arc_command_scores_the_predictions(tmp_path, monkeypatch, capsys):
    # A tiny model solves nothing; in evaluation, the rows of some puzzles answer with their labels:
    # 3 of the 4 copies of the first task, 1 of the second, 2 of the third, none of the fourth. Votes of
    # right and wrong grids decide pass@K, and the fourth task stays unsolved.
    original_forward = ACTLossHead.forward

    def forward_answering_some_rows(self, *args, **kwargs):
        carry, loss, metrics, outputs, halted = original_forward(self, *args, **kwargs)
        if not self.training and "preds" in outputs:
            labels = carry.current_data["labels"]
            right = torch.isin(carry.current_data["puzzle_identifiers"], torch.tensor([1, 2, 3, 5, 9, 10])).view(-1, 1)
            outputs = {**outputs, "preds": torch.where(right, torch.where(labels == IGNORE_LABEL_ID, 0, labels), outputs["preds"])}
        return carry, loss, metrics, outputs, halted

    monkeypatch.setattr(ACTLossHead, "forward", forward_answering_some_rows)
    run = str(tmp_path / "run")
    eval_metrics = train_in_process(tiny_overrides(ARC_DATA, run, global_batch_size=8, epochs=8, eval_interval=4,
                                                   eval_save_outputs="[inputs,puzzle_identifiers,preds,q_halt_logits]"))
    assert "evaluators: arc@ARC (ARC pass@K at each evaluation, the default on an ARC dataset" in capsys.readouterr().out

    records = eval_records(run)
    assert len(records) == 2  # one evaluation per eval_interval
    for record in records:
        step = record["step"]
        expected = arc_command([os.path.join(run, f"step_{step}_all_preds.0"), "--dataset", ARC_DATA])
        assert {key: value for key, value in record.items() if key.startswith("ARC/")} == {f"ARC/pass@{k}": v for k, v in expected.pass_at.items()}
        assert expected.pass_at[1] >= 0.25 and expected.pass_at[1000] == 0.75
        write_submission(expected, str(tmp_path / f"expected_{step}.json"))
        assert open(os.path.join(run, f"evaluator_ARC_step_{step}", "submission.json")).read() == (tmp_path / f"expected_{step}.json").read_text()
    assert eval_metrics["ARC"] == {f"pass@{k}": v for k, v in score(load_predictions([run]), ARC_DATA).pass_at.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile with CUDA graphs on a GPU: the compiled step must read the average copied into its parameters")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_compiled_evaluation_reads_the_ema_copied_into_the_parameters(cuda_graphs):
    from benchmarks.train_step import SHAPES, shape_metadata, synthetic_batches
    from tests.test_model_gpu import OneSetLoader
    from utils.distributed import DistributedContext

    shape = SHAPES["tiny"]
    config = load_config(["data_path=synthetic", f"global_batch_size={shape.batch}", "wandb.mode=disabled", "compile=true",
                          f"cuda_graphs={str(cuda_graphs).lower()}", "lr_warmup_steps=1", "ema=true", "ema_rate=0.5",
                          "++arch.halt_exploration_prob=0.0"] + [f"++arch.{item}" for item in shape.arch])
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda"))
    state = pretrain.build_train_state(config, shape_metadata(shape, 1), context)
    batches = synthetic_batches(shape, shape.batch, 1)
    for step in range(4):
        pretrain.train_batch(config, state, batches[step % len(batches)], config.global_batch_size, context)

    def evaluation(step_fn, ema):
        evaluated = pretrain.TrainState(loss_head=state.loss_head, step_fn=step_fn, optimizers=[], base_lrs=[], carries=None, step=4, total_steps=4)
        with state.ema.applied() if ema else contextlib.nullcontext():
            return pretrain.evaluate(config, evaluated, OneSetLoader(batches[:2]), context, save_dir=None)["all"]

    trained = {name: value.clone() for name, value in state.loss_head.state_dict().items()}
    compiled, eager = evaluation(state.step_fn, ema=True), evaluation(state.loss_head, ema=True)
    compiled_raw, eager_raw = evaluation(state.step_fn, ema=False), evaluation(state.loss_head, ema=False)
    for key in eager:
        assert compiled[key] == pytest.approx(eager[key], rel=1e-2, abs=1e-4), key
        assert compiled_raw[key] == pytest.approx(eager_raw[key], rel=1e-2, abs=1e-4), key
    assert eager["lm_loss"] != pytest.approx(eager_raw["lm_loss"], rel=1e-3)
    assert_same_tensors(trained, state.loss_head.state_dict(), exact=True)
    # The compiled training step still runs on the (restored) trained weights.
    pending = pretrain.train_batch(config, state, batches[0], config.global_batch_size, context)
    assert torch.isfinite(torch.tensor(list(pretrain.finish_train_metrics(pending, config.global_batch_size).values()))).all()
