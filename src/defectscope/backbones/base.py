"""The backbone interface: images in, multi-layer patch feature maps out.

Every backbone takes RGB uint8 images (H, W, 3) of any size, resizes them to a square
``image_size`` input or to a given (height, width) of multiples of ``size_unit``, normalises them
with its own mean/std, and returns a :class:`Features`.
Backbones are frozen (eval mode, no gradients) and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch


@dataclass
class Features:
    """Features of a batch of N images.

    Attributes:
        layers: one tensor (N, C_l, h, w) per chosen layer. By default all layers share the
            same grid (h, w): CNN stages at coarser strides are resized (bilinear) to the grid
            of the finest chosen stage; ViT layers share the token grid. With
            ``extract(..., common_grid=False)`` each CNN stage keeps its native grid.
        embedding: (N, D) one global, L2-normalised embedding per image (class token or pooled
            last-layer feature), used e.g. by RsCIN.
        layer_names: a name per entry of ``layers`` (e.g. "stage3", "block12").
    """

    layers: list[torch.Tensor]
    embedding: torch.Tensor
    layer_names: list[str]

    @property
    def grid(self) -> tuple[int, int]:
        """The finest grid among the layers."""
        return max((tuple(layer.shape[-2:]) for layer in self.layers), key=lambda hw: hw[0] * hw[1])  # type: ignore[return-value]


@runtime_checkable
class Backbone(Protocol):
    """A frozen multi-layer feature extractor."""

    name: str
    image_size: int
    size_unit: int
    layer_names: list[str]

    def preprocess(self, images: Sequence[np.ndarray], shape: tuple[int, int] | None = None) -> torch.Tensor:
        """RGB uint8 (H, W, 3) images -> normalised float tensor (N, 3, h, w): ``shape`` or
        (image_size, image_size)."""
        ...

    def extract(self, batch: torch.Tensor, *, common_grid: bool = True) -> Features:
        """Normalised input (N, 3, h, w) -> Features (no gradients); see ``Features.layers``."""
        ...
