"""Tiles for long images (PRN's ``tile_aspect`` setting): aspect kept instead of squashed.

PRN's network sees a square S x S input. A long image (say 600 x 250) squashed to S x S loses
more than half its resolution along its long side, and a thin defect across that side can fall
below one feature cell. With ``tile_aspect`` r > 0 an image whose long side is at least r times
its short side is cut along the long side into ``n = floor(long / short + 0.5)`` equal tiles
(nearly square), each fed at S x S; their maps are put back side by side into one S x n*S (or
n*S x S) map per image (:func:`stitch_each`), so a tile's pixels keep their resolution in the
map. Image scores (top-k pixels), the verdict statistic and its calibration are taken on these
per-image maps, so they do not depend on which other images share a batch. The maps a batch
returns (:func:`batch`) keep that shape when all its images have one map shape (long images of
one size: the usual case); a batch mixing shapes gets every map resized to S x S, as all tiled
maps were before 2026-12-04. Training cuts normal images and real defects the same way (the
tiles of a defect that hold none of its pixels are dropped), so the network sees tiles at the
scale it will be shown them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def tile_count(shape: tuple[int, ...], tile_aspect: float) -> int:
    """Tiles for an image of ``shape`` (H, W[, C]): 1 unless its long / short side ratio is at
    least ``tile_aspect`` (> 0), else ``floor(ratio + 0.5)``."""
    height, width = int(shape[0]), int(shape[1])
    ratio = max(height, width) / max(1, min(height, width))
    if tile_aspect <= 0 or ratio < tile_aspect:
        return 1
    return max(1, int(ratio + 0.5))


def split(array: np.ndarray, count: int) -> list[np.ndarray]:
    """``array`` (H, W[, C]) cut into ``count`` equal tiles along its longer side (the last one
    takes the rounding remainder)."""
    if count <= 1:
        return [array]
    axis = 0 if array.shape[0] >= array.shape[1] else 1
    edges = np.linspace(0, array.shape[axis], count + 1).round().astype(int)
    return [np.take(array, np.arange(edges[i], edges[i + 1]), axis=axis) for i in range(count)]


def split_images(images: Sequence[np.ndarray], tile_aspect: float) -> tuple[list[np.ndarray], list[int]]:
    """All tiles of ``images`` in order, and how many each image gave."""
    tiles, counts = [], []
    for image in images:
        count = tile_count(np.asarray(image).shape, tile_aspect)
        tiles.extend(split(np.asarray(image), count))
        counts.append(count)
    return tiles, counts


def split_anomalies(
    anomalies: Sequence[tuple[np.ndarray, np.ndarray]], tile_aspect: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real (image, mask) defects cut like images; a tile whose mask is empty is dropped. The
    mask is brought to the image's size first (nearest neighbour)."""
    from defectscope.methods.prn.generate import _resize

    kept = []
    for image, mask in anomalies:
        image = np.asarray(image)
        mask = _resize(np.asarray(mask).astype(bool), image.shape[:2])
        count = tile_count(image.shape, tile_aspect)
        for image_tile, mask_tile in zip(split(image, count), split(mask, count)):
            if mask_tile.any():
                kept.append((image_tile, mask_tile))
    return kept


def stitch_each(tile_maps: torch.Tensor, counts: Sequence[int], shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Per-tile maps (T, S, S) -> one map per image, its tiles laid side by side along its long
    side: (S, n*S) for a wide image of n tiles, (n*S, S) for a tall one, S x S for one tile."""
    out, start = [], 0
    for count, shape in zip(counts, shapes):
        maps = tile_maps[start : start + count]
        start += count
        vertical = shape[0] >= shape[1]
        out.append(maps[0] if count == 1 else torch.cat(list(maps), dim=0 if vertical else 1))
    return out


def batch(maps: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Per-image maps -> (N, H, W): stacked as they are when they all have one shape, else each
    resized to ``size`` x ``size`` (bilinear; S x S maps are left as they are)."""
    if len({tuple(m.shape) for m in maps}) == 1:
        return torch.stack(list(maps))
    return torch.stack([
        m if tuple(m.shape) == (size, size) else F.interpolate(m[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        for m in maps
    ])


def stitch(tile_maps: torch.Tensor, counts: Sequence[int], shapes: Sequence[tuple[int, ...]], size: int) -> torch.Tensor:
    """:func:`stitch_each` then :func:`batch`: (N, S, n*S) when every image has n tiles the same
    way round, else (N, size, size)."""
    return batch(stitch_each(tile_maps, counts, shapes), size)
