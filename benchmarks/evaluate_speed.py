"""Benchmark evaluation: evaluate.py's model and loop on a built dataset's test split, timed over its
first batches; sequences per second, the projected time of the whole split, and its FLOP floor.

    python benchmarks/evaluate_speed.py --data-path data/arc-aug-1000 --segments 16
    python benchmarks/evaluate_speed.py --data-path data/arc-aug-1000 --batch 384,768,1536 --batches 20
    python benchmarks/evaluate_speed.py --checkpoint checkpoints/<project>/<run>/step_N.pt   # that run's config, weights, data
    python benchmarks/evaluate_speed.py --data-path DIR --config arch=trm --config arch.L_layers=2
    python benchmarks/evaluate_speed.py --data-path DIR --batch 8 --batches 2 --warmup 1 --config arch.hidden_size=32   # CPU, for CI

Without --checkpoint the model is config/cfg_pretrain.yaml with the --config overrides (HRM's ARC
recipe by default), its weights as initialised: with a fixed number of segments the work does not
depend on them. The model is built and run as evaluate.py does: bfloat16 and torch.compile on a
GPU (--eager, --forward-dtype to change), predictions copied to the host as evaluate.py saves them.

Prints one JSON line per batch size: the first --warmup batches (compilation included) are untimed;
the next --batches are timed as a whole. `flops_per_sequence_segment` is counted by
torch.utils.flop_counter on one segment of the model (matrix products and attention); the FLOP floor
is the whole split's FLOPs at the peak rate (798 TFLOP/s dense bf16 on H100/H200, else --peak-tflops).
"""

import argparse
import itertools
import json
import os
import re
import sys
import time
from typing import List, Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

# Run as `python benchmarks/evaluate_speed.py`, Python puts benchmarks/ on the import path, not the repository root.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import pretrain  # noqa: E402
from benchmarks.train_step import HOPPER_PEAK_TFLOPS, device_name, memory_gib, synchronize  # noqa: E402
from evaluate import DEFAULT_SAVE_OUTPUTS, load_trained_model, open_test_split, set_evaluation_halting  # noqa: E402
from utils.checkpoint import TrainState  # noqa: E402
from utils.config import ConfigError, load_config, read_saved_config  # noqa: E402
from utils.distributed import DistributedContext  # noqa: E402


def segment_flops(model: torch.nn.Module) -> int:
    """FLOPs of one segment of one sequence of the ACT `model` (an HRM or TRM wrapper), counted by
    torch's FLOP counter on a copy built on the meta device (no memory, no compute)."""
    config = {**model.config.model_dump(), "batch_size": 1, "forward_dtype": "float32"}
    with torch.device("meta"):
        copy = type(model)(config).eval()
        sequence = torch.zeros((1, config["seq_len"]), dtype=torch.int32)
        batch = {"inputs": sequence, "labels": sequence, "puzzle_identifiers": torch.zeros((1,), dtype=torch.int32)}
        carry = copy.initial_carry(batch)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            copy(carry, batch)
    return counter.get_total_flops()


class FirstBatches:
    """The first `count` batches of a test loader, read as pretrain.evaluate reads a loader."""

    def __init__(self, loader, count: int):
        self.loader, self.count, self.metadata = loader, count, loader.metadata

    def num_test_batches(self) -> int:
        return min(self.count, self.loader.num_test_batches())

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.count)


def benchmark_batch_size(args: argparse.Namespace, saved, batch_size: Optional[int], context: DistributedContext, peak_tflops: Optional[float]) -> dict:
    device = context.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    config, loader = open_test_split(saved, context, batch_size, forward_dtype=args.forward_dtype, compile=False if args.eager else None,
                                     eval_save_outputs=DEFAULT_SAVE_OUTPUTS,
                                     **({"data_paths": [args.data_path], "data_paths_test": []} if args.data_path else {}))
    batch_size = config.global_batch_size
    tested = ",".join(config.test_data_paths)
    if args.checkpoint:
        state = load_trained_model(config, loader.metadata, context, args.checkpoint, puzzles=f"the dataset {tested}",
                                   data_path=tested, trained_on=",".join(saved.data_paths))
    else:
        loss_head = pretrain.build_loss_head(config, loader.metadata, context)
        state = TrainState(loss_head=loss_head, step_fn=pretrain.step_function(config, loss_head, device), optimizers=[], base_lrs=[],
                           carries=None, step=0, total_steps=0)
    model = state.loss_head.model
    set_evaluation_halting(model, args.segments, adaptive=False)
    if args.warmup + args.batches > loader.num_test_batches():
        raise ConfigError(f"{tested}'s test split has {loader.num_test_batches()} batches of {batch_size}, fewer than "
                          f"--warmup {args.warmup} + --batches {args.batches}: lower them or the batch size")

    start = time.perf_counter()
    pretrain.evaluate(config, state, FirstBatches(loader, args.warmup), context, save_dir=None)
    synchronize(device)
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pretrain.evaluate(config, state, FirstBatches(loader, args.batches), context, save_dir=None)
    synchronize(device)
    seconds = time.perf_counter() - start

    flops = segment_flops(model)
    segments = model.evaluation_steps
    rate = args.batches * batch_size / seconds
    total_flops = flops * segments * loader.num_test_batches() * batch_size  # the last batch is padded to full size
    achieved_tflops = flops * segments * args.batches * batch_size / seconds / 1e12
    return {
        "device": device_name(device),
        "model": config.arch.name,
        "weights": args.checkpoint or "initialised",
        "data_path": tested,
        "test_sequences": loader.num_examples(),
        "batch": batch_size,
        "segments": segments,
        "forward_dtype": config.arch.model_extra["forward_dtype"],
        "compiled": state.step_fn is not state.loss_head,
        "warmup_batches": args.warmup,
        "warmup_seconds": round(warmup_seconds, 3),
        "timed_batches": args.batches,
        "timed_seconds": round(seconds, 3),
        "sequences_per_second": round(rate, 2),
        "projected_total_seconds": round(loader.num_test_batches() * seconds / args.batches, 1),
        "flops_per_sequence_segment": flops,
        "achieved_tflops": float(f"{achieved_tflops:.4g}"),
        "peak_tflops": peak_tflops,
        "fraction_of_peak": round(achieved_tflops / peak_tflops, 4) if peak_tflops else None,
        "flop_floor_seconds": round(total_flops / (peak_tflops * 1e12), 1) if peak_tflops else None,
        "peak_memory_gib": memory_gib(device),
    }


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", help="the built dataset whose test split runs (default: the config's or the checkpoint run's data_path)")
    parser.add_argument("--checkpoint", help="evaluate this step_N.pt with its run's all_config.yaml (default: initialised weights)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help="a pretrain.py override (without --checkpoint)")
    parser.add_argument("--segments", type=int, default=16, help="ACT segments per sequence (default: 16)")
    parser.add_argument("--batch", help="evaluation batch sizes, comma-separated (default: evaluate.py's on this device)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (compilation)")
    parser.add_argument("--batches", type=int, default=10, help="timed batches")
    parser.add_argument("--eager", action="store_true", help="no torch.compile")
    parser.add_argument("--forward-dtype", help="compute dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak rate (default: 798 on H100/H200, none elsewhere)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    try:
        if args.checkpoint:
            saved = read_saved_config(os.path.dirname(os.path.abspath(args.checkpoint)))
        else:
            saved = load_config([f"data_path={args.data_path}" if args.data_path else "data_path=data/arc-aug-1000", *args.config])
        peak_tflops = args.peak_tflops
        if peak_tflops is None and device.type == "cuda" and re.search(r"H100|H200", torch.cuda.get_device_name(device)):
            peak_tflops = HOPPER_PEAK_TFLOPS
        batch_sizes = [int(size) for size in args.batch.split(",")] if args.batch else [None]
        records = []
        for batch_size in batch_sizes:
            record = benchmark_batch_size(args, saved, batch_size, context, peak_tflops)
            print(json.dumps(record), flush=True)
            records.append(record)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    return records


if __name__ == "__main__":
    main()
