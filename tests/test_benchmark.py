"""The training-step benchmark (benchmarks/train_step.py): its FLOP count against hand counts, and
tiny CPU runs end to end, as CI runs them."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend

from benchmarks.trace_gaps import gap_summary, gpu_intervals
from benchmarks.train_step import HOPPER_PEAK_TFLOPS, Variant, main, parse_variant, train_step_flops
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from utils.config import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def inner_model(**overrides):
    config = dict(
        batch_size=8, seq_len=81, puzzle_emb_ndim=64, num_puzzle_identifiers=1, vocab_size=11,
        H_cycles=2, L_cycles=2, H_layers=1, L_layers=1, hidden_size=64, expansion=4, num_heads=2,
        pos_encodings="rope", halt_max_steps=2, halt_exploration_prob=0.1, forward_dtype="float32",
    )
    config.update(overrides)
    return HierarchicalReasoningModel_ACTV1(config).inner


def test_flops_match_a_hand_count():
    # Hidden 64, SwiGLU inner size round(4 * 64 * 2/3) = 171 rounded up to 256; one puzzle position,
    # so 8 sequences of 82 positions.
    batch, seq = 8, 82
    tokens = batch * seq
    block_weights = 64 * 192 + 64 * 64 + 64 * 512 + 256 * 64  # qkv, o, gate_up, down
    block = 2 * tokens * block_weights + 4 * batch * seq**2 * 64
    heads = 2 * tokens * 64 * 11 + 2 * batch * 64 * 2  # lm_head, q_head

    # 2 H cycles of (2 L passes + 1 H pass), one block each; backward: 2x the last L and H passes and the heads.
    segment = 2 * (2 * block + block) + heads
    backward = 2 * (block + block + heads)
    assert train_step_flops(inner_model()) == segment + backward + segment == 1_599_766_528
    # One halting step: no second segment for the Q target.
    assert train_step_flops(inner_model(halt_max_steps=1)) == segment + backward

    # Layers multiply a module's passes: 1 H cycle of (3 L passes of 3 blocks + 1 H pass of 2 blocks).
    segment = (3 * 3 * block + 2 * block) + heads
    backward = 2 * (3 * block + 2 * block + heads)
    assert train_step_flops(inner_model(H_cycles=1, L_cycles=3, H_layers=2, L_layers=3)) == segment + backward + segment


@pytest.mark.parametrize("seq_len, vocab_size, batch_size, floor_ms", [(81, 11, 768, 35.3), (900, 6, 96, 60.0)])
def test_default_arch_flop_floor_matches_the_original(seq_len, vocab_size, batch_size, floor_ms):
    # The original's H100 figures: FLOP floor about 35 ms (Sudoku, batch 768) and 60 ms (Maze, batch 96).
    inner = inner_model(seq_len=seq_len, vocab_size=vocab_size, batch_size=batch_size, hidden_size=512, puzzle_emb_ndim=512,
                        num_heads=8, H_layers=4, L_layers=4, halt_max_steps=16)
    assert train_step_flops(inner) / (HOPPER_PEAK_TFLOPS * 1e12) * 1e3 == pytest.approx(floor_ms, rel=0.01)


def test_tiny_cpu_run_reports_a_sane_json_line():
    command = [sys.executable, "benchmarks/train_step.py", "--shape", "tiny", "--steps", "3", "--warmup", "1", "--compare", "eager"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"stdout should hold only the JSON line: {result.stdout}"
    record = json.loads(lines[0])

    assert "error" not in record
    assert (record["variant"], record["shape"], record["batch"], record["seq_len"], record["puzzle_positions"]) == ("eager", "tiny", 8, 81, 1)
    assert record["compiled"] is False and record["device"].startswith("cpu") and record["attention_backend"] == "sdpa"
    assert record["optimizers"][-1] == "models.optimizers.AdamATan2"
    assert (record["warmup_steps"], record["timed_steps"]) == (1, 3)
    assert record["compile_seconds"] > 0
    assert 0 < record["step_ms_median"] <= record["step_ms_p90"]
    assert 0 < record["weight_check_ms"] < record["step_ms_median"]
    assert record["weight_check_share"] == pytest.approx(record["weight_check_ms"] / record["step_ms_median"], abs=1e-4)
    assert record["flops_per_step"] == 1_599_766_528  # the tiny shape is the hand-counted model above
    assert record["tokens_per_s"] == pytest.approx(8 * 82 / (record["step_ms_median"] / 1e3), rel=1e-3)
    assert record["achieved_tflops"] == pytest.approx(record["flops_per_step"] / (record["step_ms_median"] / 1e3) / 1e12, abs=1e-3)
    # No peak rate or memory counter on a CPU.
    assert record["peak_tflops"] is None and record["fraction_of_peak"] is None and record["peak_memory_gib"] is None


def test_two_processes_share_the_global_batch_and_rank_0_reports():
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "benchmarks/train_step.py",
               "--shape", "tiny", "--steps", "2", "--warmup", "1", "--compare", "eager"]
    environment = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK")}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**environment, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"only rank 0 prints: {result.stdout}"
    record = json.loads(lines[0])
    # Each process runs 4 of the 8 sequences; the step's FLOPs and tokens are the whole batch's.
    assert (record["batch"], record["processes"], record["flops_per_step"]) == (8, 2, 1_599_766_528)
    assert record["tokens_per_s"] == pytest.approx(8 * 82 / (record["step_ms_median"] / 1e3), rel=1e-3)


def test_micro_batches_count_the_whole_batch(capsys):
    # Two micro-batches of 4 do the work of one batch of 8: the same FLOPs per step and tokens per step.
    record = main(["--shape", "tiny", "--steps", "2", "--warmup", "1", "--compare", "eager", "--gradient-accumulation-steps", "2"])[0]
    assert "error" not in record
    assert (record["batch"], record["gradient_accumulation_steps"], record["flops_per_step"]) == (8, 2, 1_599_766_528)
    assert record["tokens_per_s"] == pytest.approx(8 * 82 / (record["step_ms_median"] / 1e3), rel=1e-3)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=3"):
        main(["--shape", "tiny", "--gradient-accumulation-steps", "3"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="relies on the CPU having no cuDNN attention")
def test_a_failing_variant_reports_an_error_and_the_next_still_runs(tmp_path, capsys):
    output = tmp_path / "results.jsonl"
    # No SDPA kernel but cuDNN's is allowed, and the CPU has none.
    records = main(["--shape", "tiny", "--steps", "1", "--warmup", "1", "--compare", "eager+sdpa-cudnn,eager+sdpa-math", "--output", str(output)])
    assert [record["variant"] for record in records] == ["eager+sdpa-cudnn", "eager+sdpa-math"]
    assert "scaled_dot_product_attention" in records[0]["error"]
    assert "error" not in records[1] and records[1]["attention_backend"] == "sdpa (MATH)"
    assert [json.loads(line) for line in output.read_text().splitlines()] == records
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == records


def test_variant_names_map_to_their_settings():
    assert parse_variant("cuda-graphs+fused") == Variant("cuda-graphs+fused", compile=True, cuda_graphs=True, fused_families=("block", "swiglu", "mlp"))
    assert parse_variant("compile+sdpa-flash") == Variant("compile+sdpa-flash", compile=True, sdpa_backend=SDPBackend.FLASH_ATTENTION)
    assert parse_variant("compile-max-autotune") == Variant("compile-max-autotune", compile=True, compile_mode="max-autotune")
    assert parse_variant("compile+flash-attn-4") == Variant("compile+flash-attn-4", compile=True, flash_package="flash_attn_4")
    assert parse_variant("fused-swiglu") == Variant("fused-swiglu", fused_families=("swiglu",))
    assert parse_variant("fused-block") == Variant("fused-block", fused_families=("block", "swiglu"))
    assert parse_variant("compile+unfused") == Variant("compile+unfused", compile=True, fused_families=())


def test_trace_gaps_merges_overlaps_and_names_the_largest_gap():
    events = [
        {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 0, "dur": 100},
        {"ph": "X", "cat": "kernel", "name": "side_stream", "ts": 50, "dur": 100},  # overlaps: busy 0-150
        {"ph": "X", "cat": "gpu_memcpy", "name": "copy", "ts": 180, "dur": 20},  # gap of 30 after side_stream
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1000},  # host work is not GPU time
        {"ph": "X", "cat": "kernel", "name": "attention", "ts": 260, "dur": 40},  # gap of 60 after copy
    ]
    summary = gap_summary(gpu_intervals(events), top=1)
    assert (summary["span_ms"], summary["busy_ms"], summary["idle_ms"], summary["gaps_over_10us"]) == (0.3, 0.21, 0.09, 2)
    assert summary["largest_gaps"] == [{"us": 60.0, "after": "copy", "before": "attention"}]
    with pytest.raises(ValueError, match="no GPU kernels"):
        gap_summary(gpu_intervals(events[3:4]))


def test_bad_arguments_are_refused_with_a_clear_message(capsys):
    with pytest.raises(SystemExit):
        main(["--shape", "tiny", "--compare", "eager+flash"])
    assert "unknown variant part 'flash'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--shape", "tiny", "--compare", "sdpa-cudnn+flash-attn-4"])
    assert "names an SDPA kernel and a FlashAttention package" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--shape", "tiny", "--compare", "compile-reduce-overhead"])
    assert "use the variant cuda-graphs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--shape", "tiny", "--arch", "hidden_size"])
    assert "--arch takes KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="Unknown HRM config keys: hiden_size"):
        main(["--shape", "tiny", "--arch", "hiden_size=32"])
    # The CPU has no FlashAttention: a variant that names it stops the run with what to do.
    with pytest.raises(ConfigError, match="the flash_attn_4 package does not import here; install it"):
        main(["--shape", "tiny", "--steps", "1", "--warmup", "1", "--compare", "eager+flash-attn-4"])
    # A variant's config is validated as training validates it.
    with pytest.raises(ConfigError, match="Set gradient_accumulation_steps=1 \\(now 2\\) or cuda_graphs=false"):
        main(["--shape", "tiny", "--gradient-accumulation-steps", "2", "--compare", "cuda-graphs"])
