"""Evaluate a checkpoint on its dataset's test split and save the predictions.

    python evaluate.py checkpoint=checkpoints/<project>/<run>/step_N.pt
    python evaluate.py checkpoint=<file> segments=32                          # think longer than training did
    python evaluate.py checkpoint=<file> segments=32 adaptive_halting=true    # stop each sequence where its Q head says so
    python evaluate.py checkpoint=<file> sweep=[1,2,4,8,16,32]               # accuracy against segments: JSON lines + PNG
    torchrun --nproc-per-node 8 evaluate.py checkpoint=<file> [output_dir=DIR] [data_path=DIR] [eval_batch_size=N]

Reads `all_config.yaml` from the checkpoint's folder, accepts our full checkpoints and the original's
weights-only `step_N` files, prints the metrics per set (`steps`: the mean segments run) and the
throughput, and writes `step_N_all_preds.<rank>`.

Keys (key=value):
    checkpoint         the step_N.pt (or original step_N) to evaluate
    segments           ACT segments per sequence (default: the run's arch.halt_max_steps); the cap with adaptive_halting
    adaptive_halting   true: a sequence stops where q_halt says so (q_halt > q_continue, or q_halt > 0 with arch.no_ACT_continue)
    sweep              a list of segment counts: evaluate at each, write step_N_segment_sweep.jsonl and .png (no predictions)
    eval_batch_size    sequences per batch over all processes (default: on a GPU as many as fit a memory budget, on
                       the CPU the run's global_batch_size); the process count must divide it
    save_outputs       what step_N_all_preds.<rank> holds (default: inputs, labels, puzzle_identifiers, preds, q logits)
    output_dir         where the files go (default: the checkpoint's folder)
    data_path          the dataset (default: the run's data_path)
    compile            torch.compile (default: on for CUDA, off on the CPU)
    forward_dtype      the model's compute dtype (default: bfloat16 on CUDA, float32 on the CPU)
    ema                a checkpoint of a run with ema=true is evaluated with its EMA weights, as training's
                       evaluations were; ema=false evaluates its raw (last trained) weights instead
"""

import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dataset.common import PuzzleDatasetMetadata
from models.state_dict import load_model_state_dict
from pretrain import build_loss_head, create_dataloader, evaluate, step_function
from utils.checkpoint import TrainState, check_checkpoint_file, has_ema_weights, read_weights_file, weights_from_checkpoint
from utils.checkpoint_fit import check_weights_fit
from utils.config import ConfigError, PretrainConfig, check_saveable_outputs, environment_overrides, read_saved_config, validate_config
from utils.distributed import DistributedContext, distributed_session, end_process
from utils.files import DiskFullError
from utils.segment_sweep import plot_sweep, write_sweep_records

DEFAULT_SAVE_OUTPUTS = ["inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits", "q_continue_logits"]

# On a GPU, the default batch gives each process this many numbers per [batch, positions, hidden]
# activation (1 GiB in bfloat16): evaluation keeps no activations for a backward pass, so the dozen
# or so such tensors alive at once fit a GPU that trained the model.
EVAL_ACTIVATION_ELEMENTS = 2**29


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    save_outputs: List[str] = DEFAULT_SAVE_OUTPUTS
    output_dir: Optional[str] = None  # default: the checkpoint's folder
    data_path: Optional[str] = None  # default: the training run's data_path
    # global_batch_size is the key's earlier name.
    eval_batch_size: Optional[int] = Field(None, validation_alias=AliasChoices("eval_batch_size", "global_batch_size"))
    compile: Optional[bool] = None  # default: on for CUDA, off on CPU
    forward_dtype: Optional[str] = None  # default: bfloat16 on CUDA, float32 on CPU
    segments: Optional[int] = None  # default: the training run's arch.halt_max_steps
    adaptive_halting: bool = False
    sweep: List[int] = []
    ema: Optional[bool] = None  # null: the checkpoint's EMA weights if it has them, else its weights; false: its raw weights

    known_outputs = field_validator("save_outputs")(check_saveable_outputs)

    @field_validator("segments")
    @classmethod
    def _positive_segments(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value < 1:
            raise ValueError(f"segments={value} must be at least 1")
        return value

    @field_validator("sweep")
    @classmethod
    def _positive_sweep(cls, values: List[int]) -> List[int]:
        if any(value < 1 for value in values):
            raise ValueError(f"sweep={values}: every segment count must be at least 1")
        return values

    @model_validator(mode="after")
    def _segments_or_sweep(self) -> "EvalConfig":
        if self.segments is not None and self.sweep:
            raise ValueError(f"segments={self.segments} and sweep={self.sweep}: the sweep sets the segments; give one of them")
        return self


USAGE = ("Usage: python evaluate.py checkpoint=<path to step_N.pt> [segments=N] [adaptive_halting=true] [sweep=[1,2,4,8,16]] "
         "[eval_batch_size=N] [output_dir=DIR] [data_path=DIR] [compile=false] [forward_dtype=float32] [ema=false]")


def parse_eval_config(arguments: Sequence[str]) -> EvalConfig:
    try:
        return EvalConfig(**OmegaConf.to_container(OmegaConf.from_cli(list(arguments))))
    except ValidationError as error:
        problems = "; ".join((f"{'.'.join(map(str, item['loc']))}: " if item["loc"] else "") + item["msg"].removeprefix("Value error, ")
                             for item in error.errors())
        raise ConfigError(f"evaluate.py: {problems}. {USAGE}") from None


# ----------------------------------------------------------------------------------------------
# The model of a checkpoint, ready to evaluate (shared with solve.py)


def evaluation_config(saved: PretrainConfig, context: DistributedContext, batch_size: int, forward_dtype: Optional[str] = None,
                      compile: Optional[bool] = None, **overrides) -> PretrainConfig:
    """The run's config for evaluation on this device: `batch_size` sequences per batch over all
    processes, one micro-batch, the device's dtype and compile setting unless given."""
    raw = saved.model_dump()
    # CUDA graphs are captured by torch.compile: kept where the run used them, unless compile is off.
    raw.update(overrides, global_batch_size=batch_size, gradient_accumulation_steps=1, compile=compile,
               cuda_graphs=saved.cuda_graphs and compile is not False)
    raw["arch"]["forward_dtype"] = forward_dtype or ("bfloat16" if context.device.type == "cuda" else "float32")
    # Validated like a training config (model_copy would skip the validators).
    return validate_config(raw)


def load_trained_model(config: PretrainConfig, metadata: PuzzleDatasetMetadata, context: DistributedContext, checkpoint: str,
                       puzzles: str, data_path: Optional[str], trained_on: str, ema: Optional[bool] = None) -> TrainState:
    """The loss head built for `metadata` with the checkpoint's weights, and its step function.

    `ema`: None takes the checkpoint's EMA weights where it has them, False its raw weights, True
    insists on the EMA weights. Weights trained on puzzles of another shape stop with
    CheckpointMismatchError, whose message names these `puzzles` (from the dataset `data_path`, if
    any); `trained_on` is the run's data_path."""
    loss_head = build_loss_head(config, metadata, context)
    contents, step = read_weights_file(checkpoint)
    if ema and not has_ema_weights(contents):
        raise ConfigError(f"ema=true: {checkpoint} holds no EMA weights (its run had ema=false, or it is an original "
                          "weights file, which holds one set): drop ema=true to evaluate its weights")
    use_ema = has_ema_weights(contents) and ema is not False
    weights = weights_from_checkpoint(contents, ema=use_ema)
    if context.is_main and has_ema_weights(contents):
        print("using the EMA weights (ema=false: the raw weights)" if use_ema else "using the raw weights (ema=false)")
    check_weights_fit(weights, loss_head.model, metadata, checkpoint, puzzles, data_path, trained_on)
    load_model_state_dict(loss_head, weights)
    return TrainState(loss_head=loss_head, step_fn=step_function(config, loss_head, context.device),
                      optimizers=[], base_lrs=[], carries=None, step=step, total_steps=0)


def set_evaluation_halting(model: torch.nn.Module, segments: Optional[int], adaptive: bool) -> None:
    """How the ACT model runs in evaluation: `segments` per sequence (None: halt_max_steps), or up to
    that many with `adaptive` halting."""
    model.eval_max_steps = segments
    model.eval_adaptive_halting = adaptive


# ----------------------------------------------------------------------------------------------
# Evaluation


def check_eval_batch_size(batch_size: int, world_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"eval_batch_size={batch_size} must be a positive integer")
    if batch_size % world_size:
        raise ConfigError(
            f"eval_batch_size={batch_size} is not divisible by the {world_size} processes: every process takes an equal "
            f"slice of each batch. Set eval_batch_size to a multiple of {world_size} (e.g. {max(1, batch_size // world_size) * world_size})."
        )


def default_eval_batch_size(saved: PretrainConfig, seq_len: int, context: DistributedContext) -> int:
    """The batch when eval_batch_size is not given: on GPUs EVAL_ACTIVATION_ELEMENTS per activation on
    each process; on the CPU the training run's global batch size (rounded to the process count)."""
    if context.device.type == "cuda":
        per_process = EVAL_ACTIVATION_ELEMENTS // (seq_len * saved.arch.model_extra["hidden_size"])
    else:
        per_process = saved.global_batch_size // context.world_size
    return max(1, per_process) * context.world_size


def open_test_split(saved: PretrainConfig, context: DistributedContext, batch_size: Optional[int], **settings):
    """The evaluation config (`settings` as in evaluation_config) and the test split's loader, with
    `batch_size` sequences per batch or, where None, the default for this device and dataset."""
    if batch_size is not None:
        check_eval_batch_size(batch_size, context.world_size)
    config = evaluation_config(saved, context, batch_size or context.world_size, **settings)
    loader = create_dataloader(config, "test", context, test_set_mode=True, epochs_per_iter=1)
    if batch_size is None:
        # The default depends on the sequence length, which the opened dataset gives.
        config = evaluation_config(saved, context, default_eval_batch_size(saved, loader.metadata.seq_len, context), **settings)
        loader = loader.with_global_batch_size(config.global_batch_size)
    return config, loader


def prepare_evaluation(eval_config: EvalConfig, context: DistributedContext) -> Tuple[PretrainConfig, TrainState, object, str]:
    """Config, model state, test loader and the run's folder of an evaluation."""
    check_checkpoint_file(eval_config.checkpoint)
    run_folder = os.path.dirname(os.path.abspath(eval_config.checkpoint))
    saved = read_saved_config(run_folder)
    settings = dict(forward_dtype=eval_config.forward_dtype, compile=eval_config.compile, checkpoint_path=run_folder,
                    eval_save_outputs=[] if eval_config.sweep else eval_config.save_outputs)
    if eval_config.data_path is not None:
        settings.update(data_paths=[eval_config.data_path], data_paths_test=[])  # the test split of that folder alone
    config, loader = open_test_split(saved, context, eval_config.eval_batch_size, **settings)
    tested = ",".join(config.test_data_paths)
    state = load_trained_model(config, loader.metadata, context, eval_config.checkpoint, puzzles=f"the dataset {tested}",
                               data_path=tested, trained_on=",".join(saved.data_paths), ema=eval_config.ema)
    set_evaluation_halting(state.loss_head.model, eval_config.segments, eval_config.adaptive_halting)
    return config, state, loader, run_folder


def timed_evaluation(config: PretrainConfig, state: TrainState, loader, context: DistributedContext,
                     save_dir: Optional[str]) -> Tuple[Optional[Dict[str, Dict[str, float]]], float]:
    start = time.monotonic()
    metrics = evaluate(config, state, loader, context, save_dir=save_dir)
    return metrics, time.monotonic() - start


def describe(config: PretrainConfig, state: TrainState, context: DistributedContext) -> str:
    model = state.loss_head.model
    halting = "adaptive halting, at most" if model.eval_adaptive_halting else "every sequence"
    compiled = "on" if state.step_fn is not state.loss_head else "off"
    return (f"evaluate step {state.step} on {context.world_size} process(es), {context.device.type}, {config.arch.model_extra['forward_dtype']}, "
            f"compile {compiled}, batch {config.global_batch_size}, {halting} {model.evaluation_steps} segments")


def print_metrics(metrics: Dict[str, Dict[str, float]], state: TrainState, loader, seconds: float) -> None:
    for set_name, values in metrics.items():
        print(f"{set_name}: " + ", ".join(f"{key} {value:.4f}" for key, value in values.items()))
    sequences = loader.num_examples()
    compiling = " (compilation included)" if state.step_fn is not state.loss_head else ""
    print(f"{sequences:,} sequences in {seconds:.1f} s{compiling}: {sequences / max(seconds, 1e-9):,.1f} sequences/s")


def run_evaluation(eval_config: EvalConfig, context: DistributedContext) -> Optional[Dict[str, Dict[str, float]]]:
    config, state, loader, run_folder = prepare_evaluation(eval_config, context)
    output_dir = eval_config.output_dir or run_folder
    if eval_config.sweep:
        return run_sweep(eval_config, config, state, loader, context, output_dir)
    if context.is_main:
        print(describe(config, state, context))
    metrics, seconds = timed_evaluation(config, state, loader, context, save_dir=output_dir)
    if context.is_main and metrics is not None:
        print_metrics(metrics, state, loader, seconds)
    return metrics


def run_sweep(eval_config: EvalConfig, config: PretrainConfig, state: TrainState, loader, context: DistributedContext,
              output_dir: str) -> Optional[Dict[str, Dict[str, float]]]:
    """Evaluate at each segment count of the sweep; write the metrics as JSON lines (rewritten after
    each count, so an interrupted sweep keeps what it measured) and plot them."""
    records: List[dict] = []
    jsonl_path = os.path.join(output_dir, f"step_{state.step}_segment_sweep.jsonl")
    metrics = None
    for segments in eval_config.sweep:
        set_evaluation_halting(state.loss_head.model, segments, eval_config.adaptive_halting)
        if context.is_main:
            print(describe(config, state, context))
        metrics, seconds = timed_evaluation(config, state, loader, context, save_dir=None)
        if context.is_main and metrics is not None:
            print_metrics(metrics, state, loader, seconds)
            records += [{"segments": segments, "adaptive_halting": eval_config.adaptive_halting, "set": set_name, **values,
                         "seconds": seconds} for set_name, values in metrics.items()]
            os.makedirs(output_dir, exist_ok=True)
            write_sweep_records(jsonl_path, records)
    if context.is_main and records:
        print(f"wrote {jsonl_path}")
        png_path = plot_sweep(records, os.path.splitext(jsonl_path)[0] + ".png", title=f"{eval_config.checkpoint}")
        if png_path:
            print(f"wrote {png_path}")
    return metrics


def main() -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        return
    try:
        eval_config = parse_eval_config(sys.argv[1:] + environment_overrides(os.environ))
        with distributed_session() as context:
            run_evaluation(eval_config, context)
    except (ConfigError, FileNotFoundError, ValueError, DiskFullError) as error:
        print(f"error: {error}", file=sys.stderr)
        end_process(1)
    end_process(0)


if __name__ == "__main__":
    main()
