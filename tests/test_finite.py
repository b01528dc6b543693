"""utils.finite: the per-step check and the save check find every NaN and infinity, and only those,
without reading anything back to the host in the per-step case (GPU test)."""

import pytest
import torch

from utils.finite import any_non_finite, floating_tensors, non_finite_paths


def weights(device="cpu"):
    return [torch.randn(16, 8, device=device), torch.randn(8, device=device).bfloat16(), torch.tensor(2.0, device=device)]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_any_non_finite_finds_one_bad_value_anywhere(value, index):
    tensors = weights()
    assert any_non_finite(tensors).item() == 0.0
    tensors[index].view(-1)[-1] = value
    assert any_non_finite(tensors).item() == 1.0


def test_large_finite_values_are_not_taken_for_infinities():
    # A 2-norm of these overflows float32; the max norm does not.
    tensors = [torch.full((1000,), 3e38), torch.full((10,), -3e38)]
    assert any_non_finite(tensors).item() == 0.0
    assert non_finite_paths({"weights": tensors}) == []


def test_non_finite_paths_name_the_tensors_in_a_nested_checkpoint():
    checkpoint = {
        "model": {"a.weight": torch.ones(3), "b.weight": torch.tensor([1.0, float("nan")])},
        "optimizers": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg_sq": torch.tensor([float("inf")])}}, "param_groups": [{"lr": 0.1}]}],
        "carry": {"steps": torch.tensor([1, 2]), "halted": torch.tensor([True, False])},
        "step": 7,
    }
    assert non_finite_paths(checkpoint) == ["model.b.weight", "optimizers.0.state.0.exp_avg_sq"]
    # Integers and booleans cannot hold a NaN: only floating tensors are read.
    assert [path for path, _ in floating_tensors(checkpoint)] == ["model.a.weight", "model.b.weight", "optimizers.0.state.0.step",
                                                                   "optimizers.0.state.0.exp_avg_sq"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the per-step check must not wait for the GPU")
def test_the_per_step_check_reads_nothing_back_on_the_gpu():
    tensors = weights("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        flag = any_non_finite(tensors)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert flag.device.type == "cuda" and flag.item() == 0.0
    tensors[0][3, 3] = float("nan")
    assert any_non_finite(tensors).item() == 1.0
