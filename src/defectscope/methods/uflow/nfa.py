"""A contrario detection on U-Flow latents: pure functions, numpy in, numpy out.

Null hypothesis H0 (normal image): every latent value is an independent N(0, 1), so at a pixel
of a scale with C latent channels the statistic ``s = sum_c z_c^2`` follows chi2(C).

Region test (default, :func:`region_log_nfa_map`). Candidate regions are the connected
components (4-connectivity) of the upper level sets {s >= t} of the statistic, i.e. the nodes of
its max-tree (``skimage.morphology.max_tree``). A node R of |R| pixels whose smallest statistic is
t has, under H0 and independence, probability at most P(chi2_C >= t)^|R| of being that extreme.
Number of tests, on an h x w grid with S scales tested: every connected shape of any size that
fits, placed anywhere::

    N = S * (h * w) * sum_{n=1..h*w} A(n),   A(n) = 0.316915 * 4.062570^n / n

where A(n) is Jensen's asymptotic count of fixed polyominoes of n cells (above the exact counts
1, 2, 6, 19, 63, ... for every tabulated n). The same N is used for every region, as in the U-Flow
authors' code: it is dominated by the largest size, so a region is meaningful only when its
pixels are extreme enough *together* (sum of log-tails below about -1.4 * h * w). This is
deliberately conservative: measured on real flow latents, which are spatially correlated and
heavier-tailed than chi2 at some positions, a count per region size marked large false regions
on normal images. With ``max_region_fraction`` f < 1 only regions of at most f * h * w cells are
candidates and the sum runs to that size (U-Flow uses f = 0.5: a defect covers at most half of
the image), which roughly multiplies log N by f. log NFA(R) = log N + |R| log P(chi2_C >= t); R is meaningful when
log NFA(R) <= log(epsilon), so on independent noise the expected number of false regions is at
most epsilon. Among nested meaningful regions only the maximal meaningful ones are kept (the
smallest NFA along each branch of the tree).

Block test (:func:`block_log_nfa_map`). In a k x k window around each pixel count the values
z^2 above the chi2(1) upper-``alpha`` quantile (each with probability alpha under H0) among the
n = C * k^2 values; NFA = (number of pixels) * S * P(Binomial(n, alpha) >= count).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.special import logsumexp
from skimage.morphology import max_tree

from defectscope.errors import ConfigError

POLYOMINO_ALPHA = 0.316915
POLYOMINO_GROWTH = 4.062570


def log_polyomino_count(size: np.ndarray | float) -> np.ndarray:
    """Natural log of an upper estimate of the number of fixed polyominoes of ``size`` cells."""
    size = np.asarray(size, dtype=np.float64)
    return math.log(POLYOMINO_ALPHA) + size * math.log(POLYOMINO_GROWTH) - np.log(size)


def log_number_of_tests(grid_pixels: int, n_scales: int = 1, max_size: int | None = None) -> float:
    """log N = log(S * (h*w) * sum_{n <= n_max} A(n)) for an h x w grid (h*w = ``grid_pixels``),
    n_max = ``max_size`` (default h*w: regions of any size)."""
    largest = int(grid_pixels) if max_size is None else max(1, min(int(max_size), int(grid_pixels)))
    sizes = np.arange(1, largest + 1)
    return math.log(n_scales) + math.log(grid_pixels) + float(logsumexp(log_polyomino_count(sizes)))


def chi2_statistic(latent: np.ndarray) -> np.ndarray:
    """(C, h, w) latent -> (h, w) statistic sum_c z_c^2 (chi2(C) under H0)."""
    latent = np.asarray(latent, dtype=np.float64)
    return np.sum(latent * latent, axis=0)


MIN_REGION_SIDE = 3
"""skimage's max_tree fails on 2x2 maps; such grids are too coarse for region tests anyway."""


def region_log_nfa_map(latent: np.ndarray, n_scales: int = 1, max_region_fraction: float = 1.0) -> np.ndarray:
    """(C, h, w) latent -> (h, w) log NFA of the maximal meaningful region holding each pixel.

    A max-tree node is kept when its log NFA is <= that of every node inside it and < that of
    every node containing it (the most significant region along its branch, so a strong small
    defect is not swallowed by a larger, weaker region around it, nor the reverse). Pixels in no
    kept node get +inf. A pixel is detected at level epsilon when its value is <= log(epsilon).

    ``max_region_fraction`` < 1 restricts the candidate regions to at most that share of the grid
    (larger max-tree nodes are not tested), and the number of tests counts only shapes up to that
    size: a smaller, still exact, family of tests, so smaller regions need less evidence.
    """
    latent = np.asarray(latent, dtype=np.float64)
    return region_log_nfa_from_statistic(chi2_statistic(latent), latent.shape[0], n_scales, max_region_fraction)


def region_log_nfa_from_statistic(statistic: np.ndarray, channels: int, n_scales: int = 1,
                                  max_region_fraction: float = 1.0) -> np.ndarray:
    """:func:`region_log_nfa_map` from the (h, w) statistic sum_c z_c^2 of ``channels`` channels."""
    if not 0.0 < max_region_fraction <= 1.0:
        raise ValueError(f"max_region_fraction must be in (0, 1], got {max_region_fraction}")
    statistic = np.asarray(statistic, dtype=np.float64)
    height, width = statistic.shape
    if min(height, width) < MIN_REGION_SIDE:
        raise ConfigError(
            f"the region NFA needs latent maps of at least {MIN_REGION_SIDE}x{MIN_REGION_SIDE} cells, "
            f"got {height}x{width}: use a larger image size"
        )
    parent, order = max_tree(statistic, connectivity=1)
    parent = parent.ravel()
    values = statistic.ravel()
    root = order[0]
    canonical = values[parent] != values
    canonical[root] = True
    area = np.ones(values.size, dtype=np.int64)
    for pixel in order[:0:-1]:
        area[parent[pixel]] += area[pixel]
    max_size = max(1, int(max_region_fraction * height * width))
    log_tests = log_number_of_tests(height * width, n_scales, max_size)
    own = np.where(canonical & (area <= max_size), log_tests + area * stats.chi2.logsf(values, channels), np.inf)
    inside = own.copy()
    for pixel in order[:0:-1]:
        up = parent[pixel]
        if inside[pixel] < inside[up]:
            inside[up] = inside[pixel]
    above = np.full(values.size, np.inf)
    for pixel in order[1:]:
        up = parent[pixel]
        above[pixel] = min(above[up], own[up])
    kept = canonical & (own <= inside) & (own < above)
    result = np.empty(values.size, dtype=np.float64)
    result[root] = own[root] if kept[root] else np.inf
    for pixel in order[1:]:
        result[pixel] = own[pixel] if kept[pixel] else result[parent[pixel]]
    return result.reshape(height, width)


def block_log_nfa_map(latent: np.ndarray, window: int = 3, alpha: float = 0.05,
                      n_scales: int = 1) -> np.ndarray:
    """(C, h, w) latent -> (h, w) log NFA of the k x k block centred at each pixel."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    latent = np.asarray(latent, dtype=np.float64)
    channels, height, width = latent.shape
    quantile = stats.chi2.isf(alpha, 1)
    exceed = torch.from_numpy((latent * latent > quantile).sum(axis=0).astype(np.float64))
    ones = torch.ones(1, 1, window, window, dtype=torch.float64)
    padded = F.pad(exceed[None, None], [window // 2] * 4)
    counts = F.conv2d(padded, ones)[0, 0].round().numpy()
    valid = F.conv2d(F.pad(torch.ones(1, 1, height, width, dtype=torch.float64), [window // 2] * 4), ones)
    trials = (valid[0, 0].round().numpy() * channels).astype(np.int64)
    log_tail = stats.binom.logsf(counts - 1, trials, alpha)
    return math.log(height * width * n_scales) + log_tail


def detect(latents: Sequence[np.ndarray], size: int, *, epsilon: float = 1.0, method: str = "region",
           window: int = 3, alpha: float = 0.05, max_region_fraction: float = 1.0) -> np.ndarray:
    """Latents of one image (one (C, h, w) array per scale) -> (size, size) bool mask.

    Each scale's detections (log NFA <= log epsilon, with the number of tests multiplied by the
    number of scales) are upsampled bilinearly as a 0/1 map and kept where >= 0.5; the mask is
    their union over scales.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if method not in ("region", "block"):
        raise ValueError(f"unknown NFA method {method!r}; choose 'region' or 'block'")
    n_scales = len(latents)
    mask = np.zeros((size, size), dtype=bool)
    for latent in latents:
        if method == "region":
            log_nfa = region_log_nfa_map(latent, n_scales, max_region_fraction)
        else:
            log_nfa = block_log_nfa_map(latent, window, alpha, n_scales)
        mask |= upsample_detection(log_nfa <= math.log(epsilon), size)
    return mask


def upsample_detection(detected: np.ndarray, size: int) -> np.ndarray:
    """(h, w) bool detections of one latent grid -> (size, size) bool: bilinear 0/1 map >= 0.5."""
    values = torch.from_numpy(np.asarray(detected, dtype=np.float32))
    upsampled = F.interpolate(values[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return upsampled.numpy() >= 0.5


def count_regions(log_nfa: np.ndarray, epsilon: float = 1.0) -> int:
    """Number of connected (4-connectivity) detected regions in a log NFA map."""
    from scipy import ndimage

    _, count = ndimage.label(log_nfa <= math.log(epsilon))
    return int(count)
