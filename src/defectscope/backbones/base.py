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
    """A frozen multi-layer feature extractor: everything a method may use.

    Attributes:
        name: the registry name.
        image_size: the default square input side (``preprocess`` without a shape).
        size_unit: the input-size step: input sides must be multiples of it (the coarsest chosen
            stride of a CNN, the patch size of a ViT).
        layer_names: one name per chosen layer, in network order (finest first for a CNN).
        layer_channels: channels of each chosen layer.
        layer_strides: input pixels per cell of each layer's native grid (a ViT's blocks all
            have the patch size).
        device: where the network runs and the features come back.
    """

    name: str
    image_size: int
    size_unit: int
    layer_names: list[str]
    layer_channels: list[int]
    layer_strides: list[int]
    device: torch.device

    @property
    def grid(self) -> tuple[int, int]:
        """The common feature grid (h, w), that of the finest layer, for the square input."""
        ...

    def preprocess(self, images: Sequence[np.ndarray], shape: tuple[int, int] | None = None) -> torch.Tensor:
        """RGB uint8 (H, W, 3) images -> normalised float tensor (N, 3, h, w): ``shape`` or
        (image_size, image_size)."""
        ...

    def extract(self, batch: torch.Tensor, *, common_grid: bool = True) -> Features:
        """Normalised input (N, 3, h, w) -> Features (no gradients); see ``Features.layers``."""
        ...

    def stages(self) -> torch.nn.Module:
        """The network as a plain module: normalised input (N, 3, h, w) -> a tuple of one
        (N, C_l, h_l, w_l) map per chosen layer on its native grid, the numbers of
        ``extract(batch, common_grid=False).layers``. It holds no Python state that depends on
        the input besides its shape, so ``torch.onnx.export`` can trace it (gradients are
        not turned off inside)."""
        ...

