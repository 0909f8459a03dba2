"""Gaussian smoothing of anomaly maps, shared by the methods that smooth their maps."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F


CHUNK = 32
"""Maps blurred at once: the convolution's working memory is about 20 times its input, so a
whole large batch at once (2,624 maps at 224 px: 10 GB) is avoided."""


def _kernel(sigma: float, shape: tuple[int, int], dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The normalised Gaussian of ``sigma`` with radius 4 sigma, at most the map's smaller side - 1."""
    radius = max(1, int(math.ceil(4 * sigma)))
    radius = min(radius, shape[-1] - 1, shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps (radius 4 sigma, reflect padding), CHUNK maps at
    a time; sigma <= 0 returns the maps unchanged."""
    if sigma <= 0:
        return maps
    kernel = _kernel(sigma, tuple(maps.shape[-2:]), maps.dtype, maps.device)
    out = torch.empty_like(maps)
    for start in range(0, maps.shape[0], CHUNK):
        out[start : start + CHUNK] = blur_with(maps[start : start + CHUNK], kernel)
    return out


def blur_with(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(N, H, W) maps blurred with the 1-D ``kernel`` along both axes (reflect padding), all at
    once: the step :func:`gaussian_blur` takes per chunk, and one a traced graph can hold."""
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def gaussian_kernel(sigma: float, shape: tuple[int, int]) -> torch.Tensor:
    """The 1-D kernel :func:`gaussian_blur` uses for maps of ``shape`` (H, W) at ``sigma`` > 0."""
    return _kernel(sigma, shape)


def upsample(patch_scores: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(N, h*w) patch scores on ``grid`` -> (N, H, W) maps of ``size`` (bilinear, align_corners)."""
    maps = patch_scores.reshape(-1, 1, *grid)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True).squeeze(1)


@lru_cache(maxsize=16)
def edge_gain(grid: tuple[int, int], size: tuple[int, int], sigma: float) -> torch.Tensor:
    """(H, W) standard deviation of :func:`upsample` then :func:`gaussian_blur` applied to
    independent unit-variance patch scores, divided by its median over the map.

    Near the edge the blur averages fewer distinct values (the reflect padding repeats them), so
    a noise field keeps more of its amplitude there (about 1.07 x on an edge, 1.18 x in a
    corner of a 28 x 28 grid at 224 px, sigma 4) and the maximum of a normal map drifts to the
    border. Exact: both steps are linear and separable, so the variance is the outer product of
    the two axes' row sums of squared weights."""
    kernel = _kernel(sigma, size) if sigma > 0 else None

    def axis(cells: int, length: int) -> torch.Tensor:
        basis = torch.eye(cells).view(cells, 1, cells)
        weights = F.interpolate(basis, size=length, mode="linear", align_corners=True).view(cells, 1, 1, length)
        if kernel is not None:
            radius = kernel.numel() // 2
            weights = F.conv2d(F.pad(weights, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        return weights.view(cells, length).pow(2).sum(dim=0)

    deviation = torch.outer(axis(grid[0], size[0]), axis(grid[1], size[1])).sqrt()
    return deviation / deviation.median()


def equalise_edges(maps: torch.Tensor, grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """(N, H, W) smoothed maps -> the same with each pixel's deviation from its map's median
    divided by :func:`edge_gain`, so that under independent patch noise every pixel varies alike
    and a normal map peaks on the border no more often than the border's share of the area."""
    gain = edge_gain(tuple(grid), tuple(maps.shape[-2:]), float(sigma)).to(maps.device, maps.dtype)
    median = maps.flatten(1).median(dim=1).values.view(-1, 1, 1)
    return median + (maps - median) / gain
