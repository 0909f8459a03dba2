"""Mutual scoring as pure tensor functions: the batch scores itself.

A normal patch finds close patches in many other images of the batch, a defective patch in few.
The steps, each usable on its own:

- :func:`lnamd` — local neighbourhood aggregation with multiple degrees (per layer, per r);
- :func:`mutual_scores` — the mutual scoring mechanism (MSM) on one (N, L, C) feature set, from
  :func:`nearest_similarities` (the N x N x L table) and :func:`interval_mean` (the rank interval);
- :func:`rscin` — re-scoring image scores over a constrained image-level neighbourhood;
- :func:`to_finest_grid` — a coarser layer's patch scores on the finest grid;
- :func:`calibrate_border` — the border rule: each image's outer rings of patch scores brought to
  the level of its interior.

Scoring against a separate reference set is :func:`defectscope.methods.bank.reference_scores`;
the detector that chains these steps on a backbone is :class:`defectscope.methods.musc.MuSc`.
This module imports nothing above it, so banks, feature stores, Dask, the rolling bank and the
detectors all build on it without an import circle.

Exactness and speed of MSM: for unit vectors ``||a - b|| = sqrt(2 - 2 a.b)``, so the nearest
patch of image j for every patch of image i is a row maximum of the similarity block
``Z_i Z_j^T``; the same block's column maxima serve the opposite direction (j to i). Each
unordered image pair therefore costs one L x L matrix product and two reductions, instead of two
L x L distance matrices. Peak working memory of the pairwise part is one L x L block per
pair being reduced (4 L^2 bytes), independent of N; the per-image nearest-distance table that
MSM (and CoDeGraph) needs holds N x N x L float32 values.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from defectscope.errors import ConfigError

__all__ = [
    "MuScScores",
    "border_classes",
    "calibrate_border",
    "interval_bounds",
    "interval_mean",
    "lnamd",
    "mutual_scores",
    "nearest_similarities",
    "rscin",
    "side_classes",
    "similarities_to_distances",
    "to_finest_grid",
]


def _check_interval(lower: float, upper: float) -> None:
    if not (0.0 <= lower < upper <= 1.0):
        raise ConfigError(
            f"scoring interval [{lower}, {upper}) is invalid: need 0 <= lower < upper <= 1"
        )


def interval_bounds(num_references: int, lower: float, upper: float) -> tuple[int, int]:
    """Rank range [start, end) of the sorted per-image distances that MSM averages.

    ``start = floor(lower * M)``, ``end = floor(upper * M)`` for M = N - 1 reference images,
    widened so that at least one value is used (small batches) and clipped to M.
    """
    _check_interval(lower, upper)
    if num_references < 1:
        raise ConfigError("mutual scoring needs at least 2 images (1 reference per image)")
    start = min(int(math.floor(lower * num_references)), num_references - 1)
    end = min(int(math.floor(upper * num_references)), num_references)
    return start, max(end, start + 1)


def lnamd(
    feature_map: torch.Tensor, degrees: Sequence[int] = (1, 3, 5)
) -> list[torch.Tensor]:
    """Local neighbourhood aggregation with multiple degrees.

    ``feature_map`` is (N, C, h, w). Each image's map is standardised over (C, h, w) (a
    LayerNorm without affine parameters); for each degree r it is averaged over r x r
    neighbourhoods (stride 1, same grid; at borders only the cells inside the grid count), then
    every patch vector is L2-normalised. (Zero padding would give the same result: it only
    rescales border sums, which the L2 normalisation removes.) Returns one (N, h*w, C)
    tensor per degree.
    """
    if feature_map.ndim != 4:
        raise ConfigError(f"lnamd expects an (N, C, h, w) tensor, got shape {tuple(feature_map.shape)}")
    x = F.layer_norm(feature_map.float(), feature_map.shape[1:])
    out = []
    for r in degrees:
        if r < 1 or r % 2 == 0:
            raise ConfigError(f"aggregation degree {r} is invalid: degrees must be odd and >= 1")
        y = x if r == 1 else F.avg_pool2d(x, r, stride=1, padding=r // 2, count_include_pad=False)
        y = y.flatten(2).transpose(1, 2)
        out.append(F.normalize(y, dim=-1).contiguous())
    return out


def nearest_similarities(
    features: torch.Tensor,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """For each ordered pair (i, j), i != j, and patch p of image i: max_q <z_i(p), z_j(q)>.

    ``features``: (N, L, C) L2-normalised. Returns (N, N, L) with the diagonal set to -inf.
    One L x L product per unordered pair; its row maxima give i -> j and its column maxima
    give j -> i. The rows of pairs are spread over ``workers`` threads (default: torch's thread
    count), each running single-threaded torch ops: many small ops parallelise better this way
    than through torch's intra-op pool, and stay fast when other programs load the machine.
    ``progress(pairs_done)`` is called as rows finish.
    """
    n, length, _ = features.shape
    table = torch.empty(n, n, length, dtype=torch.float32, device=features.device)
    table[torch.arange(n), torch.arange(n)] = -math.inf
    z = features.float().contiguous()

    def row(i: int) -> int:
        zi = z[i]
        for j in range(i + 1, n):
            block = zi @ z[j].T
            table[i, j] = block.amax(dim=1)
            table[j, i] = block.amax(dim=0)
        return n - 1 - i

    workers = workers or torch.get_num_threads()
    if workers <= 1 or z.device.type != "cpu":
        done = 0
        for i in range(n - 1):
            done += row(i)
            if progress is not None:
                progress(done)
        return table
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            done = 0
            for finished in pool.map(row, range(n - 1)):
                done += finished
                if progress is not None:
                    progress(done)
    finally:
        torch.set_num_threads(previous)
    return table


def similarities_to_distances(similarities: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of unit vectors from their cosine: sqrt(max(2 - 2 s, 0)); -inf -> inf."""
    return torch.sqrt(torch.clamp(2.0 - 2.0 * similarities, min=0.0))


def _interval_reduce(distances: torch.Tensor, references: int, lower: float, upper: float) -> torch.Tensor:
    """(N, R, L) distances -> (N, L): the mean of each patch's sorted distances whose rank lies in
    the MSM interval for ``references`` images (excluded images carry inf and sort last)."""
    start, end = interval_bounds(references, lower, upper)
    smallest = torch.topk(distances, end, dim=1, largest=False, sorted=True).values
    return smallest[:, start:end].mean(dim=1)


def interval_mean(distances: torch.Tensor, lower: float = 0.0, upper: float = 0.3) -> torch.Tensor:
    """MSM reduction: (N, N, L) per-image nearest distances (diagonal inf) -> (N, L) scores.

    For each patch the N - 1 distances to the other images are sorted ascending and the values
    whose rank lies in [floor(lower (N-1)), floor(upper (N-1))) are averaged (at least one).
    """
    return _interval_reduce(distances, distances.shape[0] - 1, lower, upper)


def _drop_one_interval_mean(distances: torch.Tensor, lower: float, upper: float, m: int) -> torch.Tensor:
    """(N, R, L) smallest distances to M references (R >= the interval's end + 1) -> (N, L): the
    MSM interval mean over M - 1 references, averaged over the M ways of leaving one reference out
    (closed form on the sorted values)."""
    start, end = interval_bounds(m - 1, lower, upper)
    d = torch.topk(distances, end + 1, dim=1, largest=False, sorted=True).values
    kept = d[:, start:end].sum(dim=1)
    shifted = d[:, start + 1:end + 1].sum(dim=1)
    wide = d[:, start:end + 1].sum(dim=1)
    return ((m - end) * kept + start * shifted + (end - start) * wide - kept) / (m * (end - start))


def mutual_scores(
    features: torch.Tensor,
    lower: float = 0.0,
    upper: float = 0.3,
    *,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Mutual scoring of a batch: (N, L, C) L2-normalised patch features -> (N, L) patch scores.

    Patch p of image i gets, for every other image j, the distance to its nearest patch of j;
    these N - 1 values are sorted and the mean of those whose rank lies in the interval
    [floor(lower (N-1)), floor(upper (N-1))) is the score (at least one value is used).
    """
    if features.ndim != 3:
        raise ConfigError(f"mutual_scores expects an (N, L, C) tensor, got shape {tuple(features.shape)}")
    if features.shape[0] < 2:
        raise ConfigError(f"mutual scoring needs at least 2 images, got {features.shape[0]}")
    _check_interval(lower, upper)
    distances = similarities_to_distances(nearest_similarities(features, progress=progress))
    return interval_mean(distances, lower, upper)


def rscin(scores: torch.Tensor | np.ndarray, embeddings: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 2, 3)) -> np.ndarray:
    """Re-scoring with a constrained image-level neighbourhood.

    ``scores`` (N,) are min-max normalised to s; W = E E^T from the (N, D) L2-normalised
    embeddings. For each k, every row of W keeps its k largest entries (the image itself
    included), the rest are zeroed, rows are normalised to sum 1 and P_k s is computed; the
    result is the mean over k of P_k s. k = 1 is the identity; k is capped at N.
    """
    s = _float64(scores)
    e = F.normalize(_float64(embeddings, s.device), dim=1)
    n = s.shape[0]
    if e.shape[0] != n:
        raise ConfigError(f"rscin got {n} scores but {e.shape[0]} embeddings")
    if not ks:
        raise ConfigError("rscin needs at least one k")
    span = s.max() - s.min() if n else torch.tensor(0.0)
    s = (s - s.min()) / span if n and span > 0 else torch.zeros_like(s)
    similarity = e @ e.T
    similarity.fill_diagonal_(math.inf)
    result = torch.zeros_like(s)
    for k in ks:
        if k < 1:
            raise ConfigError(f"rscin k must be >= 1, got {k}")
        k = min(k, n)
        top = torch.topk(similarity, k, dim=1)
        weights = top.values.clone()
        weights[:, 0] = 1.0
        weights = torch.clamp(weights, min=0.0)
        weights = weights / weights.sum(dim=1, keepdim=True)
        result += (weights * s[top.indices]).sum(dim=1)
    return (result / len(ks)).cpu().numpy()


def _float64(values: torch.Tensor | np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """``values`` as float64 on their own device (tensors) or on ``device`` (arrays, default CPU)."""
    if isinstance(values, torch.Tensor):
        return values.to(torch.float64) if device is None else values.to(device, torch.float64)
    return torch.as_tensor(np.asarray(values, dtype=np.float64), device=device)


def to_finest_grid(patch_scores: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, h*w) scores of a coarser layer grid -> (N, H*W) on ``grid`` (bilinear,
    align_corners=True); unchanged when already there. The layer grid is taken to have the
    aspect ratio of ``grid`` (as for layers of one input)."""
    n, length = patch_scores.shape
    if length == grid[0] * grid[1]:
        return patch_scores
    rows = max(1, int(round(math.sqrt(length * grid[0] / grid[1]))))
    cols = length // rows
    if rows * cols != length:
        raise ConfigError(f"cannot place {length} patch scores on a coarser grid of {grid[0]}x{grid[1]}")
    maps = patch_scores.view(n, 1, rows, cols)
    return F.interpolate(maps, size=grid, mode="bilinear", align_corners=True).view(n, -1)


def border_classes(grid: tuple[int, int], depth: int) -> torch.Tensor:
    """(h*w,) int class of every patch by its distance to the grid's edge: the pair (nearer,
    farther) of its row and column distances, each capped at ``depth``; ``depth * (depth + 1) +
    depth`` is the interior (both at least ``depth``). The classes below the interior gather the
    patches near the four corners."""
    rows, cols = torch.arange(grid[0]), torch.arange(grid[1])
    row_depth = torch.minimum(rows, grid[0] - 1 - rows).clamp(max=depth)[:, None]
    col_depth = torch.minimum(cols, grid[1] - 1 - cols).clamp(max=depth)[None, :]
    near, far = torch.minimum(row_depth, col_depth), torch.maximum(row_depth, col_depth)
    return (near * (depth + 1) + far).flatten()


def side_classes(grid: tuple[int, int], depth: int) -> torch.Tensor:
    """(h*w,) int class of every patch: ``4 * ring + side`` for the outer ``depth`` rings (ring 0
    outermost; side 0 top, 1 bottom, 2 left, 3 right, the nearest edge, rows first on a tie) and
    ``4 * depth`` for the interior."""
    rows = torch.arange(grid[0])[:, None].expand(*grid)
    cols = torch.arange(grid[1])[None, :].expand(*grid)
    distances = torch.stack([rows, grid[0] - 1 - rows, cols, grid[1] - 1 - cols])
    ring, side = distances.min(dim=0)
    return torch.where(ring < depth, 4 * ring + side, torch.full_like(ring, 4 * depth)).flatten()


def _match_interior(patch_scores: torch.Tensor, classes: torch.Tensor, interior: int) -> torch.Tensor:
    """Per image and per class above the interior: map the class's scores affinely so that their
    median is the interior's and their spread (median absolute deviation) at most the interior's."""
    inside = classes == interior
    inner = patch_scores[:, inside]
    inner_median = inner.median(dim=1, keepdim=True).values
    inner_spread = (inner - inner_median).abs().median(dim=1, keepdim=True).values
    out = patch_scores.clone()
    for label in classes.unique().tolist():
        if label == interior:
            continue
        chosen = classes == label
        values = patch_scores[:, chosen]
        median = values.median(dim=1, keepdim=True).values
        spread = (values - median).abs().median(dim=1, keepdim=True).values
        factor = torch.where(spread > 0, inner_spread / spread.clamp_min(1e-12), torch.ones_like(spread)).clamp(max=1.0)
        mapped = inner_median + (values - median) * factor
        out[:, chosen] = torch.where(median > inner_median, mapped, values)
    return out


def calibrate_border(patch_scores: torch.Tensor, grid: tuple[int, int], depth: int = 2) -> torch.Tensor:
    """Bring each image's border patches to the level of its own interior.

    Patches near the edge have fewer look-alikes in the other images (their context includes
    the padding), so their mutual scores run high and the maximum of a normal image tends to sit
    on its border. Two passes, each per image: first the outermost ring of each side on its own
    (:func:`side_classes` with depth 1: a side's context can differ from the others', e.g. a scan
    edge or a lighting gradient; two rings per side flattened more of the defects that run along
    an edge), then the ``depth`` rings by distance to the edge, the patches near the corners apart
    (:func:`border_classes`, pooled over the four sides). In each pass, a class whose median
    exceeds the interior's is mapped affinely so that its median equals the interior median and
    its spread (median absolute deviation) shrinks to at most the interior's. A defect on the
    border stays far above its class and so above the interior. Classes that score lower than the
    interior (e.g. plain background round an object) are left alone. ``depth`` 0, or a grid whose
    interior is less than half of its patches (too small to be the reference), returns the
    scores unchanged. Chosen on the shared categories (docs/BENCHMARKS.md).
    """
    if depth < 1 or 2 * (grid[0] - 2 * depth) * (grid[1] - 2 * depth) < grid[0] * grid[1]:
        return patch_scores
    by_side = _match_interior(patch_scores, side_classes(grid, 1), 4)
    return _match_interior(by_side, border_classes(grid, depth), depth * (depth + 1) + depth)


@dataclass
class MuScScores:
    """Intermediate MuSc output, kept for methods that build on it (CoDeGraph). ``facts``: what
    the batch itself decided while it was scored (the MSM interval of the several-looks gate, the
    nearest references, the own-image ratio...), carried with the scores to the Result's
    ``batch_facts``; empty when nothing was decided."""

    patch_scores: torch.Tensor
    grid: tuple[int, int]
    embeddings: torch.Tensor
    feature_sets: list[torch.Tensor] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
