"""Full-state checkpoints: the run folder, saving, resuming, and reading the original's weights files.

The training loop makes three calls: `prepare_run_folder` (is there a run to continue?),
`restore_train_state` and `save_train_state`. A checkpoint `step_N.pt` is one dict, built in
`checkpoint_contents` and read back through `read_checkpoint`:
  model       the loss head's state dict, uncompiled, with the original's key names
  optimizers  the state dicts of the two optimisers
  step        optimiser steps taken
  carry       the ACT carry of the sequences in flight, concatenated over ranks (global batch order)
  rng         the torch RNG states of every rank
  loader      the training loader's position (next batch to read)
  config      the run's resolved config
  ema         with ema=true: the EMA of each trained parameter, keyed as in model (which keeps the
              raw weights; buffers such as the puzzle embedding are only in model)
The original saved only the weights, as `step_N` (no suffix); `load_weights` reads both kinds.
Both hold only tensors and plain Python values, so they load with `torch.load(weights_only=True)`,
which runs no code from the file (safe for downloaded checkpoints).
"""

import dataclasses
import errno
import os
import pickle
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from pydantic import BaseModel
from torch import nn

from models.ema import EMAHelper
from models.state_dict import load_model_state_dict
from utils.config import ConfigError, PretrainConfig, micro_batch_size
from utils.distributed import DistributedContext, barrier, gather_objects
from utils.files import write_atomically

CHECKPOINT_KEYS = ("model", "optimizers", "step", "carry", "rng", "loader", "config")
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.pt$")
ORIGINAL_WEIGHTS_PATTERN = re.compile(r"^step_(\d+)$")

# Keys (dotted where nested) that may differ between a checkpoint's config and the resuming run's:
# they change how a run is launched, logged or computed, not what it computes.
RESUMABLE_CHANGES = {
    "resume", "wandb", "keep_checkpoints", "checkpoint_every_steps", "checkpoint_every_eval", "stop_after_minutes", "compile", "cuda_graphs",
    "eval_save_outputs", "checkpoint_path", "project_name", "run_name", "arch.fused_kernels", "gradient_accumulation_steps",
    "evaluators", "min_eval_interval", "load_checkpoint",
}

# What torch.load raises for an empty, truncated, corrupt or non-checkpoint file, found by trying such
# files: the zip reader, the weights-only unpickler and the legacy format each fail in their own way.
UNREADABLE_CHECKPOINT_ERRORS = (
    pickle.UnpicklingError, EOFError, RuntimeError, ValueError, IndexError, KeyError, TypeError, AttributeError,
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


@dataclass
class TrainState:
    """What a training run holds between steps; `step_N.pt` keeps what it needs to continue."""

    loss_head: nn.Module  # saved as "model", uncompiled: its state dict carries the original's key names
    step_fn: nn.Module  # what the loop calls: loss_head, compiled where enabled
    optimizers: List[torch.optim.Optimizer]
    base_lrs: List[float]
    carries: Optional[List[Any]]  # the ACT carry of each micro-batch (gradient_accumulation_steps of them)
    step: int
    total_steps: int
    ema: Optional[EMAHelper] = None  # with ema=true: the average of the trained weights, saved as "ema"


# ----------------------------------------------------------------------------------------------
# The calls of the training loop


def prepare_run_folder(config: PretrainConfig, context: DistributedContext) -> Optional[str]:
    """Check what `checkpoint_path` holds; return the checkpoint to resume from, if any."""
    existing = list_checkpoints(config.checkpoint_path)
    if existing and not config.resume:
        raise ConfigError(
            f"checkpoint_path={config.checkpoint_path} already holds checkpoints ({os.path.basename(existing[-1])} is the newest). "
            "Add resume=true to continue that run, or choose another checkpoint_path (or run_name) for a new one."
        )
    if config.resume and not existing and context.is_main:
        print(f"resume=true: no checkpoint in {config.checkpoint_path} yet, starting from step 0")
    return existing[-1] if existing else None


def save_train_state(config: PretrainConfig, state: TrainState, loader, context: DistributedContext) -> None:
    """Write step_N.pt with everything needed to continue bit for bit (called on every rank)."""
    checkpoint = checkpoint_contents(config, state, loader, context)
    if context.is_main:
        save_atomically(checkpoint, checkpoint_path_for_step(config.checkpoint_path, state.step))
        prune_checkpoints(config.checkpoint_path, config.keep_checkpoints)
    barrier(context)


def restore_train_state(path: str, config: PretrainConfig, state: TrainState, loader, context: DistributedContext) -> None:
    """Continue from `path`: weights, optimisers, step, loader position, this rank's carries and RNG."""
    checkpoint = read_checkpoint(path, config)
    load_model_state_dict(state.loss_head, checkpoint["model"])
    if state.ema is not None:
        if not isinstance(checkpoint.get("ema"), dict):
            raise CheckpointError(f"{path} holds no EMA weights, which this run (ema=true) continues: resume it with ema=false, "
                                  "or start a new run in another checkpoint_path")
        state.ema.load_state_dict(checkpoint["ema"])
    for optimizer, optimizer_state in zip(state.optimizers, checkpoint["optimizers"]):
        optimizer.load_state_dict(optimizer_state)
    state.step = checkpoint["step"]
    loader.load_state_dict(checkpoint["loader"])
    if checkpoint["carry"] is not None:
        # The stored carry has the rows of the global batch in order, so it resumes with any split
        # of the batch over processes and micro-batches.
        micro = micro_batch_size(config, context.world_size)
        first_row = context.rank * config.global_batch_size // context.world_size
        template = state.loss_head.initial_carry(_blank_batch(loader.metadata.seq_len, micro, context.device))
        state.carries = [
            carry_from_state(slice_carry_state(checkpoint["carry"], first_row + index * micro, first_row + (index + 1) * micro), template)
            for index in range(config.gradient_accumulation_steps)
        ]
    if len(checkpoint["rng"]) == context.world_size:
        restore_rng_state(checkpoint["rng"][context.rank], context.device)
    else:
        if context.is_main:
            print(f"resume: the checkpoint was written by {len(checkpoint['rng'])} processes, this run has {context.world_size}; "
                  "random streams restart from the seed, so the run continues but not bit for bit")
        torch.manual_seed(config.seed + context.rank + state.step)


# ----------------------------------------------------------------------------------------------
# The checkpoint dict: built in one place, read and checked in one place


def checkpoint_contents(config: PretrainConfig, state: TrainState, loader, context: DistributedContext) -> Optional[Dict[str, Any]]:
    """The step_N.pt dict on the main rank, None on the others (every rank takes part in the gathers)."""
    local_carry = None if state.carries is None else concatenate_carry_states([carry_to_state(carry) for carry in state.carries])
    carry_states = gather_objects(local_carry, context)
    rng_states = gather_objects(rng_state(context.device), context)
    if not context.is_main:
        return None
    contents = {} if state.ema is None else {"ema": state.ema.state_dict()}
    return {
        **contents,
        "model": state.loss_head.state_dict(),
        "optimizers": [optimizer.state_dict() for optimizer in state.optimizers],
        "step": state.step,
        "carry": None if carry_states[0] is None else concatenate_carry_states(carry_states),
        "rng": rng_states,
        "loader": loader.state_dict(),
        "config": config.model_dump(),
    }


def read_checkpoint(path: str, config: PretrainConfig) -> Dict[str, Any]:
    """A step_N.pt to resume from: readable, a full training state, written with a compatible config."""
    checkpoint = load_checkpoint(path)
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint] if isinstance(checkpoint, dict) else list(CHECKPOINT_KEYS)
    if missing:
        raise CheckpointError(
            f"{path} is not a full training state (it lacks {', '.join(missing)}), so a run cannot continue from it. "
            "Move it out of the run folder, or start a new run in another checkpoint_path."
        )
    changed = config_changes(with_defaults_of_newer_keys(checkpoint["config"]), config.model_dump())
    if changed:
        raise ConfigError(
            f"resume: {path} was trained with another config ({'; '.join(changed)}). "
            "Resume with the same settings, or start a new run in another checkpoint_path."
        )
    return checkpoint


def with_defaults_of_newer_keys(saved: dict) -> dict:
    """A checkpoint's config with the defaults of the keys added to PretrainConfig since it was written:
    the run was trained as if it had them at their defaults."""
    defaults = {}
    for name, field in PretrainConfig.model_fields.items():
        if not field.is_required():
            value = field.get_default(call_default_factory=True)
            defaults[name] = value.model_dump() if isinstance(value, BaseModel) else value
    return {**defaults, **saved}


def config_changes(saved: dict, current: dict, prefix: str = "") -> List[str]:
    """The keys outside RESUMABLE_CHANGES whose values differ, as 'key: old in the checkpoint, new now'."""
    changed = []
    for key in sorted(set(saved) | set(current)):
        if f"{prefix}{key}" in RESUMABLE_CHANGES:
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key}: {old!r} in the checkpoint, {new!r} now")
    return changed


def load_weights(path: str) -> Tuple[Dict[str, torch.Tensor], int]:
    """The model weights (the raw ones) of one of our checkpoints or of an original weights-only file, and its step."""
    checkpoint, step = read_weights_file(path)
    return weights_from_checkpoint(checkpoint), step


def read_weights_file(path: str) -> Tuple[Dict[str, Any], int]:
    """One of our checkpoints or an original weights-only file, as a dict, and its step.

    Our checkpoints hold their step; an original weights-only file has it in its name, if anywhere (else 0)."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not model weights: pass a step_N.pt written by "
                              "pretrain.py or an original step_N weights file")
    step = checkpoint["step"] if isinstance(checkpoint.get("step"), int) else step_from_filename(path) or 0
    return checkpoint, step


def has_ema_weights(checkpoint: Dict[str, Any]) -> bool:
    """Whether a checkpoint holds EMA weights (ours with ema=true; the originals' files hold one set)."""
    return isinstance(checkpoint.get("ema"), dict)


def weights_from_checkpoint(checkpoint: Dict[str, Any], ema: bool = False) -> Dict[str, torch.Tensor]:
    """The model state dict of one of our full checkpoints or of an original weights-only file. With
    `ema` (and EMA weights in the checkpoint), the trained parameters' averages replace their raw values."""
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        if ema and has_ema_weights(checkpoint):
            return {**checkpoint["model"], **checkpoint["ema"]}
        return checkpoint["model"]
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return checkpoint
    raise ValueError(
        "the checkpoint holds neither a full training state (with a 'model' entry) nor a plain state dict "
        f"of tensors (found keys: {sorted(checkpoint)[:8]})"
    )


# ----------------------------------------------------------------------------------------------
# Files: names, discovery, atomic writes, pruning, safe loading


def checkpoint_path_for_step(folder: str, step: int) -> str:
    return os.path.join(folder, f"step_{step}.pt")


def list_checkpoints(folder: str) -> List[str]:
    """Complete checkpoints in `folder`, oldest first. Half-written files carry another suffix."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = CHECKPOINT_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return [path for _, path in sorted(found)]


def save_atomically(state: Dict[str, Any], path: str) -> None:
    """Write to a temporary name, then rename: a reader never sees a partial checkpoint.

    The data reaches the disk before the rename, so a crash of the host cannot leave the newest
    checkpoint empty or truncated either."""
    write_atomically(path, lambda file: torch.save(state, file), binary=True)


def prune_checkpoints(folder: str, keep: Optional[int]) -> None:
    if keep is None:
        return
    for path in list_checkpoints(folder)[:-keep]:
        os.remove(path)


def step_from_filename(path: str) -> Optional[int]:
    name = os.path.basename(path)
    match = CHECKPOINT_PATTERN.match(name) or ORIGINAL_WEIGHTS_PATTERN.match(name)
    return int(match.group(1)) if match else None


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        # The zip reader seeks past the end of a truncated file (EINVAL); other OS errors, such as
        # a missing permission, are not about the file's contents and keep their own message.
        if error.errno != errno.EINVAL:
            raise
        raise _unreadable_checkpoint(path, error) from error
    except UNREADABLE_CHECKPOINT_ERRORS as error:
        raise _unreadable_checkpoint(path, error) from error


def _unreadable_checkpoint(path: str, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {_first_sentence(error)}. "
        "Pick another checkpoint (step_N.pt), or delete this one (a resumed run then continues from the one before it)."
    )


def _first_sentence(error: Exception) -> str:
    """The gist of torch's message, which can run to several paragraphs."""
    message = str(error)
    # The weights-only unpickler wraps its reason in advice to load without weights_only, which
    # would run code from the file: keep only the reason.
    _, marker, reason = message.partition("WeightsUnpickler error:")
    if marker:
        message = reason
    sentence = message.strip().split("\n")[0].split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {sentence}" if sentence else type(error).__name__


# ----------------------------------------------------------------------------------------------
# The ACT carry and the RNG states as plain tensors


def carry_to_state(carry: Any) -> Any:
    """The ACT carry (nested dataclasses / dicts of tensors) as plain dicts of CPU tensors."""
    if isinstance(carry, torch.Tensor):
        return carry.detach().cpu()
    if dataclasses.is_dataclass(carry):
        return {field.name: carry_to_state(getattr(carry, field.name)) for field in dataclasses.fields(carry)}
    if isinstance(carry, dict):
        return {key: carry_to_state(value) for key, value in carry.items()}
    raise TypeError(f"cannot store a carry element of type {type(carry).__name__}")


def carry_from_state(state: Any, template: Any) -> Any:
    """Rebuild a carry shaped like `template` (same classes, devices, dtypes) from `carry_to_state`'s output."""
    if isinstance(template, torch.Tensor):
        if state.shape != template.shape:
            raise ValueError(
                f"the checkpoint's ACT carry has shape {tuple(state.shape)} where this run needs "
                f"{tuple(template.shape)}: resume with the checkpoint's global_batch_size and arch"
            )
        return state.to(device=template.device, dtype=template.dtype)
    if dataclasses.is_dataclass(template):
        values = {field.name: carry_from_state(state[field.name], getattr(template, field.name)) for field in dataclasses.fields(template)}
        return dataclasses.replace(template, **values)
    if isinstance(template, dict):
        return {key: carry_from_state(state[key], value) for key, value in template.items()}
    raise TypeError(f"cannot restore a carry element of type {type(template).__name__}")


def concatenate_carry_states(states: List[Any]) -> Any:
    """Join per-rank carry states along the batch dimension, in rank order."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(states, dim=0)
    return {key: concatenate_carry_states([state[key] for state in states]) for key in first}


def slice_carry_state(state: Any, start: int, stop: int) -> Any:
    """The rows [start, stop) of a global carry state: one rank's share."""
    if isinstance(state, torch.Tensor):
        return state[start:stop]
    return {key: slice_carry_state(value, start, stop) for key, value in state.items()}


def _blank_batch(seq_len: int, batch_size: int, device: torch.device) -> Dict[str, torch.Tensor]:
    """A batch of the right shapes for `initial_carry`, which builds the template a stored carry fills."""
    return {
        "inputs": torch.zeros((batch_size, seq_len), dtype=torch.int32, device=device),
        "labels": torch.zeros((batch_size, seq_len), dtype=torch.int32, device=device),
        "puzzle_identifiers": torch.zeros((batch_size,), dtype=torch.int32, device=device),
    }


def rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: Dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
