"""Running a backbone over a batch of images in chunks."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from defectscope.backbones.base import Backbone, Features


def extract_in_batches(
    backbone: Backbone,
    images: Sequence[np.ndarray],
    batch_size: int = 8,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    common_grid: bool = True,
    shape: tuple[int, int] | None = None,
) -> Features:
    """Extract features of all images, ``batch_size`` at a time, and concatenate them
    (``shape``: the input (height, width), None for the backbone's square input)."""
    layers: list[list[torch.Tensor]] = []
    embeddings: list[torch.Tensor] = []
    names: list[str] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = backbone.preprocess(chunk) if shape is None else backbone.preprocess(chunk, shape)
        features = backbone.extract(batch, common_grid=common_grid)
        if not layers:
            layers = [[] for _ in features.layers]
            names = list(features.layer_names)
        for store, layer in zip(layers, features.layers):
            store.append(layer.float())
        embeddings.append(features.embedding.float())
        if progress is not None:
            progress("features", min(start + batch_size, len(images)), len(images))
    return Features([torch.cat(store) for store in layers], torch.cat(embeddings), names)
