"""PRN's multi-scale features: the backbone's layers on their native grids, each scale half the
previous one (strides 4/8/16 of the default EfficientNet-Lite0)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from defectscope.backbones.base import Backbone


def pyramid(maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Native layer maps -> PRN's scales, finest first. Layers that share one grid (a ViT's
    blocks) are average-pooled by 2**s at scale s, so that each scale halves the previous one;
    layers on different grids (a CNN's stages) are kept as they are."""
    if len({tuple(m.shape[-2:]) for m in maps}) > 1:
        return list(maps)
    return [F.avg_pool2d(m, 2**scale) if scale else m for scale, m in enumerate(maps)]


def multiscale_features(backbone: Backbone, batch: torch.Tensor) -> list[torch.Tensor]:
    """PRN's scales (see :func:`pyramid`) for a normalised batch: the backbone's ``stages()``
    module (the one ONNX export traces) run without gradients. Its maps keep the memory layout
    the network gives them (channels-last for EfficientNet-Lite); ``extract`` would return the
    same values in the standard layout, on which the head's convolutions round differently
    (about 1e-7)."""
    with torch.no_grad():
        return pyramid(list(backbone.stages()(batch.to(backbone.device, torch.float32))))
