"""PuzzleDataset: validation on open, test pass coverage and padding, seeded training batches,
rank slices, resumable position."""

import json
import os
import re

import numpy as np
import pytest
import torch

from dataset.build_maze_dataset import MazeBuildConfig, build_maze_dataset
from dataset.common import DatasetError, PuzzleDatasetMetadata, save_set_arrays, write_json, write_split_metadata
from puzzle_dataset import IGNORE_LABEL_ID, PuzzleDataset, PuzzleDatasetConfig, check_test_data_fits

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_LEN = 4


def puzzle_sizes_and_groups(puzzles_per_group):
    """Puzzle p has (p % 3) + 1 examples; group g has puzzles_per_group[g] puzzles."""
    num_puzzles = sum(puzzles_per_group)
    puzzle_sizes = [(puzzle % 3) + 1 for puzzle in range(num_puzzles)]
    return puzzle_sizes, np.concatenate([[0], np.cumsum(puzzles_per_group)])


def write_dataset(root, puzzles_per_group=(1, 2, 3, 1, 2, 3, 1), first_value=1, columns=SEQ_LEN, set_name="all", **metadata_overrides):
    """Example i has inputs [i+v, i+v, ...] and labels [0, i+v, 0, i+v, ...] (0 = ignored; v =
    first_value; `columns` tokens each); puzzle p has identifier p + 1. Both splits are identical."""
    puzzle_sizes, group_indices = puzzle_sizes_and_groups(puzzles_per_group)
    num_examples = sum(puzzle_sizes)
    values = np.arange(first_value, first_value + num_examples, dtype=np.uint8)[:, None]
    arrays = {
        "inputs": np.repeat(values, columns, axis=1),
        "labels": np.concatenate([np.zeros_like(values), values] * (columns // 2), axis=1),
        "puzzle_identifiers": np.arange(1, len(puzzle_sizes) + 1),
        "puzzle_indices": np.concatenate([[0], np.cumsum(puzzle_sizes)]),
        "group_indices": group_indices,
    }
    metadata = dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=256, seq_len=columns,
                    num_puzzle_identifiers=len(puzzle_sizes) + 1, total_groups=len(puzzles_per_group),
                    mean_puzzle_examples=num_examples / len(puzzle_sizes), sets=[set_name])
    metadata.update(metadata_overrides)
    for split in ("train", "test"):
        save_set_arrays(str(root), split, set_name, arrays)
        write_split_metadata(str(root), split, PuzzleDatasetMetadata(**metadata))
    write_json(os.path.join(root, "identifiers.json"), ["<blank>"] + [f"p{index}" for index in range(len(puzzle_sizes))])
    return str(root), arrays


def make(path, split="train", **overrides):
    """A loader of one folder (`path` a string, HRM's dataset_path) or of several (a list)."""
    paths = {"dataset_paths": path} if isinstance(path, list) else {"dataset_path": path}
    config = dict(seed=0, **paths, global_batch_size=4, test_set_mode=split == "test", epochs_per_iter=1, rank=0, num_replicas=1)
    config.update(overrides)
    return PuzzleDataset(PuzzleDatasetConfig(**config), split=split)


def example_ids(batch):
    """Example index of each row (inputs were written as index + 1); -1 for padding rows."""
    return batch["inputs"][:, 0].long() - 1


def puzzle_of(arrays, examples):
    return np.searchsorted(arrays["puzzle_indices"], examples, side="right") - 1


def concat_ranks(path, split, world_size, **overrides):
    """Per step, the batches of all ranks concatenated."""
    per_rank = [list(make(path, split, rank=rank, num_replicas=world_size, **overrides)) for rank in range(world_size)]
    assert len({len(batches) for batches in per_rank}) == 1, "every rank must see the same number of batches"
    steps = []
    for step in zip(*per_rank):
        assert len({set_name for set_name, _, _ in step}) == 1 and len({size for _, _, size in step}) == 1
        steps.append({key: torch.cat([batch[key] for _, batch, _ in step]) for key in step[0][1]})
    return steps


# -- test mode -------------------------------------------------------------------------------


def test_test_pass_covers_every_example_once_with_padded_last_batch(tmp_path):
    path, arrays = write_dataset(tmp_path)
    num_examples = len(arrays["inputs"])  # 25
    batches = list(make(path, "test", global_batch_size=4))
    assert [size for _, _, size in batches] == [4] * 6 + [1]
    seen = torch.cat([example_ids(batch)[:size] for _, batch, size in batches])
    assert seen.tolist() == list(range(num_examples))
    for _, batch, size in batches:
        assert set(batch) == {"inputs", "labels", "puzzle_identifiers"}
        assert all(tensor.dtype == torch.int32 for tensor in batch.values())
        assert batch["inputs"].shape == (4, SEQ_LEN) and batch["puzzle_identifiers"].shape == (4,)
        real = example_ids(batch)[:size].numpy()
        np.testing.assert_array_equal(batch["puzzle_identifiers"][:size], puzzle_of(arrays, real) + 1)
        np.testing.assert_array_equal(batch["labels"][:size, 0], IGNORE_LABEL_ID)  # label 0 is ignored
        np.testing.assert_array_equal(batch["labels"][:size, 1], real + 1)
    last = batches[-1][1]
    assert (last["inputs"][1:] == 0).all() and (last["labels"][1:] == IGNORE_LABEL_ID).all() and (last["puzzle_identifiers"][1:] == 0).all()


def test_a_split_in_batches_of_another_size_reads_as_one_opened_with_it(tmp_path):
    path, _ = write_dataset(tmp_path)
    opened = make(path, "test", global_batch_size=4, rank=1, num_replicas=2)
    rebatched, fresh = opened.with_global_batch_size(6), make(path, "test", global_batch_size=6, rank=1, num_replicas=2)
    assert rebatched.local_batch_size == fresh.local_batch_size == 3 and rebatched.num_test_batches() == fresh.num_test_batches()
    for (set_a, batch_a, size_a), (set_b, batch_b, size_b) in zip(rebatched, fresh, strict=True):
        assert (set_a, size_a) == (set_b, size_b) and all(torch.equal(batch_a[key], batch_b[key]) for key in batch_b)
    assert [size for _, _, size in opened] == [4] * 6 + [1]  # the original is unchanged
    with pytest.raises(DatasetError, match="global_batch_size=5 must be a positive multiple of the world size 2"):
        opened.with_global_batch_size(5)


@pytest.mark.parametrize("world_size", [2, 4])
def test_test_pass_rank_slices_together_equal_the_one_rank_batch(tmp_path, world_size):
    path, _ = write_dataset(tmp_path)
    one_rank = [batch for _, batch, _ in make(path, "test", global_batch_size=4)]
    many_ranks = concat_ranks(path, "test", world_size, global_batch_size=4)
    assert len(one_rank) == len(many_ranks)
    for single, joined in zip(one_rank, many_ranks):
        for key in single:
            assert torch.equal(single[key], joined[key])


def test_built_maze_test_split_is_covered(tmp_path):
    build_maze_dataset(MazeBuildConfig(source_repo=os.path.join(REPO_ROOT, "dataset", "samples", "maze-30x30-hard"), output_dir=str(tmp_path / "maze")))
    dataset = make(str(tmp_path / "maze"), "test", global_batch_size=32, num_replicas=2, rank=1)
    assert dataset.metadata.seq_len == 900 and dataset.local_batch_size == 16
    batches = list(dataset)
    assert [size for _, _, size in batches] == [32, 32, 32, 4]
    labels = np.load(tmp_path / "maze" / "test" / "all__labels.npy")
    np.testing.assert_array_equal(batches[0][1]["labels"].numpy(), labels[16:32])
    assert (batches[-1][1]["labels"] == IGNORE_LABEL_ID).all(), "rank 1 holds only padding in the last batch"


# -- training mode ---------------------------------------------------------------------------


def train_batches(dataset):
    return [(set_name, batch, size) for set_name, batch, size in dataset]


def test_training_batches_are_full_consistent_and_one_puzzle_per_group_visit(tmp_path):
    path, arrays = write_dataset(tmp_path)
    batches = train_batches(make(path, global_batch_size=4))
    assert batches and all(size == 4 and batch["inputs"].shape == (4, SEQ_LEN) for _, batch, size in batches)
    visited_puzzles = {}
    for _, batch, _ in batches:
        examples = example_ids(batch).numpy()
        puzzles = puzzle_of(arrays, examples)
        np.testing.assert_array_equal(batch["puzzle_identifiers"], puzzles + 1)
        assert len(set(examples.tolist())) == len(examples), "examples of a puzzle are drawn without replacement"
        for puzzle in puzzles:
            group = np.searchsorted(arrays["group_indices"], puzzle, side="right") - 1
            visited_puzzles.setdefault(group, set()).add(puzzle)
    assert all(len(puzzles) == 1 for puzzles in visited_puzzles.values()), "one epoch visits each group once"


def test_one_example_puzzles_follow_the_original_sampling_order(tmp_path):
    """Sudoku/Maze-like data: Philox(seed + 1) shuffles the groups, then one puzzle per group."""
    one_example = tmp_path / "one_example"
    num_puzzles = 30  # 10 groups of 3 one-example puzzles
    group_indices = np.arange(0, num_puzzles + 1, 3)
    arrays = {"inputs": np.repeat(np.arange(1, num_puzzles + 1, dtype=np.uint8)[:, None], SEQ_LEN, axis=1),
              "puzzle_identifiers": np.zeros(num_puzzles), "puzzle_indices": np.arange(num_puzzles + 1), "group_indices": group_indices}
    arrays["labels"] = arrays["inputs"]
    for split in ("train", "test"):
        save_set_arrays(str(one_example), split, "all", arrays)
        write_split_metadata(str(one_example), split, PuzzleDatasetMetadata(
            pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=256, seq_len=SEQ_LEN, num_puzzle_identifiers=1,
            total_groups=10, mean_puzzle_examples=1, sets=["all"]))

    rng = np.random.Generator(np.random.Philox(seed=5 + 1))
    order = np.concatenate([rng.permutation(10) for _ in range(2)])
    expected = [rng.integers(group_indices[group], group_indices[group + 1]) for group in order]
    batches = train_batches(make(str(one_example), seed=5, epochs_per_iter=2, global_batch_size=4))
    assert len(batches) == 5  # 20 group visits, 4 per batch
    np.testing.assert_array_equal(torch.cat([example_ids(batch) for _, batch, _ in batches]), expected)


def one_or_two_folders(tmp_path, folders):
    """One dataset folder, or two (the second: 2 groups of 2 puzzles, inputs from 101)."""
    path, _ = write_dataset(tmp_path / "a")
    if folders == 1:
        return path
    return [path, write_dataset(tmp_path / "b", puzzles_per_group=(2, 2), first_value=101)[0]]


@pytest.mark.parametrize("folders", [1, 2])
@pytest.mark.parametrize("world_size", [2, 4])
def test_training_rank_slices_together_equal_the_one_rank_batch(tmp_path, world_size, folders):
    path = one_or_two_folders(tmp_path, folders)
    one_rank = [batch for _, batch, _ in make(path, global_batch_size=8, epochs_per_iter=3)]
    many_ranks = concat_ranks(path, "train", world_size, global_batch_size=8, epochs_per_iter=3)
    assert len(one_rank) == len(many_ranks) > 1
    for single, joined in zip(one_rank, many_ranks):
        for key in single:
            assert torch.equal(single[key], joined[key])


def flat(batches):
    return torch.cat([batch["inputs"] for _, batch, _ in batches])


def test_training_is_seeded_and_each_iteration_differs(tmp_path):
    path, _ = write_dataset(tmp_path)
    dataset = make(path, epochs_per_iter=4)
    first, second = train_batches(dataset), train_batches(dataset)
    assert dataset.state_dict() == {"iteration": 2, "batch_index": 0}
    assert torch.equal(flat(first), flat(train_batches(make(path, epochs_per_iter=4))))
    assert not torch.equal(flat(first[:3]), flat(second[:3]))
    assert not torch.equal(flat(first[:3]), flat(train_batches(make(path, epochs_per_iter=4, seed=1))[:3]))


@pytest.mark.parametrize("folders", [1, 2])
def test_resuming_from_state_dict_yields_exactly_the_following_batches(tmp_path, folders):
    path = one_or_two_folders(tmp_path, folders)
    reference = make(path, epochs_per_iter=3)
    first_iteration = train_batches(reference)
    expected = first_iteration + train_batches(reference)
    num_first = len(first_iteration)
    for stop in (0, 1, num_first - 1, num_first, num_first + 2):
        dataset = make(path, epochs_per_iter=3)
        iterator, consumed = iter(dataset), 0
        while consumed < stop:
            if next(iterator, None) is None:  # iteration ended: the next __iter__ continues
                iterator = iter(dataset)
                continue
            consumed += 1
        state = dataset.state_dict()
        if stop == num_first:
            assert state == {"iteration": 1, "batch_index": 0}, "after the last batch the state points at the next iteration"
        resumed = make(path, epochs_per_iter=3)
        resumed.load_state_dict(state)
        replay = train_batches(resumed) + train_batches(resumed)
        assert torch.equal(flat(replay[: len(expected) - stop]), flat(expected[stop:])), f"resume after {stop} batches"


# -- several dataset folders read as one (data_paths) ---------------------------------------


def write_two_datasets(tmp_path):
    """Folder a: 7 groups, 13 puzzles, 25 examples (inputs 1..25), identifiers 1..13 of 14;
    folder b: 2 groups, 4 puzzles, 7 examples (inputs 101..107), identifiers 1..4 of 5."""
    a, arrays_a = write_dataset(tmp_path / "a")
    b, arrays_b = write_dataset(tmp_path / "b", puzzles_per_group=(2, 2), first_value=101)
    return [a, b], arrays_a, arrays_b


def expected_identifiers(batch, size, arrays_a, arrays_b):
    """Each row's identifier computed from its input value: folder b's come after folder a's 14."""
    values = batch["inputs"][:size, 0].numpy().astype(np.int64)
    from_b = values > 100
    return np.where(from_b, puzzle_of(arrays_b, values - 101) + 1 + 14, puzzle_of(arrays_a, values - 1) + 1)


def test_two_folders_are_read_as_one_dataset_with_their_own_identifiers(tmp_path):
    paths, arrays_a, arrays_b = write_two_datasets(tmp_path)
    metadata = make(paths).metadata
    assert (metadata.num_puzzle_identifiers, metadata.total_groups, metadata.total_puzzles) == (14 + 5, 7 + 2, 13 + 4)
    assert metadata.mean_puzzle_examples == pytest.approx((25 + 7) / (13 + 4)), "weighted by each folder's puzzles"
    assert make(paths).identifier_offsets == [0, 14]

    # Test pass: folder a's examples in order, then b's; each folder's last batch padded on its own.
    batches = list(make(paths, "test", global_batch_size=4))
    assert [size for _, _, size in batches] == [4] * 6 + [1] + [4, 3]
    assert {set_name for set_name, _, _ in batches} == {"all"}
    values = torch.cat([batch["inputs"][:size, 0] for _, batch, size in batches])
    assert values.tolist() == list(range(1, 26)) + list(range(101, 108))
    for _, batch, size in batches:
        np.testing.assert_array_equal(batch["puzzle_identifiers"][:size], expected_identifiers(batch, size, arrays_a, arrays_b))
        assert (batch["puzzle_identifiers"][size:] == 0).all(), "padding rows get the blank identifier"


def test_two_folders_train_one_folder_per_batch_a_before_b(tmp_path):
    paths, arrays_a, arrays_b = write_two_datasets(tmp_path)
    dataset = make(paths, global_batch_size=2, epochs_per_iter=2)
    first, second = train_batches(dataset), train_batches(dataset)
    from_b = []
    for _, batch, size in first:
        values = batch["inputs"][:, 0]
        assert (values > 100).all() or (values < 100).all(), "a batch holds examples of one folder"
        from_b.append(bool(values[0] > 100))
        np.testing.assert_array_equal(batch["puzzle_identifiers"], expected_identifiers(batch, size, arrays_a, arrays_b))
    num_a = from_b.index(True)
    assert 0 < num_a < len(first) and from_b == [False] * num_a + [True] * (len(first) - num_a)
    # Folder a draws with the RNG counter of a one-folder loader, folder b with the next one (seed + 2).
    assert torch.equal(flat(first[:num_a]), flat(train_batches(make(paths[0], global_batch_size=2, epochs_per_iter=2))))
    assert torch.equal(flat(first[num_a:]), flat(train_batches(make(paths[1], seed=1, global_batch_size=2, epochs_per_iter=2))))
    assert not torch.equal(flat(first[:num_a]), flat(second[:num_a])), "the next iteration draws anew"


@pytest.mark.parametrize(
    "other, field",
    [
        (dict(columns=6), "seq_len"),
        (dict(vocab_size=200), "vocab_size"),
        (dict(pad_id=1), "pad_id"),
        (dict(ignore_label_id=None), "ignore_label_id"),
        (dict(blank_identifier_id=1), "blank_identifier_id"),
        (dict(set_name="other"), "sets"),
    ],
)
def test_folders_that_disagree_are_refused_naming_both_and_the_field(tmp_path, other, field):
    a, _ = write_dataset(tmp_path / "a")
    b, _ = write_dataset(tmp_path / "b", **other)
    for split in ("train", "test"):
        with pytest.raises(DatasetError, match=rf"^{re.escape(a)}/{split}/dataset.json has {field}=\S+ but {re.escape(b)}/{split}/dataset.json "
                                               rf"has {field}=\S+: folders read as one dataset must agree on seq_len, vocab_size"):
            make([a, b], split)


def test_evaluated_folders_must_fit_the_trained_ones(tmp_path):
    trained, _ = write_dataset(tmp_path / "trained")  # 14 identifiers
    smaller, _ = write_dataset(tmp_path / "smaller", puzzles_per_group=(2, 2))  # 5 identifiers
    check_test_data_fits(make(trained), make(smaller, "test"))
    with pytest.raises(DatasetError, match=rf"the evaluated datasets \(data_paths_test, {re.escape(trained)}/test/dataset.json\) hold 14 puzzle "
                                           rf"identifiers, more than the 5 of the trained ones \(data_paths, {re.escape(smaller)}/train/dataset.json\)"):
        check_test_data_fits(make(smaller), make(trained, "test"))
    wider, _ = write_dataset(tmp_path / "wider", columns=6)
    with pytest.raises(DatasetError, match=r"has seq_len=4 but .*wider/test/dataset.json has seq_len=6: the trained and the evaluated datasets"):
        check_test_data_fits(make(trained), make(wider, "test"))


@pytest.mark.parametrize("total_puzzles", ["absent", 7])
def test_total_puzzles_is_counted_from_the_arrays(tmp_path, total_puzzles):
    """Datasets built before total_puzzles lack it; TRM's Sudoku and Maze builders write the group count."""
    path, _ = write_dataset(tmp_path)
    for split in ("train", "test"):
        metadata_path = os.path.join(path, split, "dataset.json")
        with open(metadata_path) as metadata_file:
            metadata = json.load(metadata_file)
        metadata.pop("total_puzzles")
        if total_puzzles != "absent":
            metadata["total_puzzles"] = total_puzzles
        with open(metadata_path, "w") as metadata_file:
            json.dump(metadata, metadata_file)
    metadata = make(path).metadata
    assert metadata.total_puzzles == 13
    assert (metadata.mean_puzzle_examples, metadata.total_groups) == (25 / 13, 7), "one folder's metadata is its own, exactly"


# -- validation on open ----------------------------------------------------------------------


def test_global_batch_size_must_divide_by_world_size(tmp_path):
    path, _ = write_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"global_batch_size=10 must be a positive multiple of the world size 3: choose e.g. global_batch_size=9"):
        make(path, global_batch_size=10, num_replicas=3)
    with pytest.raises(ValueError, match=r"rank 2 is not in 0..1"):
        make(path, rank=2, num_replicas=2)


def test_batch_size_no_iteration_can_fill_is_refused_in_training_only(tmp_path):
    path, _ = write_dataset(tmp_path)  # 7 groups whose largest puzzles hold 1+3+3+1+3+3+1 = 15 examples
    with pytest.raises(ValueError, match=r"global_batch_size=31 is larger than the at most 30 examples that one iteration \(2 epochs\)"):
        make(path, global_batch_size=31, epochs_per_iter=2)
    assert len(train_batches(make(path, global_batch_size=30, epochs_per_iter=2))) <= 1
    assert sum(size for _, _, size in make(path, "test", global_batch_size=31)) == 25


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere/train/dataset.json not found: a dataset folder \(data_paths\) must be one built by dataset/build_\*_dataset.py"):
        make(str(tmp_path / "nowhere"))
    path, _ = write_dataset(tmp_path / "data")
    os.remove(os.path.join(path, "test", "all__labels.npy"))
    with pytest.raises(FileNotFoundError, match=r"test/all__labels.npy not found: the dataset is incomplete"):
        make(path, "test")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"seq_len": 5}, r"all__inputs.npy: shape \(25, 4\) disagrees with seq_len=5 in .*dataset.json"),
        ({"total_groups": 9}, r"dataset.json: total_groups=9 but the group_indices arrays hold 7 groups"),
        ({"mean_puzzle_examples": 2.5}, r"dataset.json: mean_puzzle_examples=2.5 but the arrays hold 1.923"),
        ({"num_puzzle_identifiers": 3}, r"all__puzzle_identifiers.npy: identifiers range 1..13, outside 0..2"),
    ],
)
def test_metadata_that_disagrees_with_arrays_is_refused(tmp_path, overrides, message):
    path, _ = write_dataset(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        make(path)


def test_broken_offsets_and_metadata_are_refused(tmp_path):
    path, arrays = write_dataset(tmp_path)
    np.save(os.path.join(path, "train", "all__puzzle_indices.npy"), (arrays["puzzle_indices"][:-1]).astype(np.int32))
    with pytest.raises(ValueError, match=r"all__puzzle_indices.npy: offsets run 0..24, expected 0..25 \(examples\)"):
        make(path)
    with open(os.path.join(path, "test", "dataset.json"), "w") as metadata_file:
        json.dump({"pad_id": 0}, metadata_file)
    with pytest.raises(ValueError, match=r"test/dataset.json: not a valid dataset.json \(field ignore_label_id: Field required; "
                                         r"field blank_identifier_id: Field required; .*; the file is damaged, rebuild the dataset"):
        make(path, "test")


# -- damaged files and values out of range ------------------------------------------------------


def array_path(path, field, split="train"):
    return os.path.join(path, split, f"all__{field}.npy")


def damage_file(path, how):
    with open(path, "rb") as file:
        content = file.read()
    if how == "floats":
        np.save(path, np.load(path).astype(np.float32))
        return
    if how == "objects":
        np.save(path, np.array([[1, "a"]], dtype=object), allow_pickle=True)
        return
    damaged = {"empty": b"", "truncated": content[:150], "garbage": bytes(range(256)) * 4, "cut_header": content[:20],
               "extra_bytes": content + b"\0" * 8}[how]
    with open(path, "wb") as file:
        file.write(damaged)


@pytest.mark.parametrize(
    "field, how, message",
    [
        ("inputs", "empty", r"train/all__inputs.npy: not a readable .npy array \(EOF: reading magic string, expected 8 bytes got 0\)"),
        ("labels", "truncated", r"train/all__labels.npy: truncated: 150 bytes, but its header describes 228 \(a uint8 array of shape \(25, 4\)\)"),
        ("puzzle_indices", "garbage", r"train/all__puzzle_indices.npy: not a readable .npy array \(the magic string is not correct"),
        ("group_indices", "cut_header", r"train/all__group_indices.npy: not a readable .npy array \(EOF: reading array header"),
        ("puzzle_identifiers", "extra_bytes", r"train/all__puzzle_identifiers.npy: 188 bytes, but its header describes 180 \(a int32 array of shape \(13,\)\)"),
        ("inputs", "floats", r"train/all__inputs.npy: holds float32 values, expected integers"),
        ("labels", "objects", r"train/all__labels.npy: holds object values, expected integers"),
    ],
)
def test_a_damaged_array_file_is_named(tmp_path, field, how, message):
    path, _ = write_dataset(tmp_path)
    damage_file(array_path(path, field), how)
    with pytest.raises(ValueError, match=message + r".*; the file is damaged, rebuild the dataset with dataset/build_\*_dataset.py$"):
        make(path)
    make(path, "test")  # the other split is untouched and opens


def test_tokens_outside_the_vocabulary_are_refused(tmp_path):
    path, arrays = write_dataset(tmp_path, vocab_size=25)  # inputs hold 1..25
    with pytest.raises(ValueError, match=r"train/all__inputs.npy: value 25 at example 24, position 0, is outside 0..24 \(vocab_size=25 in "
                                         r".*train/dataset.json\); the dataset is inconsistent, rebuild it"):
        make(path)

    path, arrays = write_dataset(tmp_path / "labels", vocab_size=26)
    labels = arrays["labels"].copy()
    labels[3, 2] = 30
    np.save(array_path(path, "labels", "test"), labels)
    make(path)
    with pytest.raises(ValueError, match=r"test/all__labels.npy: value 30 at example 3, position 2, is outside 0..25 \(vocab_size=26 in "
                                         r".*test/dataset.json, and not ignore_label_id=0\)"):
        make(path, "test")


def test_an_ignore_label_outside_the_vocabulary_is_allowed_in_labels_only(tmp_path):
    path, arrays = write_dataset(tmp_path, ignore_label_id=-100)
    labels = arrays["labels"].astype(np.int16)
    labels[:, 0] = -100
    np.save(array_path(path, "labels", "test"), labels)
    batch = next(iter(make(path, "test")))[1]
    assert (batch["labels"][:, 0] == IGNORE_LABEL_ID).all()
    labels[5, 0] = -99
    np.save(array_path(path, "labels", "test"), labels)
    with pytest.raises(ValueError, match=r"test/all__labels.npy: value -99 at example 5, position 0, is outside 0..255"):
        make(path, "test")
    np.save(array_path(path, "inputs", "test"), labels)
    with pytest.raises(ValueError, match=r"test/all__inputs.npy: value -100 at example 0, position 0, is outside 0..255 \(vocab_size=256 in .*\)"):
        make(path, "test")


def test_offsets_must_increase(tmp_path):
    path, arrays = write_dataset(tmp_path)
    offsets = arrays["group_indices"].copy()
    offsets[2] = offsets[1]
    np.save(array_path(path, "group_indices"), offsets.astype(np.int32))
    with pytest.raises(ValueError, match=r"all__group_indices.npy: offsets must be strictly increasing"):
        make(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"not a JSON file \(Expecting value: line 1 column 1 \(char 0\)\)"),
        (b'{"pad_id": 0,', r"not a JSON file \(Expecting property name enclosed in double quotes"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", r"not a JSON file \("),
        (b"[1, 2]", r"not a valid dataset.json \(Input should be a valid dictionary"),
        ({"seq_len": None}, r"not a valid dataset.json \(field seq_len: Input should be a valid integer\)"),
        ({"seq_len": "long"}, r"not a valid dataset.json \(field seq_len: Input should be a valid integer, unable to parse string as an integer\)"),
        ({"vocab_size": 0}, r"not a valid dataset.json \(field vocab_size: Input should be greater than or equal to 1\)"),
        ({"mean_puzzle_examples": float("nan")}, r"not a valid dataset.json \(field mean_puzzle_examples: Input should be a finite number\)"),
        ({"sets": ["../elsewhere"]}, r"not a valid dataset.json \(field sets: Value error, set name '../elsewhere' is not a plain name"),
        ({"sets": []}, r"not a valid dataset.json \(field sets: List should have at least 1 item"),
        ("drop total_groups", r"not a valid dataset.json \(field total_groups: Field required\)"),
    ],
)
def test_a_bad_dataset_json_is_named_with_its_field(tmp_path, content, message):
    path, _ = write_dataset(tmp_path)
    metadata_path = os.path.join(path, "train", "dataset.json")
    with open(metadata_path) as metadata_file:
        metadata = json.load(metadata_file)
    if isinstance(content, dict):
        content = json.dumps({**metadata, **content}).encode()
    elif isinstance(content, str):
        content = json.dumps({key: value for key, value in metadata.items() if key != content.split()[1]}).encode()
    with open(metadata_path, "wb") as metadata_file:
        metadata_file.write(content)
    with pytest.raises(ValueError, match=r"train/dataset.json: " + message + r".*; the file is damaged, rebuild the dataset"):
        make(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pad_id": 256}, r"dataset.json: pad_id=256 is not below vocab_size=256"),
        ({"blank_identifier_id": 14}, r"dataset.json: blank_identifier_id=14 is not below num_puzzle_identifiers=14"),
    ],
)
def test_metadata_ids_outside_their_ranges_are_refused(tmp_path, overrides, message):
    path, _ = write_dataset(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        make(path)


def test_damaged_data_stops_training_before_it_writes_anything(tmp_path):
    import pretrain
    from dataset.common import DatasetError
    from tests.tiny_runs import build_tiny_sudoku, tiny_overrides
    from utils.distributed import DistributedContext

    data = build_tiny_sudoku(str(tmp_path))
    with open(array_path(data, "inputs", "test"), "r+b") as inputs:
        inputs.seek(-1, os.SEEK_END)
        inputs.write(bytes([11]))  # vocab_size is 11: tokens 0..10
    run = tmp_path / "run"
    cpu = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(DatasetError, match=r"test/all__inputs.npy: value 11 at example 39, position 80, is outside 0..10"):
        pretrain.run_training(tiny_overrides(data, str(run)), cpu)
    assert not run.exists(), "no all_config.yaml or metrics.jsonl was written"
