"""LNAMD feature sets of a large batch, computed chunk by chunk into preallocated arrays.

:meth:`MuSc.feature_sets` extracts the whole batch, then aggregates it: the raw layers, their
normalised copy and one aggregated copy per degree live in memory together. Here each chunk of
``batch_size`` images goes through the backbone and LNAMD (which works image by image) at once
and is written into one (N, L, C) float32 array per (layer, degree) set, so the peak is the
final feature sets plus one chunk. When the sets would take more than half of the available
memory they are memory-mapped to a temporary file (unlinked at once, so nothing is left behind,
even after a crash) and the operating system pages them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from defectscope.errors import ConfigError
from defectscope.memory import available_memory
from defectscope.progress import Progress

MEMORY_SHARE = 0.5
"""Feature sets larger than this share of the available memory go to disk."""


@dataclass
class FeatureSets:
    """Per-(layer, degree) feature sets of N images.

    Attributes:
        sets: one (N, L_s, C_s) float32 tensor per (layer, degree), L2-normalised patches.
        grid: the finest layer grid (h, w).
        embeddings: (N, D) image embeddings (RsCIN).
        on_disk: True when the sets are memory-mapped.
    """

    sets: list[torch.Tensor]
    grid: tuple[int, int]
    embeddings: torch.Tensor
    on_disk: bool = False


def _mapped_array(shape: tuple[int, ...], folder: str | Path | None) -> np.ndarray:
    """A writable float32 array backed by an already unlinked temporary file in ``folder``."""
    directory = None if folder is None else str(folder)
    if directory is not None and not Path(directory).is_dir():
        raise ConfigError(f"feature store folder '{directory}' does not exist")
    handle = tempfile.NamedTemporaryFile(prefix="defectscope-features-", suffix=".f32", dir=directory, delete=False)
    try:
        handle.truncate(int(np.prod(shape)) * 4)
        array = np.memmap(handle, dtype=np.float32, mode="r+", shape=shape)
    finally:
        handle.close()
        os.unlink(handle.name)
    return array


def chunked_feature_sets(
    backbone,
    images: Sequence[np.ndarray],
    degrees: Sequence[int],
    batch_size: int = 8,
    progress: Progress | None = None,
    *,
    native_grids: bool = True,
    store: str | Path | None = "auto",
    shape: tuple[int, int] | None = None,
) -> FeatureSets:
    """Backbone features and LNAMD sets of ``images``, ``batch_size`` images at a time.

    ``store``: ``"auto"`` keeps the sets in memory unless they would exceed half of the
    available memory, ``None`` always in memory, a folder memory-maps them to a file there.
    ``shape``: the input (height, width), None for the backbone's square input (the batch's
    :meth:`MuSc.input_shape` keeps its aspect, as the exact path does). Values equal
    :meth:`MuSc.feature_sets` at the same shape (LNAMD is computed per image).
    """
    from defectscope.methods.mutual import lnamd

    n = len(images)
    arrays: list[np.ndarray] = []
    embeddings: list[torch.Tensor] = []
    grid: tuple[int, int] = (0, 0)
    on_disk = False
    for start in range(0, n, batch_size):
        chunk = images[start : start + batch_size]
        batch = backbone.preprocess(chunk) if shape is None else backbone.preprocess(chunk, shape)
        features = backbone.extract(batch, common_grid=not native_grids)
        chunk_sets = [s.cpu() for layer in features.layers for s in lnamd(layer.float(), degrees)]
        if not arrays:
            grid = features.grid
            shapes = [(n, *s.shape[1:]) for s in chunk_sets]
            needed = sum(int(np.prod(shape)) * 4 for shape in shapes)
            available = available_memory()
            on_disk = store not in (None, "auto") or (store == "auto" and available is not None and needed > MEMORY_SHARE * available)
            folder = None if store == "auto" else store
            arrays = [_mapped_array(shape, folder) if on_disk else np.empty(shape, dtype=np.float32) for shape in shapes]
        for array, chunk in zip(arrays, chunk_sets):
            array[start : start + chunk.shape[0]] = chunk.numpy()
        embeddings.append(features.embedding.float())
        if progress is not None:
            progress("features", min(start + batch_size, n), n)
    return FeatureSets([torch.from_numpy(a) for a in arrays], grid, torch.cat(embeddings), on_disk)
