"""Which normal training images a trained method keeps out of training (U-Flow, PRN).

One rule for both: no image is held out when the fraction is 0 or there are fewer than
:data:`MIN_POOL` images; otherwise ``max(2, round(fraction * count))`` images, the first of a
seeded permutation of the image indices, returned sorted. PRN's cross-fitting folds deal the same
permutation out round-robin.

The permutation has two sources, kept so that a model retrained with the same seed is the model
it was before the two methods shared this code: ``"numpy"`` (PRN, ``default_rng([seed, 7])``) and
``"torch"`` (U-Flow, ``torch.randperm`` seeded with ``seed + 7``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

MIN_POOL = 10
"""Fewest normal images from which any are held out."""

Source = Literal["numpy", "torch"]


def seeded_order(count: int, seed: int, source: Source = "numpy") -> list[int]:
    """A seeded permutation of ``range(count)``."""
    if source == "torch":
        generator = torch.Generator().manual_seed(seed + 7)
        return [int(i) for i in torch.randperm(count, generator=generator)]
    return [int(i) for i in np.random.default_rng([seed, 7]).permutation(count)]


def held_out_count(count: int, fraction: float) -> int:
    """How many of ``count`` normal images are held out at ``fraction`` (see the module docstring)."""
    if fraction == 0 or count < MIN_POOL:
        return 0
    return max(2, round(fraction * count))


def held_out_indices(count: int, fraction: float, seed: int, source: Source = "numpy") -> list[int]:
    """Sorted indices of the normal images kept out of training."""
    size = held_out_count(count, fraction)
    return sorted(seeded_order(count, seed, source)[:size]) if size else []


def cross_fit_folds(count: int, folds: int, seed: int) -> list[list[int]]:
    """``folds`` disjoint sorted index sets covering ``range(count)``: the seeded permutation dealt
    out round-robin."""
    order = seeded_order(count, seed)
    return [sorted(order[fold::folds]) for fold in range(folds)]
