"""Full-state checkpoints: written atomically, found again for resuming, pruned on request.

A checkpoint `step_N.pt` is one dict:
  model       the loss head's state dict, uncompiled, with the original's key names
  optimizers  the state dicts of the two optimisers
  step        optimiser steps taken
  carry       the ACT carry of the sequences in flight, concatenated over ranks (global batch order)
  rng         the torch RNG states of every rank
  loader      the training loader's position (next batch to read)
  config      the run's resolved config
The original saved only the weights, as `step_N` (no suffix); `weights_from_checkpoint` reads both kinds.
Both hold only tensors and plain Python values, so they load with `torch.load(weights_only=True)`,
which runs no code from the file (safe for downloaded checkpoints).
"""

import dataclasses
import errno
import os
import pickle
import re
from typing import Any, Dict, List, Optional

import torch

from utils.files import write_atomically

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.pt$")
ORIGINAL_WEIGHTS_PATTERN = re.compile(r"^step_(\d+)$")

# What torch.load raises for an empty, truncated, corrupt or non-checkpoint file, found by trying such
# files: the zip reader, the weights-only unpickler and the legacy format each fail in their own way.
UNREADABLE_CHECKPOINT_ERRORS = (
    pickle.UnpicklingError, EOFError, RuntimeError, ValueError, IndexError, KeyError, TypeError, AttributeError,
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


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


def weights_from_checkpoint(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The model state dict of one of our full checkpoints or of an original weights-only file."""
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        return checkpoint["model"]
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return checkpoint
    raise ValueError(
        "the checkpoint holds neither a full training state (with a 'model' entry) nor a plain state dict "
        f"of tensors (found keys: {sorted(checkpoint)[:8]})"
    )


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


def rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: Dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
