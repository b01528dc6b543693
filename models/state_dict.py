"""Loading model weights saved by this repository or by the original HRM code.

The original saves the state dict of its compiled loss head, so its keys read
`_orig_mod.model.inner....`; ours read `model.inner....`. Both load, into the loss head or into the
bare model (whose keys have no leading `model.`).
"""

from typing import Dict, Mapping

import torch
from torch import nn

COMPILED_PREFIX = "_orig_mod."  # added by torch.compile to the wrapped module's keys
LOSS_HEAD_PREFIX = "model."  # ACTLossHead keeps the model as `self.model`


def normalise_keys(state_dict: Mapping[str, torch.Tensor], expected_keys) -> Dict[str, torch.Tensor]:
    """Drop torch.compile's `_orig_mod.` and add or strip the loss head's `model.` to fit `expected_keys`."""
    state_dict = {key.replace(COMPILED_PREFIX, ""): value for key, value in state_dict.items()}
    expected_keys = list(expected_keys)
    expects_head = bool(expected_keys) and all(key.startswith(LOSS_HEAD_PREFIX) for key in expected_keys)
    has_head = bool(state_dict) and all(key.startswith(LOSS_HEAD_PREFIX) for key in state_dict)
    if expects_head and not has_head:
        return {LOSS_HEAD_PREFIX + key: value for key, value in state_dict.items()}
    if has_head and not expects_head:
        return {key[len(LOSS_HEAD_PREFIX):]: value for key, value in state_dict.items()}
    return state_dict


# What to do when a checkpoint does not fit the model built from a run's config.
REBUILD_FIX = ("build the model with the config the checkpoint was trained with (its all_config.yaml: the arch.* "
               "settings and the same dataset).")


def load_model_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], fix: str = REBUILD_FIX) -> None:
    """Copy `state_dict` into `model` after checking that every key and shape fits.

    Raises ValueError naming the missing keys, unexpected keys and shape mismatches otherwise, and `fix`.
    """
    expected = model.state_dict()
    state_dict = normalise_keys(state_dict, expected.keys())

    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: expected {tuple(expected[key].shape)} vs found {tuple(state_dict[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(expected[key].shape) != tuple(state_dict[key].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append("missing keys: " + ", ".join(missing))
        if unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        raise ValueError(
            "The checkpoint does not fit this model; it was made with another config (architecture or dataset shape).\n  "
            + "\n  ".join(problems)
            + f"\nFix: {fix}"
        )
    model.load_state_dict(state_dict)
