"""The dataset format shared by every builder and the loader: metadata and dihedral transforms."""

from typing import List, Optional

import numpy as np
from pydantic import BaseModel

# Inverse of each dihedral transform id below: applying DIHEDRAL_INVERSE[t] after t is the identity.
DIHEDRAL_INVERSE = [0, 3, 2, 1, 4, 5, 6, 7]


class PuzzleDatasetMetadata(BaseModel):
    """Contents of `<split>/dataset.json`; field names are the original's."""

    pad_id: int
    ignore_label_id: Optional[int]
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    sets: List[str]


def dihedral_transform(grid: np.ndarray, transform_id: int) -> np.ndarray:
    """Apply one of the 8 symmetries of the square to the last two axes of `grid`.

    Ids: 0 identity, 1 rot90, 2 rot180, 3 rot270, 4 flip left-right, 5 flip up-down,
    6 transpose, 7 anti-diagonal reflection (flip left-right of rot90).
    """
    axes = (-2, -1)
    if transform_id == 0:
        return grid
    if transform_id == 1:
        return np.rot90(grid, k=1, axes=axes)
    if transform_id == 2:
        return np.rot90(grid, k=2, axes=axes)
    if transform_id == 3:
        return np.rot90(grid, k=3, axes=axes)
    if transform_id == 4:
        return np.flip(grid, axis=-1)
    if transform_id == 5:
        return np.flip(grid, axis=-2)
    if transform_id == 6:
        return np.swapaxes(grid, -2, -1)
    if transform_id == 7:
        return np.flip(np.rot90(grid, k=1, axes=axes), axis=-1)
    raise ValueError(f"dihedral transform id must be 0..7, got {transform_id}")


def inverse_dihedral_transform(grid: np.ndarray, transform_id: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[transform_id])
