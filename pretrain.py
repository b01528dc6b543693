"""Train a Hierarchical Reasoning Model on a puzzle dataset.

    python pretrain.py data_path=data/sudoku-extreme-1k-aug-1000 epochs=20000 eval_interval=2000 ...
    torchrun --nproc-per-node 8 pretrain.py data_path=... arch.L_cycles=8 ...
    python pretrain.py arch=trm data_paths="[data/sudoku-extreme-1k-aug-1000]" ... +run_name=NAME ema=True

Every config key (config/cfg_pretrain.yaml, config/arch/*.yaml) can be overridden as key=value.
This file wires the parts together and runs the loop; the maths lives in models/.
"""

import contextlib
import dataclasses
import importlib
import inspect
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml
from pydantic import ValidationError
from torch import nn
from tqdm import tqdm

from dataset.common import DatasetError, datasets_fingerprint
from evaluators.arc import is_arc_dataset
from models.attention import attention_backend
from models.ema import EMAHelper
from models.fused import FAMILIES, apply_fused_kernels, fused_kernels_in_use
from models.optimizers import build_adam_atan2
from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed
from models.state_dict import load_model_state_dict, normalise_keys
from puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig, check_test_data_fits
from utils.checkpoint import (
    CheckpointError,
    TrainState,
    has_ema_weights,
    newest_checkpoint_advice,
    prepare_run_folder,
    read_weights_file,
    restore_train_state,
    run_folder_lock,
    save_atomically,
    save_train_state,
    weights_from_checkpoint,
)
from utils.config import (
    SAVED_CONFIG_NAME,
    ConfigError,
    EvaluatorConfig,
    PretrainConfig,
    check_world_size,
    environment_overrides,
    format_validation_error,
    load_config,
    micro_batch_size,
    model_config_dict,
    read_saved_config,
    save_config,
    with_derived_names,
)
from utils.distributed import DistributedContext, all_reduce_gradients, broadcast_object, distributed_session, end_process, run_on_main
from utils.files import DiskFullError
from utils.finite import NonFiniteError, any_non_finite
from utils.logging import MetricsFileError, RunLogger, SilentLogger
from utils.run_lock import RunFolderError

# The key of the per-step check for non-finite weights among a step's deferred metric values.
NON_FINITE_WEIGHTS = "non_finite_weights"


def load_model_class(identifier: str, prefix: str = "models.") -> type:
    """`module@Class` under models/ (or the package `prefix` names), as the config's arch.name,
    arch.loss.name and evaluators' names spell it."""
    module_path, _, class_name = identifier.partition("@")
    try:
        return getattr(importlib.import_module(prefix + module_path), class_name)
    except (ImportError, AttributeError):
        example = "arc@ARC" if prefix == "evaluators." else "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"
        raise ConfigError(f"'{identifier}' names no class: expected module@Class under {prefix.rstrip('.')}/, e.g. {example}") from None


def cosine_schedule_with_warmup_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


def create_dataloader(config: PretrainConfig, split: str, context: DistributedContext, test_set_mode: bool, epochs_per_iter: int) -> PuzzleDataset:
    """The folders of data_paths read as one; for the test split those of data_paths_test where given (as TRM)."""
    return PuzzleDataset(
        PuzzleDatasetConfig(
            seed=config.seed,
            dataset_paths=config.test_data_paths if split == "test" else config.data_paths,
            global_batch_size=config.global_batch_size,
            test_set_mode=test_set_mode,
            epochs_per_iter=epochs_per_iter,
            rank=context.rank,
            num_replicas=context.world_size,
        ),
        split=split,
    )


def use_compile(config: PretrainConfig, device: torch.device) -> bool:
    return config.compile if config.compile is not None else device.type == "cuda"


def copy_tensors(value: Any) -> Any:
    """A copy of every tensor in nested dataclasses, dicts and tuples (the ACT carry, the step's outputs)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{field.name: copy_tensors(getattr(value, field.name)) for field in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {key: copy_tensors(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(copy_tensors(item) for item in value)
    return value


class CudaGraphStep(nn.Module):
    """The loss head compiled with CUDA graphs (torch.compile mode "reduce-overhead").

    A replay writes its outputs into memory that the next replay reuses, while the ACT carry one call
    returns is the next call's input. So each call starts a new graph step, and everything it returns
    except the loss (which backward consumes before the next call) is copied out of the graphs' memory.
    """

    def __init__(self, loss_head: nn.Module):
        super().__init__()
        self.compiled = torch.compile(loss_head, dynamic=False, mode="reduce-overhead")

    def forward(self, carry, batch: Dict[str, torch.Tensor], return_keys: Sequence[str]):
        torch.compiler.cudagraph_mark_step_begin()
        carry, loss, metrics, outputs, all_halted = self.compiled(carry=carry, batch=batch, return_keys=return_keys)
        return copy_tensors(carry), loss, copy_tensors(metrics), copy_tensors(outputs), all_halted.clone()


def step_function(config: PretrainConfig, loss_head: nn.Module, device: torch.device) -> nn.Module:
    """What the loops call: the loss head, compiled where enabled (with CUDA graphs if asked, on a GPU)."""
    if not use_compile(config, device):
        return loss_head
    if config.cuda_graphs and device.type == "cuda":
        return CudaGraphStep(loss_head)
    return torch.compile(loss_head, dynamic=False)


def compile_description(state: TrainState) -> str:
    if state.step_fn is state.loss_head:
        return "off"
    return "on, CUDA graphs" if isinstance(state.step_fn, CudaGraphStep) else "on"


def attention_description(state: TrainState, device: torch.device) -> str:
    """Which attention kernel the model's layers call here: FlashAttention when it imports and works, else SDPA."""
    model = state.loss_head.model
    seq_len = model.config.seq_len + model.inner.puzzle_emb_len
    return attention_backend(seq_len, device, model.inner.forward_dtype, model.config.hidden_size // model.config.num_heads)


def cuda_graphs_hint(fused_kernels: str, compile_text: str) -> Optional[str]:
    """Advice for a compiled step without CUDA graphs that uses quack's kernels, else None.

    quack launches each kernel from Python, slowly enough that the GPU waits for the host between
    them; replayed from CUDA graphs, the step launches nothing from Python."""
    if "quack" not in fused_kernels or compile_text != "on":
        return None
    return ("quack's kernels are launched from Python, slowly enough that the GPU waits between them: "
            "add cuda_graphs=true to replay the step from CUDA graphs (the same numbers, faster)")


def build_loss_head(config: PretrainConfig, metadata, context: DistributedContext) -> nn.Module:
    """The model wrapped in its loss head, initialised from `config.seed` (identically on every rank)."""
    model_class = load_model_class(config.arch.name)
    loss_head_class = load_model_class(config.arch.loss.name)
    model_config = model_config_dict(
        config,
        batch_size=micro_batch_size(config, context.world_size),
        vocab_size=metadata.vocab_size,
        seq_len=metadata.seq_len,
        num_puzzle_identifiers=metadata.num_puzzle_identifiers,
    )
    model_config.setdefault("forward_dtype", "bfloat16" if context.device.type == "cuda" else "float32")
    # Initialise on the CPU so that a seed gives the same weights on every device.
    torch.manual_seed(config.seed)
    try:
        model = model_class(model_config)
    except ValidationError as error:
        # The model validates its own config (the arch keys).
        raise ConfigError(f"arch: the config does not fit {config.arch.name}:\n" + format_validation_error(error, prefix="arch.")) from None
    except ValueError as error:
        raise ConfigError(f"arch: the config does not fit {config.arch.name}: {error}") from None
    loss_head = loss_head_class(model, loss_type=config.arch.loss.loss_type).to(context.device)
    if model.config.fused_kernels:
        # Opt-in speed code: swaps in fused modules that hold the same parameters, so the state dict
        # and the optimisers are unchanged; each kernel is used only where it checks out on this device.
        families = FAMILIES if model.config.fused_kernels is True else model.config.fused_kernels
        apply_fused_kernels(model, context.device, families)
    return loss_head


def build_optimizers(config: PretrainConfig, loss_head: nn.Module, context: DistributedContext):
    """Sign-SGD for the puzzle embedding (if any), Adam-atan2 for the weights unless freeze_weights."""
    optimizers, base_lrs = [], []
    if config.arch.model_extra.get("puzzle_emb_ndim", 0) > 0:
        optimizers.append(
            CastedSparseEmbeddingSignSGD_Distributed(
                loss_head.model.puzzle_emb.buffers(), world_size=context.world_size, lr=0, weight_decay=config.puzzle_emb_weight_decay
            )
        )
        base_lrs.append(config.puzzle_emb_lr)
    elif config.freeze_weights:
        raise ConfigError("freeze_weights=true trains only the puzzle embedding, and this model has none (arch.puzzle_emb_ndim=0): "
                          "set freeze_weights=false, or a puzzle_emb_ndim > 0")
    if not config.freeze_weights:
        optimizers.append(
            build_adam_atan2(loss_head.parameters(), lr=0, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2), log=context.is_main)
        )
        base_lrs.append(config.lr)
    return optimizers, base_lrs


def build_ema(config: PretrainConfig, loss_head: nn.Module) -> Optional[EMAHelper]:
    """The EMA of the trained weights with ema=true; None without, or with nothing to average (freeze_weights)."""
    if not config.ema or not any(parameter.requires_grad for parameter in loss_head.parameters()):
        return None
    return EMAHelper(loss_head, mu=config.ema_rate)


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    if device.type == "cuda":
        return {key: value.pin_memory().to(device, non_blocking=True) for key, value in batch.items()}
    return batch


class DeferredMetrics:
    """A step's metric values copied to the host without stalling the device; read one step later,
    so the host can queue the next step while the device still works on this one."""

    def __init__(self, keys: List[str], values: torch.Tensor, step: int, lr: float):
        self.keys, self.step, self.lr = keys, step, lr
        if values.device.type == "cuda":
            self.host_values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host_values.copy_(values, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.host_values, self.ready = values, None

    def values(self) -> Dict[str, float]:
        if self.ready is not None:
            self.ready.synchronize()
        return dict(zip(self.keys, self.host_values.tolist()))


def build_train_state(config: PretrainConfig, metadata, context: DistributedContext, fingerprint: Optional[str] = None) -> TrainState:
    """Model, optimisers, EMA and step function at step 0; the ACT exploration RNG seeded per rank.
    `fingerprint`: the training data's dataset_fingerprint, stored in the checkpoints."""
    loss_head = build_loss_head(config, metadata, context)
    if config.freeze_weights:
        # Only the puzzle embedding (a buffer with its own optimiser) learns: no weight gradients at all.
        loss_head.requires_grad_(False)
    optimizers, base_lrs = build_optimizers(config, loss_head, context)
    total_steps = int(config.epochs * metadata.total_groups * metadata.mean_puzzle_examples / config.global_batch_size)
    torch.manual_seed(config.seed + context.rank)
    return TrainState(loss_head=loss_head, step_fn=step_function(config, loss_head, context.device), optimizers=optimizers, base_lrs=base_lrs,
                      carries=None, step=0, total_steps=total_steps, dataset_fingerprint=fingerprint, ema=build_ema(config, loss_head))


def updated_tensors(state: TrainState, device: torch.device) -> List[torch.Tensor]:
    """What an optimiser step changes, on the training device: the parameters, the puzzle-embedding
    table (a buffer, updated by its own optimiser) and the optimisers' moments. (Adam's step counts
    live on the host; the save checks them.)"""
    tensors = []
    for optimizer in state.optimizers:
        tensors += [tensor for group in optimizer.param_groups for tensor in group["params"] if tensor.is_floating_point()]
        for parameter_state in optimizer.state.values():
            tensors += [value for value in parameter_state.values()
                        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.device == device]
    return tensors


def load_start_weights(config: PretrainConfig, state: TrainState, context: DistributedContext) -> None:
    """load_checkpoint: a new run starts from the weights of `config.load_checkpoint` (its EMA weights if
    it has them; TRM's own files hold only those). A puzzle embedding of another number of rows (a
    model adapted to other puzzles) starts with every row at the mean of the file's rows."""
    path = config.load_checkpoint
    if not os.path.isfile(path):
        raise ConfigError(f"load_checkpoint={path}: no such file. Give a step_N.pt written by pretrain.py or an original step_N weights file")
    checkpoint, _ = read_weights_file(path)
    model_state = state.loss_head.state_dict()
    weights = normalise_keys(weights_from_checkpoint(checkpoint, ema=True), model_state.keys())
    messages = []
    for key, value in weights.items():
        expected = model_state.get(key)
        if key.endswith("puzzle_emb.weights") and expected is not None and value.shape != expected.shape and value.shape[1:] == expected.shape[1:]:
            weights[key] = value.mean(dim=0, keepdim=True).expand(expected.shape).contiguous()
            messages.append(f"load_checkpoint: {key} {list(value.shape)} -> {list(expected.shape)}: every row set to the mean of the checkpoint's rows")
    try:
        load_model_state_dict(state.loss_head, weights, fix="train with the arch.* settings the weights were trained with; only "
                              "the puzzle embedding may have another number of rows (another dataset's puzzles).")
    except ValueError as error:
        raise ConfigError(f"load_checkpoint={path}: {error}") from None
    # The average starts from the loaded weights.
    state.ema = build_ema(config, state.loss_head)
    if context.is_main:
        for message in messages:
            print(message)
        print(f"load_checkpoint: starting from the {'EMA weights' if has_ema_weights(checkpoint) else 'weights'} of {path}")


def split_batch(batch: Dict[str, torch.Tensor], parts: int) -> List[Dict[str, torch.Tensor]]:
    """A process's batch as `parts` micro-batches of consecutive rows (views, no copies)."""
    if parts == 1:
        return [batch]
    pieces = {key: value.chunk(parts) for key, value in batch.items()}
    return [{key: pieces[key][index] for key in batch} for index in range(parts)]


def set_aside_sparse_gradients(optimizers: List[torch.optim.Optimizer]) -> None:
    for optimizer in optimizers:
        if isinstance(optimizer, CastedSparseEmbeddingSignSGD_Distributed):
            optimizer.set_aside_gradients()


def train_batch(config: PretrainConfig, state: TrainState, batch: Dict[str, torch.Tensor], global_batch_size: int, context: DistributedContext) -> Optional[DeferredMetrics]:
    if state.step >= state.total_steps:
        return None
    state.step += 1
    micro_batches = split_batch(to_device(batch, context.device), config.gradient_accumulation_steps)
    if state.carries is None:
        state.carries = [state.loss_head.initial_carry(micro_batch) for micro_batch in micro_batches]

    # Each micro-batch adds its share of the global batch's mean loss to the gradients, as each
    # process does; the metrics are sums, added up over micro-batches and then over processes.
    values = None
    for index, micro_batch in enumerate(micro_batches):
        if index > 0:
            set_aside_sparse_gradients(state.optimizers)
        state.carries[index], loss, metrics, _, _ = state.step_fn(carry=state.carries[index], batch=micro_batch, return_keys=[])
        (loss / global_batch_size).backward()
        keys = sorted(metrics)
        micro_values = torch.stack([metrics[key].detach().float() for key in keys])
        values = micro_values if values is None else values + micro_values
    all_reduce_gradients(list(state.loss_head.parameters()), context.world_size)

    lr = 0.0
    for optimizer, base_lr in zip(state.optimizers, state.base_lrs):
        lr = cosine_schedule_with_warmup_lr(state.step, base_lr, config.lr_warmup_steps, state.total_steps, config.lr_min_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad()
    if state.ema is not None:
        state.ema.update()

    # The loss was computed before this update, so it cannot show an update that leaves a NaN or an
    # infinity in the weights: one fused pass over them, read with the metrics.
    values = torch.cat([values, any_non_finite(updated_tensors(state, context.device)).view(1)])
    if context.is_distributed:
        torch.distributed.all_reduce(values)
    return DeferredMetrics(keys + [NON_FINITE_WEIGHTS], values, state.step, lr)


def finish_train_metrics(pending: DeferredMetrics, global_batch_size: int) -> Dict[str, float]:
    """Raw sums -> means (losses per sequence of the global batch, the rest per halted sequence).
    Raises NonFiniteError on a NaN or infinite metric, or weights made non-finite by the step's
    update, on every rank alike (the values are all-reduced)."""
    raw = pending.values()
    non_finite_weights = raw.pop(NON_FINITE_WEIGHTS)
    if not all(math.isfinite(value) for value in raw.values()):
        raise NonFiniteError(f"non-finite training metrics at step {pending.step}: {raw}. The run stops here; nothing of this step was saved.")
    if non_finite_weights:
        raise NonFiniteError(
            f"the update of step {pending.step} left NaN or infinite values in the weights or the optimiser state "
            "(its loss, computed before the update, was finite). "
            "The run stops here; nothing of this step was saved."
        )
    count = max(raw["count"], 1)
    metrics = {f"train/{key}": value / (global_batch_size if key.endswith("loss") else count) for key, value in raw.items()}
    metrics["train/lr"] = pending.lr
    return metrics


def create_evaluators(config: PretrainConfig, data_paths: Sequence[str], metadata) -> List[Any]:
    """The evaluators that score each evaluation, one per entry of `config.evaluators` and test folder
    (TRM's rule); with evaluators null, ARC's on an ARC dataset and none otherwise."""
    entries = config.evaluators
    if entries is None:
        entries = [EvaluatorConfig(name="arc@ARC")] if all(is_arc_dataset(path, metadata) for path in data_paths) else []
    evaluators = []
    for index, entry in enumerate(entries):
        evaluator_class = load_model_class(entry.name, prefix="evaluators.")
        kwargs = dict(entry.model_extra)
        if "aggregated_voting" in inspect.signature(evaluator_class).parameters:
            # Each evaluation scores its own model. TRM's default carries the votes of earlier evaluations
            # over, which a checkpoint does not hold: a resumed run would score differently.
            kwargs.setdefault("aggregated_voting", False)
        for data_path in data_paths:
            try:
                evaluators.append(evaluator_class(data_path=data_path, eval_metadata=metadata, **kwargs))
            except (TypeError, ValueError, FileNotFoundError) as error:
                raise ConfigError(f"evaluators[{index}] ({entry.name}) on {data_path}: {error}") from None
    return evaluators


def evaluator_results(evaluators: Sequence[Any], save_dir: Optional[str], step: int, context: DistributedContext) -> Dict[str, Dict[str, float]]:
    """Each evaluator's metrics (on the main rank), grouped as the evaluation's per-set metrics: "ARC/pass@2"
    becomes {"ARC": {"pass@2": ...}}. Every rank calls each evaluator, which gathers its votes on rank 0
    and writes its files (e.g. submission.json) into `evaluator_<Class>_step_<N>` under `save_dir`."""
    grouped: Dict[str, Dict[str, float]] = {}
    for evaluator in evaluators:
        name = type(evaluator).__name__
        save_path = None if save_dir is None else os.path.join(save_dir, f"evaluator_{name}_step_{step}")
        for key, value in (evaluator.result(save_path, rank=context.rank, world_size=context.world_size) or {}).items():
            group, _, metric = key.rpartition("/")
            grouped.setdefault(group or name, {})[metric] = value
    return grouped


def valid_rows(global_batch_size: int, effective_batch_size: int, context: DistributedContext) -> int:
    """How many rows of this rank's slice of a padded test batch are real examples."""
    local = global_batch_size // context.world_size
    return max(0, min(local, effective_batch_size - context.rank * local))


def progress_interval() -> float:
    """Seconds between progress-bar redraws: a terminal redraws often, a log file gets a line every 30 s."""
    return 0.1 if sys.stderr.isatty() else 30


def evaluate_batch(state: TrainState, batch: Dict[str, torch.Tensor], return_keys: Sequence[str], progress: Optional[tqdm] = None):
    """Run one batch (on the model's device; the model in eval mode) for the model's evaluation segments,
    or until every sequence has halted under adaptive halting. Returns the last call's carry, metrics and outputs."""
    model = state.loss_head.model
    carry = state.loss_head.initial_carry(batch)
    for segment in range(1, model.evaluation_steps + 1):
        carry, _, metrics, outputs, all_halted = state.step_fn(carry=carry, batch=batch, return_keys=return_keys)
        if progress is not None:
            progress.update(1)
        if model.eval_adaptive_halting and bool(all_halted):
            break
    if progress is not None:
        progress.update(model.evaluation_steps - segment)
    if not bool(all_halted):
        raise RuntimeError(f"evaluation: sequences still running after {model.evaluation_steps} segments")
    return carry, metrics, outputs


def evaluate(config: PretrainConfig, state: TrainState, loader: PuzzleDataset, context: DistributedContext, save_dir: Optional[str],
             evaluators: Sequence[Any] = ()) -> Optional[Dict[str, Dict[str, float]]]:
    """One pass over the test split. Every sequence runs the model's evaluation_steps segments
    (halt_max_steps unless set otherwise), or fewer under adaptive halting. Returns, on the main rank,
    the metrics per set (each divided by its count; `steps` is the mean segments run) and the
    evaluators' (e.g. "ARC": pass@K); saves `config.eval_save_outputs`."""
    set_names = loader.metadata.sets
    return_keys = list(dict.fromkeys([*config.eval_save_outputs, *(key for evaluator in evaluators for key in sorted(evaluator.required_outputs))]))
    for evaluator in evaluators:
        evaluator.begin_eval()
    saved: Dict[str, List[torch.Tensor]] = {}
    metric_keys: List[str] = []
    metric_sums = None
    progress = tqdm(total=loader.num_test_batches() * state.loss_head.model.evaluation_steps, desc="evaluate", unit="segment",
                    dynamic_ncols=True, mininterval=progress_interval(), leave=False, disable=not context.is_main)
    state.step_fn.eval()
    with torch.inference_mode():
        for set_name, batch, effective_batch_size in loader:
            batch = to_device(batch, context.device)
            _, metrics, outputs = evaluate_batch(state, batch, return_keys, progress)

            rows = valid_rows(config.global_batch_size, effective_batch_size, context)
            for source in (batch, outputs):
                for key, value in source.items():
                    if key in config.eval_save_outputs:
                        saved.setdefault(key, []).append(value[:rows].cpu())
            for evaluator in evaluators:
                evaluator.update_batch(batch, outputs)

            if metric_sums is None:
                metric_keys = sorted(metrics)
                metric_sums = torch.zeros((len(set_names), len(metric_keys)), dtype=torch.float64, device=context.device)
            metric_sums[set_names.index(set_name)] += torch.stack([metrics[key].double() for key in metric_keys])
    state.step_fn.train()
    progress.close()

    if saved and save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)
        path = os.path.join(save_dir, f"step_{state.step}_all_preds.{context.rank}")
        save_atomically({key: torch.cat(values) for key, values in saved.items()}, path)

    if metric_sums is None:
        return None
    if context.is_distributed:
        torch.distributed.all_reduce(metric_sums)
    results = {}
    for set_index, set_name in enumerate(set_names):
        sums = dict(zip(metric_keys, metric_sums[set_index].tolist()))
        count = max(sums.pop("count"), 1)
        results[set_name] = {key: value / count for key, value in sums.items()}
    results.update(evaluator_results(evaluators, save_dir, state.step, context))
    return results if context.is_main else None


def launch(overrides: Sequence[str]) -> Optional[Dict[str, Dict[str, float]]]:
    with distributed_session() as context:
        return run_training(overrides, context)


def run_training(overrides: Sequence[str], context: DistributedContext) -> Optional[Dict[str, Dict[str, float]]]:
    config = load_config(list(overrides))
    check_world_size(config, context.world_size)
    if config.resume and config.checkpoint_path is None:
        raise ConfigError("resume=true needs checkpoint_path=<the run's folder> (e.g. checkpoints/<project>/<run>)")

    train_loader = create_dataloader(config, "train", context, test_set_mode=False, epochs_per_iter=config.epochs_per_eval)
    eval_loader = create_dataloader(config, "test", context, test_set_mode=True, epochs_per_iter=1)
    check_test_data_fits(train_loader, eval_loader)
    evaluators = create_evaluators(config, config.test_data_paths, eval_loader.metadata)
    if config.resume and os.path.exists(os.path.join(config.checkpoint_path, SAVED_CONFIG_NAME)):
        # A resumed run keeps its name (and so its W&B run) unless the command line gives another.
        saved = read_saved_config(config.checkpoint_path)
        config = config.model_copy(update={key: getattr(config, key) or getattr(saved, key) for key in ("project_name", "run_name")})
    config = broadcast_object(with_derived_names(config, config.arch.name.partition("@")[2]), context)
    state = build_train_state(config, train_loader.metadata, context, fingerprint=datasets_fingerprint(config.data_paths))

    # Nothing is written in the run folder before its lock is held, and the lock goes at the end,
    # whether the run finished or failed.
    with run_folder_lock(config.checkpoint_path, context):
        resume_from = prepare_run_folder(config, context)
        if resume_from is not None:
            restore_train_state(resume_from, config, state, train_loader, context)
        elif config.load_checkpoint is not None:
            load_start_weights(config, state, context)
        logger = run_on_main(lambda: start_logging(config, state, resume_from, evaluators, context), context) or SilentLogger()
        try:
            return _train_loop(config, state, train_loader, eval_loader, evaluators, logger, context)
        finally:
            logger.close()


def start_logging(config: PretrainConfig, state: TrainState, resume_from: Optional[str], evaluators, context: DistributedContext) -> RunLogger:
    """The main rank's start: the run's config and metrics files, and one line about the run."""
    save_config(config, config.checkpoint_path)
    logger = RunLogger(config.checkpoint_path, config.project_name, config.run_name, config.model_dump(), config.wandb.mode, start_step=state.step)
    parameters = sum(parameter.numel() for parameter in state.loss_head.parameters())
    fused_kernels, compile_text = fused_kernels_in_use(state.loss_head.model), compile_description(state)
    print(f"{config.run_name}: {parameters:,} parameters, {state.total_steps} steps, {context.world_size} process(es) on "
          f"{context.device.type}, compile {compile_text}, attention {attention_description(state, context.device)}, "
          f"fused kernels {fused_kernels}, checkpoints in {config.checkpoint_path}"
          + (f", resuming from {os.path.basename(resume_from)}" if resume_from else ""))
    hint = cuda_graphs_hint(fused_kernels, compile_text)
    if hint:
        print(f"Note: {hint}")
    if config.evaluators is None and evaluators:
        print("evaluators: arc@ARC (ARC pass@K at each evaluation, the default on an ARC dataset; evaluators=[] turns it off)")
    if config.ema and state.ema is None:
        print("ema=true: nothing to average, as freeze_weights=true trains only the puzzle embedding (never averaged); "
              "evaluations use the trained weights")
    return logger


# With stop_after_minutes, the clock is read every this many steps. Rank 0's clock decides for all
# ranks, which costs a collective (and a host sync) per check when distributed.
STOP_CHECK_STEPS = 10


def time_is_up(config: PretrainConfig, start_time: float, step: int, context: DistributedContext) -> bool:
    if config.stop_after_minutes is None or step % STOP_CHECK_STEPS != 0:
        return False
    return broadcast_object(time.monotonic() - start_time >= 60 * config.stop_after_minutes, context)


# How to avoid the same divergence: resuming with the same settings repeats it bit for bit.
DIVERGENCE_ADVICE = ("With the same settings a resumed run repeats these steps; a new run (another checkpoint_path) "
                     "with a lower lr, or checked data, avoids them.")


def check_eval_metrics(eval_metrics: Optional[Dict[str, Dict[str, float]]], step: int, folder: str) -> None:
    """An evaluation with a NaN or infinite metric stops the run before anything of this step is saved."""
    bad = [f"{set_name}/{key} {value}" for set_name, values in (eval_metrics or {}).items() for key, value in values.items() if not math.isfinite(value)]
    if bad:
        raise NonFiniteError(f"non-finite evaluation metrics at step {step} ({', '.join(bad)}). The run stops here; "
                             f"nothing of this step was saved. {newest_checkpoint_advice(folder)} {DIVERGENCE_ADVICE}")


def _train_loop(config, state: TrainState, train_loader, eval_loader, evaluators, logger, context) -> Optional[Dict[str, Dict[str, float]]]:
    progress = tqdm(total=state.total_steps, initial=state.step, dynamic_ncols=True, mininterval=progress_interval()) if context.is_main else None
    start_time = time.monotonic()
    eval_metrics = None
    stopping = False

    def log_train_metrics(pending: DeferredMetrics) -> None:
        try:
            metrics = finish_train_metrics(pending, config.global_batch_size)
        except NonFiniteError as error:
            raise NonFiniteError(f"{error} {newest_checkpoint_advice(config.checkpoint_path)} {DIVERGENCE_ADVICE}") from None
        metrics["time/elapsed_seconds"] = time.monotonic() - start_time  # since this process entered the training loop
        logger.log(metrics, step=pending.step)

    for iteration in range(train_loader.state_dict()["iteration"], config.num_evals):
        state.step_fn.train()
        pending, save_after_eval = None, False
        for _, batch, global_batch_size in train_loader:
            current = train_batch(config, state, batch, global_batch_size, context)
            if pending is not None:
                log_train_metrics(pending)
            pending = current
            if progress is not None:
                progress.update(state.step - progress.n)
            if config.checkpoint_every_steps and current is not None and state.step % config.checkpoint_every_steps == 0:
                if train_loader.state_dict()["iteration"] != iteration:
                    # The loader has moved past this iteration's last batch: a checkpoint now would
                    # resume after the evaluation that is still due, so it is written after it.
                    save_after_eval = True
                else:
                    # Check this step's loss before its weights are saved.
                    log_train_metrics(pending)
                    pending = None
                    save_train_state(config, state, train_loader, context)
            if current is not None and time_is_up(config, start_time, state.step, context):
                # Evaluate and checkpoint here; a resumed run continues this iteration from the
                # loader's position and still evaluates at its end.
                stopping = True
                break
        if pending is not None:
            log_train_metrics(pending)

        # min_eval_interval: the first intervals train without evaluating (the last one always evaluates).
        if iteration >= config.min_eval_interval or iteration == config.num_evals - 1:
            eval_start = time.monotonic()
            # With ema=true the evaluation runs on the average, copied into the model's weights and back.
            with state.ema.applied() if state.ema is not None else contextlib.nullcontext():
                eval_metrics = evaluate(config, state, eval_loader, context, save_dir=config.checkpoint_path, evaluators=evaluators)
            run_on_main(lambda: check_eval_metrics(eval_metrics, state.step, config.checkpoint_path), context)
            if context.is_main and eval_metrics is not None:
                flat = {f"{set_name}/{key}": value for set_name, values in eval_metrics.items() for key, value in values.items()}
                flat["time/eval_seconds"] = time.monotonic() - eval_start
                flat["time/elapsed_seconds"] = time.monotonic() - start_time
                logger.log(flat, step=state.step)
                tqdm.write(f"step {state.step} eval: " + ", ".join(f"{key} {value:.4f}" for key, value in flat.items()))
        if config.checkpoint_every_eval or save_after_eval or stopping or iteration == config.num_evals - 1:
            save_train_state(config, state, train_loader, context)
        if stopping:
            if context.is_main:
                tqdm.write(f"stop_after_minutes={config.stop_after_minutes}: stopped at step {state.step} of {state.total_steps} "
                           f"(checkpoint in {config.checkpoint_path}); run again with resume=true to continue")
            break
    if progress is not None:
        progress.close()
    return eval_metrics


def main() -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        print("Defaults (config/cfg_pretrain.yaml + config/arch/hrm_v1.yaml):\n")
        print(yaml.safe_dump(load_config([]).model_dump(), sort_keys=False))
        return
    try:
        launch(sys.argv[1:] + environment_overrides(os.environ))
    except (ConfigError, DatasetError, NonFiniteError, FileNotFoundError, CheckpointError, MetricsFileError, RunFolderError, DiskFullError) as error:
        print(f"error: {error}", file=sys.stderr)
        end_process(1)
    end_process(0)


if __name__ == "__main__":
    main()
