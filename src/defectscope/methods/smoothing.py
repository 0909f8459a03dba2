"""Gaussian smoothing of anomaly maps, shared by the methods that smooth their maps."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


CHUNK = 32
"""Maps blurred at once: the convolution's working memory is about 20 times its input, so a
whole large batch at once (2,624 maps at 224 px: 10 GB) is avoided."""


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps (radius 4 sigma, reflect padding), CHUNK maps at
    a time; sigma <= 0 returns the maps unchanged."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(4 * sigma)))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = torch.empty_like(maps)
    for start in range(0, maps.shape[0], CHUNK):
        x = maps[start : start + CHUNK].unsqueeze(1)
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
        out[start : start + CHUNK] = x.squeeze(1)
    return out
