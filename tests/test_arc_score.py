"""evaluators/arc.py on hand-made datasets and predictions whose scores are known in advance, and its
ARC evaluator on the shipped example, in one process and gathered over two."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dataset.common import PuzzleDatasetMetadata, dihedral_transform
from evaluators import arc
from evaluators.arc import ARC, crop_grids, load_predictions, parse_name, score, submission, write_submission
from tests.make_arc_example import DEFAULT_OUTPUT

PERM = "0214365879"  # colour c becomes int(PERM[c])


def encode(grid) -> np.ndarray:
    """A grid as the ARC builder stores it: colours + 2 at the top-left, markers after it."""
    grid = np.asarray(grid, dtype=np.uint8)
    h, w = grid.shape
    canvas = np.zeros((30, 30), dtype=np.uint8)
    canvas[:h, :w] = grid + 2
    if h < 30:
        canvas[h, :w] = 1
    if w < 30:
        canvas[:h, w] = 1
    return canvas.reshape(-1)


def augment(grid, dihedral: int, perm: str) -> np.ndarray:
    colours = np.array([int(d) for d in perm], dtype=np.uint8)
    return dihedral_transform(colours[np.asarray(grid, dtype=np.uint8)], dihedral)


def write_split(folder, puzzles, identifiers):
    """puzzles: name -> list of (input grid, output grid), one puzzle per name, one group each."""
    os.makedirs(folder, exist_ok=True)
    inputs, labels, puzzle_ids, puzzle_indices = [], [], [], [0]
    for name, examples in puzzles.items():
        for inp, out in examples:
            inputs.append(encode(inp))
            labels.append(encode(out))
        puzzle_ids.append(identifiers.index(name))
        puzzle_indices.append(len(inputs))
    arrays = {
        "inputs": np.stack(inputs), "labels": np.stack(labels),
        "puzzle_identifiers": np.array(puzzle_ids, dtype=np.int32),
        "puzzle_indices": np.array(puzzle_indices, dtype=np.int32),
        "group_indices": np.arange(len(puzzles) + 1, dtype=np.int32),
    }
    for key, value in arrays.items():
        np.save(os.path.join(folder, f"all__{key}.npy"), value)
    metadata = dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=900,
                    num_puzzle_identifiers=len(identifiers), total_groups=len(puzzles),
                    mean_puzzle_examples=len(inputs) / len(puzzles), sets=["all"])
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(metadata, f)


def write_dataset(root, test_puzzles, train_puzzles=None):
    train_puzzles = train_puzzles or {name: examples[:1] for name, examples in test_puzzles.items()}
    identifiers = ["<blank>"] + sorted(set(test_puzzles) | set(train_puzzles))
    with open(os.path.join(root, "identifiers.json"), "w") as f:
        json.dump(identifiers, f)
    write_split(os.path.join(root, "train"), train_puzzles, identifiers)
    write_split(os.path.join(root, "test"), test_puzzles, identifiers)
    return identifiers


def write_preds(path, identifiers, rows):
    """rows: (puzzle name, input grid as stored, predicted tokens, q_halt logit)."""
    torch.save({
        "inputs": torch.tensor(np.stack([encode(r[1]) for r in rows]), dtype=torch.int32),
        "labels": torch.full((len(rows), 900), -100, dtype=torch.int32),
        "puzzle_identifiers": torch.tensor([identifiers.index(r[0]) for r in rows], dtype=torch.int32),
        "preds": torch.tensor(np.stack([r[2] for r in rows]), dtype=torch.int64),
        "q_halt_logits": torch.tensor([r[3] for r in rows], dtype=torch.float32),
    }, path)


# Task "rot": two test inputs; task "one": one test input.
ROT_IN = [[[1, 2, 0], [0, 3, 0]], [[5, 5], [6, 0], [0, 7]]]
ROT_OUT = [[[2, 1], [0, 0], [3, 0]], [[9]]]
ONE_IN, ONE_OUT = [[4, 4, 4]], [[8], [8]]
WRONG = [[1]]


def aug_name(task, dihedral, perm=PERM):
    return f"{task}_t{dihedral}_{perm}"


@pytest.fixture
def dataset(tmp_path):
    """Each task as given plus copies under dihedral 1 (rot90) and 6 (transpose) with colours PERM."""
    test = {}
    for task, ins, outs in (("rot", ROT_IN, ROT_OUT), ("one", [ONE_IN], [ONE_OUT])):
        test[task] = list(zip(ins, outs))
        for t in (1, 6):
            test[aug_name(task, t)] = [(augment(i, t, PERM), augment(o, t, PERM)) for i, o in zip(ins, outs)]
    root = tmp_path / "data"
    root.mkdir()
    return str(root), write_dataset(str(root), test)


def aug_row(task, t, inp, pred_grid, q):
    """A prediction row of the copy (task, t) whose un-augmented answer is `pred_grid`."""
    name = task if t == 0 else aug_name(task, t)
    if t == 0:
        return (name, inp, encode(pred_grid), q)
    return (name, augment(inp, t, PERM), encode(augment(pred_grid, t, PERM)), q)


def test_parse_name_inverts_the_colour_permutation():
    parsed = parse_name("007bbfb7_t3_0918273645")
    assert parsed.task == "007bbfb7" and parsed.dihedral == 3
    colours = np.array([0, 9, 1, 8, 2, 7, 3, 6, 4, 5])
    assert (parsed.inverse_colours[colours] == np.arange(10)).all()
    assert parse_name("007bbfb7") == arc.PuzzleName(task="007bbfb7")
    # Underscores inside a task name stay part of it.
    assert parse_name("Copy_1_t0_0123456789").task == "Copy_1"
    with pytest.raises(ValueError, match="not a permutation"):
        parse_name("x_t1_0123456788")


def test_crop_at_markers_and_uncroppable_rows():
    grid = np.array([[3, 0, 9], [1, 1, 2]])
    tokens = np.stack([encode(grid), np.zeros(900), np.ones(900), np.full(900, 11)])
    shifted = encode(grid).reshape(30, 30).copy()
    shifted[0, 0] = 1  # starts with a marker: nothing to crop
    cropped = crop_grids(np.concatenate([tokens, shifted.reshape(1, 900)]))
    assert np.array_equal(cropped[0], grid)
    assert cropped[1] is None and cropped[2] is None and cropped[4] is None
    assert cropped[3].shape == (30, 30) and (cropped[3] == 9).all()
    # A ragged prediction is cut to the largest top-left rectangle of colours.
    ragged = encode(np.full((3, 4), 2)).reshape(30, 30).copy()
    ragged[2, 1] = 0  # row widths 4, 4, 1: areas 4, 8, 3
    assert crop_grids(ragged.reshape(1, 900))[0].shape == (2, 4)


def test_correct_prediction_of_rotated_recoloured_copy_counts(dataset, tmp_path):
    root, ids = dataset
    # Only the rot90 copy of each test input is predicted, and correctly.
    rows = [aug_row("rot", 1, ROT_IN[0], ROT_OUT[0], 0.0), aug_row("rot", 1, ROT_IN[1], ROT_OUT[1], 0.0),
            aug_row("one", 6, ONE_IN, ONE_OUT, 0.0)]
    write_preds(tmp_path / "step_5_all_preds.0", ids, rows)
    results = score(load_predictions([str(tmp_path / "step_5_all_preds.0")]), root)
    assert results.pass_at == {1: 1.0, 2: 1.0, 5: 1.0, 10: 1.0, 100: 1.0, 1000: 1.0}
    rot = results.tasks["rot"]
    assert [t.index for t in rot.test_inputs] == [0, 1]
    assert np.array_equal(rot.test_inputs[0].input, np.array(ROT_IN[0]))
    assert np.array_equal(rot.test_inputs[1].candidates[0].grid, np.array(ROT_OUT[1]))
    # The same answer left in the augmented frame is wrong once un-augmented.
    wrong = [("rot_t1_" + PERM, augment(ROT_IN[0], 1, PERM), encode(ROT_OUT[0]), 0.0)]
    write_preds(tmp_path / "wrong", ids, wrong)
    assert score(load_predictions([str(tmp_path / "wrong")]), root).tasks["rot"].test_inputs[0].correct_rank is None


def test_votes_then_mean_q_then_first_seen(dataset, tmp_path):
    root, ids = dataset
    a, b, c = [[1, 1]], [[2, 2]], [[3, 3]]
    rows = [
        # test input 0 of "rot": b gets 2 votes, the answer 1 vote with a high q.
        aug_row("rot", 0, ROT_IN[0], b, -3.0), aug_row("rot", 1, ROT_IN[0], ROT_OUT[0], 9.0),
        aug_row("rot", 6, ROT_IN[0], b, -3.0),
        # test input 1: one vote each; ranked by sigmoid(q), a < answer < c.
        aug_row("rot", 0, ROT_IN[1], a, -1.0), aug_row("rot", 1, ROT_IN[1], ROT_OUT[1], 0.0),
        aug_row("rot", 6, ROT_IN[1], c, 1.0),
        # "one": exact tie (one vote, same q): the grid predicted first ranks first.
        aug_row("one", 1, ONE_IN, a, 0.5), aug_row("one", 0, ONE_IN, ONE_OUT, 0.5),
    ]
    write_preds(tmp_path / "p", ids, rows)
    results = score(load_predictions([str(tmp_path / "p")]), root)
    first, second = results.tasks["rot"].test_inputs
    assert [c.votes for c in first.candidates] == [2, 1]
    assert np.array_equal(first.candidates[0].grid, np.array(b)) and first.correct_rank == 2
    assert first.candidates[1].mean_q == pytest.approx(1 / (1 + np.exp(-9.0)))
    assert [c.grid.tolist() for c in second.candidates] == [c, ROT_OUT[1], a]
    assert second.correct_rank == 2
    assert results.tasks["one"].test_inputs[0].correct_rank == 2
    # "rot" needs both inputs within K (ranks 2 and 2), "one" has its answer at rank 2.
    assert results.pass_at[1] == 0.0 and results.pass_at[2] == 1.0


def test_pass_at_k_boundaries(tmp_path):
    """A task whose worst test input has its answer at rank r is solved exactly for K >= r."""
    ranks = {"r1": 1, "r2": 2, "r5": 5, "r6": 6, "r10": 10, "r11": 11}
    inp, out = [[1]], [[0]]
    root = tmp_path / "data"
    root.mkdir()
    ids = write_dataset(str(root), {task: [(inp, out)] for task in ranks})
    rows = []
    for task, rank in ranks.items():
        # rank - 1 wrong grids with 2 votes each, then the answer with 1 vote.
        for wrong in range(rank - 1):
            rows += [(task, inp, encode([[5] * (wrong + 2)]), 0.0)] * 2
        rows.append((task, inp, encode(out), 0.0))
    write_preds(tmp_path / "p", ids, rows)
    results = score(load_predictions([str(tmp_path / "p")]), str(root))
    assert {t: r.test_inputs[0].correct_rank for t, r in results.tasks.items()} == ranks
    assert results.pass_at == {1: 1 / 6, 2: 2 / 6, 5: 3 / 6, 10: 5 / 6, 100: 1.0, 1000: 1.0}
    assert "pass@10: 0.8333 (5/6)" in results.summary()


def test_uncroppable_predictions_are_wrong(dataset, tmp_path):
    root, ids = dataset
    empty, marker_first = np.zeros(900, dtype=np.int64), np.ones(900, dtype=np.int64)
    rows = [("one", ONE_IN, empty, 5.0), ("one", ONE_IN, marker_first, 5.0),
            ("rot", ROT_IN[0], encode(ROT_OUT[0]), 0.0), ("rot", ROT_IN[1], empty, 0.0)]
    write_preds(tmp_path / "p", ids, rows)
    results = score(load_predictions([str(tmp_path / "p")]), root)
    one = results.tasks["one"].test_inputs[0]
    assert one.candidates == [] and one.num_uncroppable == 2 and one.correct_rank is None
    assert results.tasks["rot"].test_inputs[1].num_uncroppable == 1
    assert results.pass_at[1000] == 0.0
    assert submission(results)["one"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]


def test_submission_content(dataset, tmp_path):
    root, ids = dataset
    rows = [aug_row("rot", 0, ROT_IN[0], [[1]], 0.0), aug_row("rot", 1, ROT_IN[0], [[1]], 0.0),
            aug_row("rot", 6, ROT_IN[0], [[2, 3]], 0.0),
            aug_row("rot", 1, ROT_IN[1], ROT_OUT[1], 0.0),
            aug_row("one", 6, ONE_IN, ONE_OUT, 0.0)]
    write_preds(tmp_path / "step_7_all_preds.0", ids, rows)
    out = tmp_path / "submission.json"
    arc.main([str(tmp_path), "--dataset", root, "--submission", str(out)])
    assert json.loads(out.read_text()) == {
        "one": [{"attempt_1": ONE_OUT, "attempt_2": ONE_OUT}],
        "rot": [{"attempt_1": [[1]], "attempt_2": [[2, 3]]},
                {"attempt_1": ROT_OUT[1], "attempt_2": ROT_OUT[1]}],
    }


def test_ranks_interleaved_newest_step_blank_rows_and_logits(dataset, tmp_path, capsys):
    root, ids = dataset
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    good = [aug_row("rot", 6, ROT_IN[1], ROT_OUT[1], 0.0), aug_row("one", 1, ONE_IN, ONE_OUT, 0.0)]
    good2 = [aug_row("rot", 0, ROT_IN[0], ROT_OUT[0], 0.0)]
    write_preds(ckpt / "step_20_all_preds.0", ids, good)
    write_preds(ckpt / "step_20_all_preds.1", ids, good2)
    # An older step that is all wrong must be ignored.
    write_preds(ckpt / "step_3_all_preds.0", ids, [aug_row("one", 0, ONE_IN, WRONG, 0.0)])
    # Rank 1 also carries a padding row (blank identifier) and stores logits instead of preds.
    data = torch.load(ckpt / "step_20_all_preds.1")
    logits = torch.nn.functional.one_hot(data.pop("preds"), 12).float()
    data["logits"] = torch.cat([logits, torch.zeros(1, 900, 12)])
    for key, pad in (("inputs", 0), ("labels", -100), ("puzzle_identifiers", 0), ("q_halt_logits", 0)):
        data[key] = torch.cat([data[key], torch.full_like(data[key][:1], pad)])
    torch.save(data, ckpt / "step_20_all_preds.1")

    preds = load_predictions([str(ckpt)])
    assert [os.path.basename(f) for f in preds.files] == ["step_20_all_preds.0", "step_20_all_preds.1"]
    assert len(preds.puzzle_identifiers) == 3
    output = tmp_path / "results.json"
    arc.main([str(ckpt), "--dataset", root, "--output", str(output)])
    assert "pass@1: 1.0000 (2/2)" in capsys.readouterr().out
    saved = json.loads(output.read_text())
    assert saved["pass_at"]["1"] == 1.0 and saved["num_predictions"] == 3
    assert saved["tasks"]["rot"]["test_inputs"][1]["top"][0] == {"grid": ROT_OUT[1], "votes": 1, "mean_q": 0.5}
    assert saved["tasks"]["one"]["solved_at"]["2"] is True


def test_files_of_two_evaluations_in_one_folder_are_refused(dataset, tmp_path):
    # An evaluation over 2 processes, then one over 1 process into the same folder: the stale rank
    # file 1 repeats rows of the new rank file 0, whose votes would count twice.
    root, ids = dataset
    rows = [aug_row("rot", 6, ROT_IN[1], ROT_OUT[1], 0.0), aug_row("one", 1, ONE_IN, ONE_OUT, 0.0)]
    write_preds(tmp_path / "step_20_all_preds.0", ids, rows)
    write_preds(tmp_path / "step_20_all_preds.1", ids, rows[1:])
    with pytest.raises(ValueError, match="step_20_all_preds.0 and .*step_20_all_preds.1 hold the same predictions"):
        load_predictions([str(tmp_path)])
    write_preds(tmp_path / "step_20_all_preds.1", ids, [aug_row("one", 0, ONE_IN, ONE_OUT, 0.0)])
    assert len(load_predictions([str(tmp_path)]).puzzle_identifiers) == 3


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", ["evaluators.arc", "utils.arc_score"])
def test_command_line_scores_and_its_errors_are_one_line(tmp_path, module):
    # utils.arc_score is the command's former name, kept as an alias.
    example = os.path.relpath(DEFAULT_OUTPUT, REPO)
    done = subprocess.run([sys.executable, "-m", module, example, "--dataset", os.path.join(example, "data")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "pass@2: 0.5000 (2/4)" in done.stdout
    done = subprocess.run([sys.executable, "-m", module, str(tmp_path), "--dataset", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_user_errors_say_what_to_do(dataset, tmp_path):
    root, ids = dataset
    with pytest.raises(FileNotFoundError, match="run `python evaluate.py"):
        load_predictions([str(tmp_path)])
    # Identifier 20 of another, larger dataset does not exist in this one.
    other_ids = ["<blank>"] + [f"task{i}" for i in range(20)]
    write_preds(tmp_path / "p", other_ids, [("task19", [[1]], encode([[2]]), 0.0)])
    with pytest.raises(ValueError, match="absent from this dataset's test split"):
        score(load_predictions([str(tmp_path / "p")]), root)
    write_preds(tmp_path / "q", ids, [("one", [[7, 7]], encode([[2]]), 0.0)])
    with pytest.raises(ValueError, match="match no test example"):
        score(load_predictions([str(tmp_path / "q")]), root)
    with pytest.raises(FileNotFoundError, match="build_arc_dataset.py"):
        score(load_predictions([str(tmp_path / "q")]), str(tmp_path))


def test_scores_what_evaluate_py_writes(tmp_path):
    """The real pipeline: a few training steps on the shipped ARC example, evaluate.py, then the scorer."""
    import evaluate
    import pretrain
    from utils.distributed import DistributedContext

    cpu = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    example = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "arc_example", "data")
    run, preds = str(tmp_path / "run"), str(tmp_path / "preds")
    tiny = {"data_path": example, "checkpoint_path": run, "global_batch_size": 8, "epochs": 4, "eval_interval": 4,
            "arch.hidden_size": 32, "arch.num_heads": 2, "arch.expansion": 2, "arch.H_layers": 1, "arch.L_layers": 1,
            "arch.H_cycles": 1, "arch.L_cycles": 2, "arch.halt_max_steps": 3, "wandb.mode": "disabled"}
    torch.set_num_threads(1)
    pretrain.run_training([f"{key}={value}" for key, value in tiny.items()], cpu)
    evaluate.run_evaluation(evaluate.EvalConfig(checkpoint=os.path.join(run, "step_4.pt"), output_dir=preds), cpu)

    out = tmp_path / "submission.json"
    results = arc.main([preds, "--dataset", example, "--submission", str(out)])
    assert results.num_predictions == 20 and len(results.tasks) == 4
    # Each test input got one prediction per copy (the task and its 3 augmented copies).
    for task in results.tasks.values():
        for t in task.test_inputs:
            assert sum(c.votes for c in t.candidates) + t.num_uncroppable == 4
    entries = json.loads(out.read_text())
    assert {name: len(tests) for name, tests in entries.items()} == {
        "00576224": 1, "0c786b71": 1, "66e6c45b": 1, "da2b0fe3": 2}
    assert all(set(e) == {"attempt_1", "attempt_2"} for tests in entries.values() for e in tests)


# ----------------------------------------------------------------------------------------------
# The ARC evaluator (batch by batch, as during training) against score() of the same rows

EXAMPLE_DATASET = os.path.join(DEFAULT_OUTPUT, "data")
RANK_FILES = [os.path.join(DEFAULT_OUTPUT, f"step_2000_all_preds.{rank}") for rank in (0, 1)]


def example_metadata() -> PuzzleDatasetMetadata:
    with open(os.path.join(EXAMPLE_DATASET, "test", "dataset.json")) as f:
        return PuzzleDatasetMetadata(**json.load(f))


def feed(evaluator: ARC, rank_file: str, batch_rows: int = 4) -> None:
    """A rank's rows as evaluation batches (inputs and identifiers in the batch, the rest as outputs),
    then a batch of padding rows, which carry the blank identifier."""
    rows = torch.load(rank_file)
    for start in range(0, len(rows["inputs"]), batch_rows):
        part = {key: value[start:start + batch_rows] for key, value in rows.items()}
        batch = {"inputs": part["inputs"], "labels": torch.full_like(part["inputs"], -100), "puzzle_identifiers": part["puzzle_identifiers"]}
        evaluator.update_batch(batch, {"preds": part["preds"], "q_halt_logits": part["q_halt_logits"]})
    padding = {"inputs": torch.zeros(2, 900, dtype=torch.int32), "puzzle_identifiers": torch.zeros(2, dtype=torch.int32)}
    evaluator.update_batch(padding, {"preds": torch.zeros(2, 900, dtype=torch.int32), "q_halt_logits": torch.zeros(2)})


def as_metrics(pass_at: dict) -> dict:
    return {f"ARC/pass@{k}": value for k, value in pass_at.items()}


def test_evaluator_matches_score_and_writes_the_same_submission(tmp_path):
    evaluator = ARC(EXAMPLE_DATASET, example_metadata())
    evaluator.begin_eval()
    for rank_file in RANK_FILES:
        feed(evaluator, rank_file)
    metrics = evaluator.result(str(tmp_path / "eval"), rank=0, world_size=1)

    expected = score(load_predictions([DEFAULT_OUTPUT]), EXAMPLE_DATASET)
    assert metrics == as_metrics(expected.pass_at) == as_metrics({1: 0.25, 2: 0.5, 5: 0.75, 10: 0.75, 100: 0.75, 1000: 0.75})
    write_submission(expected, str(tmp_path / "expected.json"))
    assert (tmp_path / "eval" / "submission.json").read_text() == (tmp_path / "expected.json").read_text()


def test_evaluator_votes_across_evaluations_only_when_aggregating():
    # Two evaluations, one rank file each: aggregated voting scores both files together; without it,
    # only the second evaluation's rows count.
    for aggregated, expected_files in ((True, RANK_FILES), (False, RANK_FILES[1:])):
        evaluator = ARC(EXAMPLE_DATASET, example_metadata(), aggregated_voting=aggregated, pass_Ks=(1, 2, 5))
        for rank_file in RANK_FILES:
            evaluator.begin_eval()
            feed(evaluator, rank_file)
            metrics = evaluator.result(None, rank=0, world_size=1)
        assert metrics == as_metrics(score(load_predictions(expected_files), EXAMPLE_DATASET, ks=(1, 2, 5)).pass_at)
    assert metrics == {"ARC/pass@1": 0.0, "ARC/pass@2": 0.0, "ARC/pass@5": 0.25}


def test_evaluator_submission_attempts_and_missing_outputs(tmp_path):
    evaluator = ARC(EXAMPLE_DATASET, example_metadata(), submission_K=3)
    feed(evaluator, RANK_FILES[0])
    evaluator.result(str(tmp_path), rank=0, world_size=1)
    entries = json.loads((tmp_path / "submission.json").read_text())
    assert all(list(entry) == ["attempt_1", "attempt_2", "attempt_3"] for tests in entries.values() for entry in tests)

    rows = torch.load(RANK_FILES[0])
    with pytest.raises(ValueError, match="the ARC evaluator needs q_halt_logits from each evaluation batch"):
        evaluator.update_batch({"inputs": rows["inputs"], "puzzle_identifiers": rows["puzzle_identifiers"]}, {"preds": rows["preds"]})


def _evaluate_one_rank(rank: int, world_size: int, init_file: str, save_path: str, results: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        evaluator = ARC(EXAMPLE_DATASET, example_metadata())
        evaluator.begin_eval()
        feed(evaluator, RANK_FILES[rank])
        results[rank] = evaluator.result(save_path, rank=rank, world_size=world_size)
    finally:
        torch.distributed.destroy_process_group()


def test_evaluator_gathers_the_votes_of_two_processes(tmp_path):
    # Each process votes on the rows its rank file holds; rank 0 scores all of them, as score() does
    # with both files.
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_evaluate_one_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "eval"), results), nprocs=2)
        results = dict(results)
    expected = score(load_predictions(RANK_FILES), EXAMPLE_DATASET)
    assert results == {0: as_metrics(expected.pass_at), 1: None}
    write_submission(expected, str(tmp_path / "expected.json"))
    assert (tmp_path / "eval" / "submission.json").read_text() == (tmp_path / "expected.json").read_text()
