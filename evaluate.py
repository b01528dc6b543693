"""Evaluate a checkpoint on its dataset's test split and save the predictions.

    python evaluate.py checkpoint=checkpoints/<project>/<run>/step_N.pt
    torchrun --nproc-per-node 8 evaluate.py checkpoint=<file> [output_dir=DIR] [data_path=DIR] [global_batch_size=N] [ema=false]

Reads `all_config.yaml` from the checkpoint's folder, accepts our full checkpoints and the original's
weights-only `step_N` files, prints the metrics per set and writes `step_N_all_preds.<rank>`.
A checkpoint of a run with ema=true is evaluated with its EMA weights, as training's evaluations
were; ema=false evaluates its raw (last trained) weights instead.
"""

import os
import sys
from typing import Dict, List, Optional, Sequence

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from models.state_dict import load_model_state_dict
from pretrain import build_loss_head, create_dataloader, evaluate, step_function
from utils.checkpoint import TrainState, check_checkpoint_file, has_ema_weights, read_weights_file, weights_from_checkpoint
from utils.config import ConfigError, check_saveable_outputs, check_world_size, environment_overrides, read_saved_config, validate_config
from utils.distributed import DistributedContext, distributed_session, end_process
from utils.files import DiskFullError

DEFAULT_SAVE_OUTPUTS = ["inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits", "q_continue_logits"]


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    save_outputs: List[str] = DEFAULT_SAVE_OUTPUTS
    output_dir: Optional[str] = None  # default: the checkpoint's folder
    data_path: Optional[str] = None  # default: the training run's data_path
    global_batch_size: Optional[int] = None  # default: the training run's; set one that the process count divides
    compile: Optional[bool] = None  # default: the training run's (null: on for CUDA, off on CPU)
    ema: Optional[bool] = None  # null: the checkpoint's EMA weights if it has them, else its weights; false: its raw weights

    known_outputs = field_validator("save_outputs")(check_saveable_outputs)


def parse_eval_config(arguments: Sequence[str]) -> EvalConfig:
    try:
        return EvalConfig(**OmegaConf.to_container(OmegaConf.from_cli(list(arguments))))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg'].removeprefix('Value error, ')}" for item in error.errors())
        raise ConfigError(f"evaluate.py: {problems}. Usage: python evaluate.py checkpoint=<path to step_N.pt> [output_dir=DIR] [data_path=DIR] [global_batch_size=N] [compile=false] [ema=false]") from None


def run_evaluation(eval_config: EvalConfig, context: DistributedContext) -> Optional[Dict[str, Dict[str, float]]]:
    check_checkpoint_file(eval_config.checkpoint)
    run_folder = os.path.dirname(os.path.abspath(eval_config.checkpoint))
    config = read_saved_config(run_folder)
    # Evaluation runs each process's whole slice of a batch at once: no micro-batches.
    overrides = {"eval_save_outputs": eval_config.save_outputs, "checkpoint_path": run_folder, "gradient_accumulation_steps": 1}
    for key in ("data_path", "global_batch_size", "compile"):
        if getattr(eval_config, key) is not None:
            overrides[key] = getattr(eval_config, key)
    # Validated like a training config (model_copy would skip the validators).
    config = validate_config({**config.model_dump(), **overrides})
    check_world_size(config, context.world_size)

    eval_loader = create_dataloader(config, "test", context, test_set_mode=True, epochs_per_iter=1)
    loss_head = build_loss_head(config, eval_loader.metadata, context)
    checkpoint, step = read_weights_file(eval_config.checkpoint)
    if eval_config.ema and not has_ema_weights(checkpoint):
        raise ConfigError(f"ema=true: {eval_config.checkpoint} holds no EMA weights (its run had ema=false, or it is an original "
                          "weights file, which holds one set): drop ema=true to evaluate its weights")
    use_ema = has_ema_weights(checkpoint) and eval_config.ema is not False
    load_model_state_dict(loss_head, weights_from_checkpoint(checkpoint, ema=use_ema))
    if context.is_main and has_ema_weights(checkpoint):
        print("evaluating the EMA weights (ema=false: the raw weights)" if use_ema else "evaluating the raw weights (ema=false)")
    state = TrainState(
        loss_head=loss_head,
        step_fn=step_function(config, loss_head, context.device),
        optimizers=[], base_lrs=[], carries=None,
        step=step, total_steps=0,
    )
    metrics = evaluate(config, state, eval_loader, context, save_dir=eval_config.output_dir or run_folder)
    if context.is_main and metrics is not None:
        for set_name, values in metrics.items():
            print(f"{set_name}: " + ", ".join(f"{key} {value:.4f}" for key, value in values.items()))
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
