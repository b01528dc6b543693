"""The training-step benchmark (benchmarks/train_step.py): its FLOP count against hand counts, and
tiny CPU runs end to end, as CI runs them."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.trace_gaps import gap_summary, gpu_intervals
from benchmarks.train_step import HOPPER_PEAK_TFLOPS, Variant, main, parse_variant, train_step_flops
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from models.losses import ACTLossHead
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
from tests.test_model_act import make_batch
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
    # One halting step, or halting on q_halt alone: no second segment for the Q target.
    assert train_step_flops(inner_model(halt_max_steps=1)) == segment + backward
    assert train_step_flops(inner_model(no_ACT_continue=True)) == segment + backward == 1_000_316_928

    # Layers multiply a module's passes: 1 H cycle of (3 L passes of 3 blocks + 1 H pass of 2 blocks).
    segment = (3 * 3 * block + 2 * block) + heads
    backward = 2 * (3 * block + 2 * block + heads)
    assert train_step_flops(inner_model(H_cycles=1, L_cycles=3, H_layers=2, L_layers=3)) == segment + backward + segment


def trm_inner_model(**overrides):
    config = dict(
        batch_size=8, seq_len=81, puzzle_emb_ndim=64, num_puzzle_identifiers=1, vocab_size=11, puzzle_emb_len=16,
        H_cycles=2, L_cycles=2, H_layers=1, L_layers=1, hidden_size=64, expansion=2, num_heads=2, mlp_t=True,
        pos_encodings="none", halt_max_steps=2, halt_exploration_prob=0.1, forward_dtype="float32",
    )
    config.update(overrides)
    return TinyRecursiveReasoningModel_ACTV1(config).inner


def test_trm_flops_match_a_hand_count():
    # The tiny shape with --arch trm: 16 puzzle positions, so 8 sequences of 97 positions; hidden 64.
    batch, seq = 8, 97
    tokens = batch * seq
    channel_mlp = 64 * 512 + 256 * 64  # gate_up, down: inner size round(2 * 64 * 2/3) = 85, rounded up to 256
    mlp_t = 97 * 512 + 256 * 97  # the SwiGLU over 97 positions: inner size round(2 * 97 * 2/3) = 129 -> 256
    block = 2 * tokens * channel_mlp + 2 * batch * 64 * mlp_t  # mlp_t's rows: the 8 x 64 channels
    heads = 2 * tokens * 64 * 11 + 2 * batch * 64 * 2

    # 2 recursions of (2 latent updates + 1 answer update); the backward through the last recursion.
    segment = 2 * (2 + 1) * block + heads
    backward = 2 * ((2 + 1) * block + heads)
    assert train_step_flops(trm_inner_model()) == segment + backward == 1_834_097_664
    # no_ACT_continue=false adds the second segment for the Q target.
    assert train_step_flops(trm_inner_model(no_ACT_continue=False)) == segment + backward + segment

    # Attention instead of mlp_t: qkv + o over channels and 4 * B * S^2 * h for the attention itself.
    block = 2 * tokens * (64 * 192 + 64 * 64 + channel_mlp) + 4 * batch * seq**2 * 64
    segment = 3 * (6 + 1) * 2 * block + heads  # H_cycles 3, L_cycles 6, 2 layers
    backward = 2 * ((6 + 1) * 2 * block + heads)
    assert train_step_flops(trm_inner_model(mlp_t=False, pos_encodings="rope", H_cycles=3, L_cycles=6, L_layers=2)) == segment + backward


FLOP_COUNTER_CASES = {
    "hrm": (HierarchicalReasoningModel_ACTV1, dict(H_layers=2, L_layers=1, pos_encodings="rope")),
    "hrm no_ACT_continue": (HierarchicalReasoningModel_ACTV1, dict(H_layers=2, L_layers=1, pos_encodings="rope", no_ACT_continue=True)),
    "trm attention": (TinyRecursiveReasoningModel_ACTV1, dict(L_layers=2, pos_encodings="rope", puzzle_emb_len=3)),
    "trm mlp_t": (TinyRecursiveReasoningModel_ACTV1, dict(L_layers=2, pos_encodings="none", mlp_t=True, puzzle_emb_len=3)),
    "trm mlp_t, second segment": (TinyRecursiveReasoningModel_ACTV1, dict(L_layers=2, pos_encodings="none", mlp_t=True, puzzle_emb_len=3,
                                                                          no_ACT_continue=False)),
}


@pytest.mark.parametrize("case", FLOP_COUNTER_CASES)
def test_flops_equal_what_a_training_call_runs(case):
    # PyTorch's FLOP counter over a real training call and its backward (SDPA's math kernel, whose
    # products the counter sees) finds exactly the analytic count: no product is missed, and with
    # no_ACT_continue=true the step runs no second segment.
    model_class, overrides = FLOP_COUNTER_CASES[case]
    config = dict(batch_size=4, seq_len=9, puzzle_emb_ndim=16, num_puzzle_identifiers=3, vocab_size=6, H_cycles=2, L_cycles=3,
                  hidden_size=16, expansion=2, num_heads=2, halt_max_steps=3, halt_exploration_prob=0.1, forward_dtype="float32", **overrides)
    torch.manual_seed(0)
    head = ACTLossHead(model_class(config), "stablemax_cross_entropy").train()
    batch = make_batch(config)
    carry = head.initial_carry(batch)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss, _, _, _ = head(carry=carry, batch=batch, return_keys=[])
        loss.backward()
    assert counter.get_total_flops() == train_step_flops(head.model.inner)


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
    assert (record["arch"], record["overrides"], record["fused_kernel"]) == ("hrm", [], "off")
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


def test_tiny_trm_runs_on_the_cpu_with_each_mlp_t_layout(capsys):
    records = main(["--arch", "trm", "--shape", "tiny", "--steps", "2", "--warmup", "1", "--compare", "eager,eager+mlp_t-padded,eager+mlp_t-left"])
    assert [record.get("error") for record in records] == [None] * 3
    for record in records:
        assert (record["arch"], record["seq_len"], record["puzzle_positions"], record["attention_backend"]) == ("trm", 81, 16, "none")
        assert record["flops_per_step"] == 1_834_097_664  # the hand-counted TRM model above
        assert record["tokens_per_s"] == pytest.approx(8 * 97 / (record["step_ms_median"] / 1e3), rel=1e-3)
    assert [record["fused_kernel"] for record in records] == ["off", "mlp_t padded to 112 positions", "mlp_t weights from the left"]
    assert records[0]["parameters"] == records[1]["parameters"] == records[2]["parameters"]


def test_overrides_reach_the_model(capsys):
    # HRM halting on q_halt alone: one segment per step, the FLOPs of the hand count above without the second.
    record = main(["--shape", "tiny", "--steps", "1", "--warmup", "1", "--compare", "eager", "--override", "arch.no_ACT_continue=true"])[0]
    assert (record["arch"], record["overrides"], record["flops_per_step"]) == ("hrm", ["arch.no_ACT_continue=true"], 1_000_316_928)
    # TRM with attention and RoPE instead of its Sudoku recipe's mlp_t.
    record = main(["--arch", "trm", "--shape", "tiny", "--steps", "1", "--warmup", "1", "--compare", "eager",
                   "--override", "arch.mlp_t=false", "--override", "arch.pos_encodings=rope"])[0]
    assert (record["attention_backend"], record["overrides"]) == ("sdpa", ["arch.mlp_t=false", "arch.pos_encodings=rope"])


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
    assert parse_variant("mlp_t-padded") == Variant("mlp_t-padded", fused_families=("mlp_t_padded",))
    assert parse_variant("cuda-graphs+fused+mlp_t-left") == Variant("cuda-graphs+fused+mlp_t-left", compile=True, cuda_graphs=True,
                                                                    fused_families=("block", "swiglu", "mlp", "mlp_t_left"))


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
        main(["--shape", "tiny", "--arch", "hidden_size=32"])
    assert ("--arch names the model, one of hrm, trm, got 'hidden_size=32'; config keys go to --override, "
            "e.g. --override arch.hidden_size=32") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--shape", "tiny", "--arch", "hrm2"])
    assert "--arch names the model, one of hrm, trm, got 'hrm2'\n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--shape", "tiny", "--override", "hidden_size"])
    assert "--override takes KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="arch.hiden_size: unknown key. Did you mean 'arch.hidden_size'"):
        main(["--shape", "tiny", "--override", "arch.hiden_size=32"])
    # The CPU has no FlashAttention: a variant that names it stops the run with what to do.
    with pytest.raises(ConfigError, match="the flash_attn_4 package does not import here; install it"):
        main(["--shape", "tiny", "--steps", "1", "--warmup", "1", "--compare", "eager+flash-attn-4"])
    # A variant's config is validated as training validates it.
    with pytest.raises(ConfigError, match="Set gradient_accumulation_steps=1 \\(now 2\\) or cuda_graphs=false"):
        main(["--shape", "tiny", "--gradient-accumulation-steps", "2", "--compare", "cuda-graphs"])


def test_curve_check_trains_trm_and_compares_a_lever_with_the_plain_path_on_the_cpu(tmp_path):
    # ARCH=trm: TRM's Sudoku recipe through scripts/reproduce_sudoku_1k.sh, stopped after STEPS steps;
    # the overrides after it shrink the model. The padded mlp_t layout learns the same curve.
    data = tmp_path / "sudoku"
    subprocess.run([sys.executable, "dataset/build_sudoku_dataset.py", "--source-repo", "dataset/samples/sudoku-extreme", "--output-dir", str(data),
                    "--subsample-size", "40"], cwd=REPO_ROOT, check=True, capture_output=True)
    tiny = ["wandb.mode=disabled", "global_batch_size=20", "arch.hidden_size=16", "arch.num_heads=2", "arch.expansion=2", "arch.H_cycles=2",
            "arch.L_cycles=1", "arch.halt_max_steps=2"]
    # The recipe script runs `python`: this interpreter's.
    environment = {**os.environ, "ARCH": "trm", "STEPS": "3", "DATA": str(data), "CUDA_VISIBLE_DEVICES": "",
                   "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    for name, lever in (("plain", []), ("padded", ["arch.fused_kernels=[mlp_t_padded]"])):
        result = subprocess.run(["bash", "benchmarks/curve_check.sh", str(tmp_path / name), *tiny, *lever], cwd=REPO_ROOT, env=environment,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert f"{tmp_path / name}: 3 steps in {tmp_path / name}/metrics.jsonl" in result.stdout
    assert "fused kernels mlp_t padded to 112 positions" in result.stdout

    with open(tmp_path / "plain" / "all_config.yaml") as file:
        config = yaml.safe_load(file)
    assert config["arch"]["name"] == "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
    assert (config["arch"]["mlp_t"], config["arch"]["pos_encodings"], config["arch"]["L_layers"], config["arch"]["L_cycles"]) == (True, "none", 2, 1)
    assert (config["epochs"], config["eval_interval"], config["lr"], config["weight_decay"]) == (50000, 5000, 1e-4, 1.0)

    result = subprocess.run([sys.executable, "benchmarks/compare_curves.py", str(tmp_path / "plain" / "metrics.jsonl"),
                             str(tmp_path / "padded" / "metrics.jsonl"), "--steps", "3"], cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    comparison = json.loads(result.stdout)
    assert comparison["steps"] == 3
    assert comparison["train/lm_loss"]["max_abs_difference"] < 1e-5 * comparison["train/lm_loss"]["reference_last50_mean"]


def test_a_stopped_curve_check_leaves_no_training_behind(tmp_path):
    # A check stopped from outside (timeout, Ctrl-C) stops its run too, instead of leaving it on the machine.
    data, run = tmp_path / "sudoku", tmp_path / "run"
    subprocess.run([sys.executable, "dataset/build_sudoku_dataset.py", "--source-repo", "dataset/samples/sudoku-extreme", "--output-dir", str(data),
                    "--subsample-size", "20"], cwd=REPO_ROOT, check=True, capture_output=True)
    environment = {**os.environ, "STEPS": "100000", "DATA": str(data), "CUDA_VISIBLE_DEVICES": "",
                   "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    command = ["timeout", "20", "bash", "benchmarks/curve_check.sh", str(run), "wandb.mode=disabled", "global_batch_size=10",
               "arch.hidden_size=16", "arch.num_heads=2", "arch.H_layers=1", "arch.L_layers=1", "arch.H_cycles=1", "arch.L_cycles=1"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 124, result.stderr  # stopped by timeout, not finished or failed
    assert (run / "metrics.jsonl").exists()  # it had been training
    assert subprocess.run(["pgrep", "-f", str(run)], capture_output=True).returncode == 1  # no process names the run any more


def test_curve_check_refuses_an_unknown_arch(tmp_path):
    result = subprocess.run(["bash", "benchmarks/curve_check.sh", str(tmp_path / "run")], cwd=REPO_ROOT, env={**os.environ, "ARCH": "gpt"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "ARCH=gpt: use hrm or trm" in result.stderr
