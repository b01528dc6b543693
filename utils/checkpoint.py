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
  dataset_fingerprint  dataset_fingerprint() of the training data (a resume checks it)
  checksum    sha256 of everything above, taken when it was saved (a load checks it)
The original saved only the weights, as `step_N` (no suffix); `load_weights` reads both kinds.
Both hold only tensors and plain Python values, so they load with `torch.load(weights_only=True)`,
which runs no code from the file (safe for downloaded checkpoints).

What a run folder holds is written by one run (`run.lock`, utils/run_lock.py), never overwritten
by a new one, and never holds a checkpoint with a NaN or an infinity in it.
"""

import dataclasses
import errno
import hashlib
import os
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from pydantic import BaseModel
from torch import nn

from models.ema import EMAHelper
from models.state_dict import load_model_state_dict
from utils.config import SAVED_CONFIG_NAME, ConfigError, PretrainConfig, dataset_setting, micro_batch_size, read_saved_config
from utils.distributed import DistributedContext, broadcast_object, gather_objects, run_on_main
from utils.files import DiskFullError, write_atomically
from utils.finite import NonFiniteError, non_finite_paths
from utils.run_lock import acquire_run_lock

CHECKPOINT_KEYS = ("model", "optimizers", "step", "carry", "rng", "loader", "config")
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.pt$")
ORIGINAL_WEIGHTS_PATTERN = re.compile(r"^step_(\d+)$")
# The files a run writes in its folder (ours and the original's): a new run refuses a folder that holds any.
RUN_FILE_PATTERN = re.compile(r"^(step_\d+(\.pt)?|step_\d+_all_preds\.\d+|all_config\.yaml|metrics\.jsonl|wandb_run_id\.txt|wandb)$")
# What a process stopped in the middle of an atomic write leaves behind (utils/files.py).
PARTIAL_FILE_PATTERN = re.compile(r"^(step_\d+\.pt|step_\d+_all_preds\.\d+|all_config\.yaml|metrics\.jsonl|wandb_run_id\.txt)\.partial$")

# Keys (dotted where nested) that may differ between a checkpoint's config and the resuming run's:
# they change how a run is launched, logged or computed, not what it computes.
RESUMABLE_CHANGES = {
    "resume", "wandb", "keep_checkpoints", "checkpoint_every_steps", "checkpoint_every_eval", "stop_after_minutes", "compile", "cuda_graphs",
    "eval_save_outputs", "checkpoint_path", "project_name", "run_name", "arch.fused_kernels", "gradient_accumulation_steps",
    "allow_dataset_change",
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
    dataset_fingerprint: Optional[str] = None  # of the training data, stored in each checkpoint
    ema: Optional[EMAHelper] = None  # with ema=true: the average of the trained weights, saved as "ema"


# ----------------------------------------------------------------------------------------------
# The calls of the training loop


@contextmanager
def run_folder_lock(folder: str, context: DistributedContext) -> Iterator[None]:
    """Hold `folder`'s lock (utils/run_lock.py) for the `with` block. Rank 0 takes it; if it cannot,
    every rank raises the same RunFolderError."""
    lock = run_on_main(lambda: acquire_run_lock(folder), context)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def prepare_run_folder(config: PretrainConfig, context: DistributedContext) -> Optional[str]:
    """Under the folder's lock (run_lock.run_folder_lock): remove what stopped writers left, make sure a
    new run finds no other run's files, and return the checkpoint to resume from, if any. Rank 0
    looks; every rank gets its answer, or raises the same error."""
    return broadcast_object(run_on_main(lambda: _checked_run_folder(config), context), context)


def _checked_run_folder(config: PretrainConfig) -> Optional[str]:
    folder = config.checkpoint_path
    remove_partial_files(folder)
    names = sorted(os.listdir(folder))
    if not config.resume:
        found = [name for name in names if RUN_FILE_PATTERN.match(name)]
        if found:
            listed = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
            raise ConfigError(
                f"checkpoint_path={folder} already holds another run's files ({listed}). "
                "Add resume=true to continue that run, or choose another checkpoint_path (or run_name) for a new one."
            )
        return None
    existing = list_checkpoints(folder)
    if existing:
        return existing[-1]
    originals = sorted((name for name in names if ORIGINAL_WEIGHTS_PATTERN.match(name)), key=step_from_filename)
    if originals:
        raise ConfigError(
            f"resume=true: {folder} holds weights-only files of the original release ({', '.join(originals)}) and no step_N.pt: "
            "they carry no training state to continue from. Evaluate them with evaluate.py, or start a new run in another checkpoint_path."
        )
    if os.path.exists(os.path.join(folder, SAVED_CONFIG_NAME)):
        changed = config_changes(read_saved_config(folder).model_dump(), config.model_dump())
        if changed:
            raise ConfigError(
                f"resume=true: {folder} holds no checkpoint, and its {SAVED_CONFIG_NAME} is of a run with another config "
                f"({'; '.join(changed)}). Resume with the same settings, or start a new run in another checkpoint_path."
            )
    print(f"resume=true: no checkpoint in {folder} yet, starting from step 0")
    return None


def remove_partial_files(folder: str) -> None:
    """Remove the temporary files of atomic writes that a stopped process left (never complete, never read)."""
    for name in sorted(os.listdir(folder)):
        if PARTIAL_FILE_PATTERN.match(name):
            os.remove(os.path.join(folder, name))
            print(f"Note: removed {os.path.join(folder, name)}, left incomplete by a process stopped while writing it")


def save_train_state(config: PretrainConfig, state: TrainState, loader, context: DistributedContext) -> None:
    """Write step_N.pt with everything needed to continue bit for bit (called on every rank), then
    prune the oldest. A checkpoint holding a NaN or an infinity is not written, and nothing is
    pruned unless the new checkpoint is complete on the disk. If rank 0 cannot save, every rank
    raises its error."""
    checkpoint = checkpoint_contents(config, state, loader, context)

    def write_and_prune() -> None:
        write_checkpoint(checkpoint, checkpoint_path_for_step(config.checkpoint_path, state.step))
        prune_checkpoints(config.checkpoint_path, config.keep_checkpoints)

    run_on_main(write_and_prune, context)


def write_checkpoint(checkpoint: Dict[str, Any], path: str) -> None:
    """The last checks before a checkpoint reaches the disk: no non-finite number, and the checksum
    of its content stored in it; then the atomic write."""
    folder = os.path.dirname(path)
    non_finite = non_finite_paths(checkpoint)
    if non_finite:
        listed = ", ".join(non_finite[:4]) + (f" and {len(non_finite) - 4} more" if len(non_finite) > 4 else "")
        raise NonFiniteError(
            f"{os.path.basename(path)} was not written: it would hold NaN or infinite values (in {listed}). "
            + newest_checkpoint_advice(folder)
        )
    try:
        save_atomically({**checkpoint, "checksum": content_checksum(checkpoint)}, path)
    except DiskFullError as error:
        raise DiskFullError(f"{error} {newest_checkpoint_advice(folder)}") from error


def newest_checkpoint_advice(folder: str) -> str:
    """Where a stopped run can continue from: its newest checkpoint, or nowhere yet."""
    existing = list_checkpoints(folder)
    if existing:
        return f"The newest checkpoint, {existing[-1]}, is complete and finite: resume=true continues from it."
    return f"No checkpoint of this run was written in {folder}."


def restore_train_state(path: str, config: PretrainConfig, state: TrainState, loader, context: DistributedContext) -> None:
    """Continue from `path`: weights, optimisers, step, loader position, this rank's carries and RNG."""
    checkpoint = read_checkpoint(path, config, state.dataset_fingerprint)
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
        "dataset_fingerprint": state.dataset_fingerprint,
    }


def read_checkpoint(path: str, config: PretrainConfig, dataset_fingerprint: Optional[str]) -> Dict[str, Any]:
    """A step_N.pt to resume from: readable and undamaged, a full training state, written with a
    compatible config, on the same dataset (`dataset_fingerprint`: the one at data_paths now)."""
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
    check_dataset(path, checkpoint.get("dataset_fingerprint"), dataset_fingerprint, config)
    return checkpoint


def check_dataset(path: str, saved: Optional[str], current: Optional[str], config: PretrainConfig) -> None:
    """A resumed run trains on the data it started with, unless the user allows a change."""
    if saved is None:
        print(f"Note: {path} records no dataset fingerprint (it predates them): the dataset at {dataset_setting(config)} is not checked")
    elif saved != current:
        if not config.allow_dataset_change:
            raise ConfigError(
                f"resume: the dataset at {dataset_setting(config)} is not the one this run trained on (fingerprint {saved} "
                f"in {path}, {current} now): it was rebuilt or replaced. Resume with the original dataset, or add "
                "allow_dataset_change=true to continue on this one."
            )
        print(f"Note: allow_dataset_change=true: continuing on the dataset at {dataset_setting(config)} (fingerprint {current}), "
              f"not the one the run trained on so far ({saved})")
def with_defaults_of_newer_keys(saved: dict) -> dict:
    """A checkpoint's config with the defaults of the keys added to PretrainConfig since it was written:
    the run was trained as if it had them at their defaults (and a data_path=X as data_paths=[X])."""
    if "data_path" in saved:
        saved = {**saved, "data_paths": [saved["data_path"]]}
        del saved["data_path"]
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


def check_checkpoint_file(path: str) -> None:
    """A checkpoint path names an existing file: a folder is answered with the files to pick from."""
    if os.path.isdir(path):
        candidates = [os.path.basename(candidate) for candidate in list_checkpoints(path)] or sorted(
            (name for name in os.listdir(path) if ORIGINAL_WEIGHTS_PATTERN.match(name)), key=step_from_filename
        )
        if candidates:
            raise CheckpointError(f"{path} is a folder: name one of its checkpoints, e.g. {os.path.join(path, candidates[-1])}")
        raise CheckpointError(f"{path} is a folder that holds no checkpoint (step_N.pt, or the original's step_N): name a checkpoint file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint file read without running code from it, and checked against its checksum if it has one."""
    check_checkpoint_file(path)
    checkpoint = load_tensor_file(
        path, "PyTorch checkpoint", "Pick another checkpoint (step_N.pt), or delete this one (a resumed run then continues from the one before it)."
    )
    if isinstance(checkpoint, dict) and "checksum" in checkpoint:
        stored = checkpoint.pop("checksum")
        if stored != content_checksum(checkpoint):
            raise CheckpointError(
                f"{path} is damaged: its content differs from what was saved (it fails the checksum written with it), "
                "e.g. bytes changed on the disk or in a copy. Copy it again from where it came from, or pick another "
                "checkpoint (step_N.pt); a resumed run continues from the newest one: move this one out of the run folder to resume from the one before."
            )
    elif isinstance(checkpoint, dict) and "optimizers" in checkpoint:
        print(f"Note: {path} carries no checksum (it predates them): loaded without checking its content")
    return checkpoint


def content_checksum(checkpoint: Dict[str, Any]) -> str:
    """sha256 of a checkpoint's content: every key, value, tensor dtype, shape and byte, in order.

    Stored inside the file, it is taken over the loaded values rather than the file's bytes: torch's
    reader ignores the archive's own CRCs, and a changed byte shows up as a changed value (or an
    unreadable file)."""
    digest = hashlib.sha256()
    _add_to_digest(digest, checkpoint)
    return digest.hexdigest()


def _add_to_digest(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {tensor.dtype} {tuple(value.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _add_to_digest(digest, key)
            _add_to_digest(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _add_to_digest(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def load_tensor_file(path: str, kind: str, fix: str) -> Any:
    """A file of torch.save read without running code from it; an unreadable one is refused as
    `path` "is not a readable `kind`", with the reason and `fix`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        # The zip reader seeks past the end of a truncated file (EINVAL); other OS errors, such as
        # a missing permission, are not about the file's contents and keep their own message.
        if error.errno != errno.EINVAL:
            raise
        raise CheckpointError(f"{path} is not a readable {kind} (truncated or corrupt?): {_first_sentence(error)}. {fix}") from error
    except UNREADABLE_CHECKPOINT_ERRORS as error:
        raise CheckpointError(f"{path} is not a readable {kind} (truncated or corrupt?): {_first_sentence(error)}. {fix}") from error


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
