"""MuSc: zero-shot anomaly classification and segmentation by mutual scoring.

The unlabeled batch scores itself: a normal patch finds close patches in many other images of
the batch, a defective patch in few. Three pure tensor steps, each usable on its own:

- :func:`lnamd` — local neighbourhood aggregation with multiple degrees (per layer, per r);
- :func:`mutual_scores` — the mutual scoring mechanism (MSM) on one (N, L, C) feature set;
- :func:`rscin` — re-scoring image scores over a constrained image-level neighbourhood.

:class:`MuSc` chains them on top of a backbone and returns a :class:`Result`.

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
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from defectscope.backbones._common import BORDERS
from defectscope.errors import ConfigError
from defectscope.memory import estimate_bytes
from defectscope.methods.base import Detector, MethodConfig, Result, default_paths
from defectscope.methods.smoothing import equalise_edges, gaussian_blur, upsample
from defectscope.methods.verdict import (
    DEFAULT_FALSE_ALARM_RATE,
    check_false_alarm_rate,
    conformal_threshold,
    decide,
    label_free_threshold,
    pixel_masks,
    require_good_images,
)
from defectscope.progress import Progress as ProgressCallback

SMALL_BATCH_WARNING = 20


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


def check_batch_size(n: int, what: str = "mutual scoring", minimum: int = 2) -> None:
    """Refuse batches below ``minimum`` images; warn below about SMALL_BATCH_WARNING."""
    if n < minimum:
        raise ConfigError(f"{what} needs at least {minimum} images, got {n}")
    if n < SMALL_BATCH_WARNING:
        warnings.warn(
            f"{what} of only {n} images: results are more reliable with about "
            f"{SMALL_BATCH_WARNING} or more images of the same product",
            stacklevel=3,
        )


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


def reference_scores(
    query: torch.Tensor,
    reference: torch.Tensor,
    lower: float = 0.0,
    upper: float = 0.3,
    *,
    drop_one: bool = False,
) -> torch.Tensor:
    """Scoring against a reference set: (Nq, L, C) query vs (M, L, C) reference patch features
    (both L2-normalised, same grid) -> (Nq, L) scores.

    Patch p of query image i gets, for each reference image m, the distance to its nearest patch
    of m; the M values are reduced by the MSM interval rule (ranks [floor(lower M), floor(upper
    M)), at least one). With ``drop_one`` the rule is applied to M - 1 references and averaged
    over the M ways of leaving one out, so that the scores are comparable with the references'
    own leave-one-out scores (:func:`mutual_scores` of the reference set), which use M - 1
    references each; with all M the interval reaches a slightly higher rank and query scores come
    out slightly higher. The nearest similarities come from
    :func:`defectscope.methods.bank.nearest_topk` (a running top-k, one block at a time).
    """
    if query.ndim != 3 or reference.ndim != 3 or query.shape[1:] != reference.shape[1:]:
        raise ConfigError(
            f"reference scoring needs (Nq, L, C) and (M, L, C) features of the same grid, got shapes "
            f"{tuple(query.shape)} and {tuple(reference.shape)}"
        )
    _check_interval(lower, upper)
    m, length, channels = reference.shape
    if m < (2 if drop_one else 1):
        raise ConfigError(f"reference scoring needs at least {2 if drop_one else 1} reference images, got {m}")
    from defectscope.methods.bank import nearest_topk

    end = interval_bounds(m - 1 if drop_one else m, lower, upper)[1] + (1 if drop_one else 0)
    distances = similarities_to_distances(nearest_topk(query, reference, min(end, m), workers=1))
    return _drop_one_interval_mean(distances, lower, upper, m) if drop_one else _interval_reduce(distances, m, lower, upper)


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
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    e = F.normalize(torch.as_tensor(np.asarray(embeddings, dtype=np.float64)), dim=1)
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
    return (result / len(ks)).numpy()


@dataclass(frozen=True)
class MuScConfig(MethodConfig):
    """MuSc settings; the defaults are the authors' where they exist and survived the measurements
    on every shared category (docs/BENCHMARKS.md), else chosen by measurement.

    Attributes:
        backbone: registry name of the feature extractor.
        weights: local weights folder for hub backbones (None: the embedded or hub default).
        image_size: square input size (None: the backbone's documented default).
        layers: backbone layers to use (None: the backbone's default layers).
        degrees: LNAMD aggregation degrees r.
        lower, upper: MSM scoring interval [lower, upper) over the sorted per-image distances.
            Default [0.5, 1): a patch scores high when at least half of the other images hold
            nothing like it, so a defect kind present in up to half of the batch still stands
            out (the authors' [0, 0.3) lets defects that recur in more than 30 % of the batch,
            as on the paper types, vouch for each other).
        rscin_ks: RsCIN neighbourhood sizes (k = 1 is the identity).
        native_grids: score each CNN layer on its own grid and upsample its patch scores to
            the finest grid (bilinear, align_corners=True) before averaging; False resizes the
            features to the finest grid first (4x more pairwise work for a stride-16 layer).
            Chosen by measurement (docs/BENCHMARKS.md). CoDeGraph always uses the common grid.
        smoothing_sigma: Gaussian blur of the anomaly maps in input pixels (0 = none; default 4,
            chosen by the ablation in docs/BENCHMARKS.md, the authors use none).
        batch_size: images per backbone forward pass.
        border: the backbone's border rule, ``"zero"`` or ``"reflect"`` (mirror the image
            outwards by ``border_pad`` input pixels before the backbone and crop the features
            back; None pad = two cells of the coarsest layer), see docs/BENCHMARKS.md.
        border_pad: the margin of ``border="reflect"`` in input pixels (None: the backbone's default).
        border_depth: :func:`calibrate_border` of the patch scores over the outer
            ``border_depth`` rings of patches (0 turns it off), see docs/BENCHMARKS.md.
        keep_aspect: the batch's input keeps the images' median aspect ratio (area about
            ``image_size`` squared, sides multiples of the backbone's unit) instead of a square;
            maps come at that (height, width).
        tiles: cut every image into ``tiles`` x ``tiles`` overlapping tiles (``tile_overlap``
            of a tile's side shared with its neighbour), score the tiles of each position as a
            batch of their own at the full input size, and stitch the maps back (averaged where
            they overlap). Costs about ``tiles ** 2`` times the work of one pass.
        tile_overlap: overlap of neighbouring tiles, a fraction of the tile side in [0, 0.5].
        max_references: reference-bank size for large batches: once N - 1 > 2 max_references
            (where the bank is cheaper than mutual scoring) every image is scored against a
            seeded random sample of max_references images of the batch, with features kept
            chunk by chunk and no N x N table (:mod:`defectscope.methods.bank`); None: always
            exact. Default chosen by measurement (docs/BENCHMARKS.md, reference banks).
        reference_seed: seed of that sample.
        feature_store: bank mode only: "auto" memory-maps the feature sets to a temporary file
            when they would exceed half of the available memory, None keeps them in memory,
            a folder memory-maps them there.
        scheduler: where the work runs: None (this process), "dask" (a Dask LocalCluster for
            the run) or a Dask scheduler address "tcp://HOST:PORT" (:mod:`defectscope.distributed`).
            MuSc only; CoDeGraph always builds the full table in this process.
        false_alarm_rate: share of normal images the verdict may flag (label-free rule on the
            batch, or conformal on the good images after :meth:`MuSc.calibrate`).
        looks_gate, looks_interval: several looks of normal. When the mean pairwise cosine of
            the batch's global embeddings is below ``looks_gate`` the batch is scored with the
            MSM interval ``looks_interval`` (the authors' [0, 0.3)) instead of [lower, upper).
            Default 0.89, chosen on the shared batches and the pose proxy (docs/POSE.md): only
            the magnetic tiles (0.868; 0.694 posed) fall below it, every other batch lies at
            0.911 or above (the gate sits half way between). Exact
            zero-shot scoring only (not the reference bank, Dask, ``watch`` or reference mode);
            None turns it off.
        rotations, self_term, self_mix, self_radius, self_gate, nearest_images, image_top: the
            pose-robust options of :mod:`defectscope.methods.pose` (off by default; zero-shot
            batch scoring only, docs/POSE.md).
    """

    backbone: str = "efficientnet-lite0"
    weights: str | None = None
    image_size: int | None = None
    layers: tuple[str | int, ...] | None = None
    degrees: tuple[int, ...] = (1, 3, 5)
    lower: float = 0.5
    upper: float = 1.0
    rscin_ks: tuple[int, ...] = (1, 2, 3)
    smoothing_sigma: float = 4.0
    native_grids: bool = True
    batch_size: int = 8
    border: str = "zero"
    border_pad: int | None = None
    border_depth: int = 2
    keep_aspect: bool = True
    tiles: int = 1
    tile_overlap: float = 0.25
    max_references: int | None = 200
    reference_seed: int = 0
    feature_store: str | None = "auto"
    scheduler: str | None = None
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE
    rotations: int = 1
    self_term: str = "off"
    self_mix: str = "min"
    self_radius: int = 4
    self_gate: float = 1.0
    nearest_images: int | None = None
    image_top: float = 0.0
    looks_gate: float | None = 0.89
    looks_interval: tuple[float, float] = (0.0, 0.3)

    def validate(self) -> None:
        _check_interval(self.lower, self.upper)
        from defectscope.methods.pose import check_options

        check_options(self.rotations, self.self_term, self.self_mix, self.self_radius, self.self_gate, self.nearest_images,
                      self.image_top, self.looks_gate, self.looks_interval)
        check_false_alarm_rate(self.false_alarm_rate)
        if self.border not in BORDERS:
            raise ConfigError(f"border rule {self.border!r} is unknown; choose one of {', '.join(BORDERS)}")
        if not self.degrees or any(r < 1 or r % 2 == 0 for r in self.degrees):
            raise ConfigError(f"aggregation degrees {self.degrees} are invalid: need odd values >= 1")
        if not self.rscin_ks or any(k < 1 for k in self.rscin_ks):
            raise ConfigError(f"RsCIN k list {self.rscin_ks} is invalid: need values >= 1")
        if self.smoothing_sigma < 0:
            raise ConfigError(f"smoothing sigma must be >= 0, got {self.smoothing_sigma}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if isinstance(self.border_depth, bool) or not isinstance(self.border_depth, int) or self.border_depth < 0:
            raise ConfigError(f"border_depth must be an integer >= 0, got {self.border_depth!r}")
        if isinstance(self.tiles, bool) or not isinstance(self.tiles, int) or self.tiles < 1:
            raise ConfigError(f"tiles must be an integer >= 1 (tiles per side), got {self.tiles!r}")
        if not 0.0 <= self.tile_overlap <= 0.5:
            raise ConfigError(f"tile_overlap must be in [0, 0.5], got {self.tile_overlap}")
        if self.max_references is not None and self.max_references < 1:
            raise ConfigError(f"max_references must be >= 1 (or None for exact scoring), got {self.max_references}")


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


def tile_fractions(tiles: int, overlap: float) -> tuple[float, float]:
    """(tile side, step between tiles) as fractions of the image side for ``tiles`` per side."""
    side = 1.0 / (tiles - (tiles - 1) * overlap)
    return side, side * (1.0 - overlap)


def crop_tile(image: np.ndarray, tiles: int, overlap: float, row: int, col: int) -> np.ndarray:
    """The tile at (row, col) of an image cut into ``tiles`` x ``tiles`` overlapping tiles."""
    side, step = tile_fractions(tiles, overlap)
    height, width = image.shape[:2]
    top, left = int(round(row * step * height)), int(round(col * step * width))
    bottom, right = int(round((row * step + side) * height)), int(round((col * step + side) * width))
    return np.ascontiguousarray(image[top:max(bottom, top + 1), left:max(right, left + 1)])


def tile_boxes(tile_shape: tuple[int, int], tiles: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of every tile's map on the stitched map, row by row, for tile
    maps of ``tile_shape``; the last box ends at the stitched map's size."""
    height, width = tile_shape
    rows = [int(round(k * (1.0 - overlap) * height)) for k in range(tiles)]
    cols = [int(round(k * (1.0 - overlap) * width)) for k in range(tiles)]
    return [(top, top + height, left, left + width) for top in rows for left in cols]


@dataclass
class MuScScores:
    """Intermediate MuSc output, kept for methods that build on it (CoDeGraph)."""

    patch_scores: torch.Tensor
    grid: tuple[int, int]
    embeddings: torch.Tensor
    feature_sets: list[torch.Tensor] = field(default_factory=list)


@dataclass
class ReferenceBank:
    """Known-good images for reference mode: their LNAMD feature sets (one (M, L, C) per layer
    and degree) and the grid."""

    feature_sets: list[torch.Tensor]
    grid: tuple[int, int]


class MuSc(Detector):
    """Zero-shot detector: scores an unlabeled batch by mutual scoring (no fit needed).

    After :meth:`calibrate` on known-good images it works in reference mode: new images are scored
    against the good images instead of against each other, and the verdict threshold is
    calibrated on the good images (split-conformal).
    """

    method = "musc"
    reference_bank = True
    """Large batches (see ``MuScConfig.max_references``) are scored against a sampled bank."""
    config: MuScConfig

    def __init__(self, config: MuScConfig | None = None, backbone=None) -> None:
        super().__init__(config or MuScConfig())
        self.config.validate()
        self._backbone = backbone
        self.reference: ReferenceBank | None = None

    @property
    def backbone(self):
        if self._backbone is None:
            from defectscope.backbones import get_backbone

            cfg = self.config
            layers = list(cfg.layers) if cfg.layers is not None else None
            self._backbone = get_backbone(
                cfg.backbone, weights=cfg.weights, image_size=cfg.image_size, layers=layers, border=cfg.border,
                border_pad=cfg.border_pad,
            )
        return self._backbone

    def calibrate(self, images: Sequence[np.ndarray], false_alarm_rate: float, progress: ProgressCallback | None = None) -> "MuSc":
        """Reference mode: keep the features of known-good ``images`` as the reference bank and
        calibrate the verdict on them at ``false_alarm_rate`` (each good image scored
        leave-one-out against the others). Without it the detector is zero-shot (the batch
        scores itself)."""
        self.config = replace(self.config, false_alarm_rate=check_false_alarm_rate(false_alarm_rate))
        require_good_images(len(images), self.config.false_alarm_rate)
        if self.config.tiles != 1:
            raise ConfigError("reference mode scores whole images only: use tiles=1 with good images")
        sets, grid, _ = self.feature_sets(images, progress, native_grids=self.config.native_grids)
        scores = self._combine([mutual_scores(s, self.config.lower, self.config.upper) for s in sets], grid)
        maxima = self.maps_from_patch_scores(scores, grid).flatten(1).amax(dim=1).numpy()
        self.calibration = conformal_threshold(maxima, self.config.false_alarm_rate, source="good images (leave-one-out)")
        self.reference = ReferenceBank(sets, grid)
        return self

    def backbone_facts(self) -> dict[str, Any]:
        backbone = self.backbone
        return {"image_size": backbone.image_size, "layers": list(backbone.layer_names)}

    def memory_plan(self) -> tuple[int, int]:
        backbone = self.backbone
        return int(backbone.image_size), int(getattr(backbone, "patch_size", 32))

    def _tables_held(self, sets: int) -> int:
        """N x N x L tables alive at once: similarities, distances and their sorted part."""
        return 3

    def _banked(self, count: int) -> bool:
        """True when a batch of ``count`` images is scored against a sampled reference bank."""
        from defectscope.methods.bank import use_bank

        return self.reference_bank and use_bank(count, self.config.max_references)

    def memory_needed(self, count: int, image_size: int | None = None) -> int:
        backbone = self.backbone
        size = image_size or backbone.image_size
        grid = getattr(backbone, "grid", None)
        side = max(1, grid[0] * size // backbone.image_size) if grid else max(1, size // 8)
        channels = list(getattr(backbone, "layer_channels", [256] * len(backbone.layer_names)))
        degrees = len(self.config.degrees)
        patches = side * side
        return estimate_bytes(
            count=count,
            image_size=size,
            batch_size=self.config.batch_size,
            feature_floats=sum(channels) * patches * (degrees if self._banked(count) else 1 + degrees),
            patches=patches,
            tables=0 if self._banked(count) else self._tables_held(len(channels) * degrees),
        )

    def input_shape(self, images: Sequence[np.ndarray]) -> tuple[int, int] | None:
        """The batch's input (height, width) with ``keep_aspect``; None for the square input."""
        if not self.config.keep_aspect:
            return None
        from defectscope.backbones._common import input_shape

        backbone = self.backbone
        return input_shape(images, backbone.image_size, getattr(backbone, "size_unit", backbone.image_size))

    def feature_sets(
        self, images: Sequence[np.ndarray], progress: ProgressCallback | None = None, *, native_grids: bool = False
    ) -> tuple[list[torch.Tensor], tuple[int, int], torch.Tensor]:
        """Backbone features -> LNAMD feature sets, one (N, L, C) per (layer, degree), and the
        finest grid. With ``native_grids`` each set keeps its layer's own grid (scores are
        brought to the finest grid by :func:`to_finest_grid`)."""
        from defectscope.methods.features import extract_in_batches

        shape = self.input_shape(images)
        features = extract_in_batches(
            self.backbone, images, self.config.batch_size, progress, common_grid=not native_grids, shape=shape
        )
        sets = []
        for layer in features.layers:
            sets.extend(lnamd(layer, self.config.degrees))
        return sets, features.grid, features.embedding

    def patch_scores(self, images: Sequence[np.ndarray], progress: ProgressCallback | None = None) -> MuScScores:
        """Features and MSM patch scores (N, L), averaged over layers and degrees."""
        n = len(images)
        check_batch_size(n)
        from defectscope.methods import pose

        self.last_pose_facts: dict[str, Any] = {}

        if pose.uses_pose_options(self.config):
            if self.config.scheduler is not None or self._banked(n):
                raise ConfigError("rotations, self_term and nearest_images score a batch exactly: use them without a scheduler and with max_references=None or a batch below the bank size")
            return pose.pose_patch_scores(self, images, progress)
        if self.config.scheduler is not None or self._banked(n):
            if self.config.scheduler is not None:
                from defectscope.distributed import dask_patch_scores as elsewhere
            else:
                from defectscope.methods.bank import sampled_patch_scores as elsewhere
            scores = elsewhere(self, images, progress)
            scores.patch_scores = calibrate_border(scores.patch_scores, scores.grid, self.config.border_depth)
            return scores
        sets, grid, embeddings = self.feature_sets(images, progress, native_grids=self.config.native_grids)
        lower, upper, self.last_pose_facts = pose.batch_interval(self.config, embeddings)
        pairs = n * (n - 1) // 2
        total = pairs * len(sets)
        accumulated = torch.zeros(n, grid[0] * grid[1])
        for index, feature_set in enumerate(sets):
            report = None
            if progress is not None:
                report = lambda done, base=index * pairs: progress("scoring", base + done, total)  # noqa: E731
            scores = mutual_scores(feature_set, lower, upper, progress=report)
            accumulated += to_finest_grid(scores, grid)
        patch_scores = calibrate_border(accumulated / len(sets), grid, self.config.border_depth)
        return MuScScores(patch_scores, grid, embeddings, sets)

    def _combine(self, per_set: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """Patch scores of each feature set -> their mean on the finest ``grid``, border-calibrated."""
        mean = torch.stack([to_finest_grid(scores, grid) for scores in per_set]).mean(dim=0)
        return calibrate_border(mean, grid, self.config.border_depth)

    def maps_from_patch_scores(self, patch_scores: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(N, L) patch scores on ``grid`` -> (N, H, W) anomaly maps at the input resolution
        (the grid times the finest layer's stride), blurred; with the border rule on
        (``border_depth`` > 0) the blur's larger swing at the edges is evened out
        (:func:`defectscope.methods.smoothing.equalise_edges`)."""
        backbone = self.backbone
        stride = backbone.image_size / backbone.grid[0]
        size = (int(round(grid[0] * stride)), int(round(grid[1] * stride)))
        maps = gaussian_blur(upsample(patch_scores, grid, size), self.config.smoothing_sigma)
        if self.config.border_depth > 0:
            maps = equalise_edges(maps, grid, self.config.smoothing_sigma)
        return maps

    def predict(
        self,
        images: Sequence[np.ndarray],
        paths: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Result:
        """Score the batch: anomaly maps, image scores (max of map, then RsCIN); with ``tiles``
        the stitched maps of the tile positions (see :func:`tile_boxes`); verdicts. In reference
        mode (after :meth:`calibrate`) against the good images, image score = max of map."""
        if self.reference is not None:
            return self.predict_against_reference(images, paths, progress)
        if self.config.tiles == 1:
            scores = self.patch_scores(images, progress)
            return self.result_from_patch_scores(scores.patch_scores, scores.grid, scores.embeddings, paths)
        maps, embeddings, grid = self.tiled_maps(images, progress)
        return self.result_from_maps(maps, embeddings, grid, paths)

    def tiled_maps(
        self, images: Sequence[np.ndarray], progress: ProgressCallback | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Score each tile position as its own batch and stitch: (N, H, W) maps, (N, D) mean tile
        embeddings, and the stitched patch grid (tile grid times the span in tiles)."""
        tiles, overlap = self.config.tiles, self.config.tile_overlap
        positions = [(row, col) for row in range(tiles) for col in range(tiles)]
        for number, (row, col) in enumerate(positions):
            crops = [crop_tile(image, tiles, overlap, row, col) for image in images]
            report = None
            if progress is not None:
                report = lambda stage, done, total, k=number: progress(f"tile {k + 1}/{len(positions)}: {stage}", done, total)  # noqa: E731
            scores = self.patch_scores(crops, report)
            tile_maps = self.maps_from_patch_scores(scores.patch_scores, scores.grid)
            if number == 0:
                shape, grid = tuple(tile_maps.shape[-2:]), scores.grid
                boxes = tile_boxes(shape, tiles, overlap)
                full = (boxes[-1][1], boxes[-1][3])
                canvas, counts = torch.zeros(len(images), *full), torch.zeros(full)
                embeddings = torch.zeros_like(scores.embeddings)
            if tuple(tile_maps.shape[-2:]) != shape:  # the crops' aspect rounded to another input shape
                tile_maps = F.interpolate(tile_maps.unsqueeze(1), size=shape, mode="bilinear", align_corners=True).squeeze(1)
            top, bottom, left, right = boxes[number]
            canvas[:, top:bottom, left:right] += tile_maps
            counts[top:bottom, left:right] += 1
            embeddings += scores.embeddings
        stitched_grid = (int(round(grid[0] * full[0] / shape[0])), int(round(grid[1] * full[1] / shape[1])))
        return canvas / counts, F.normalize(embeddings, dim=1), stitched_grid

    def predict_against_reference(
        self, images: Sequence[np.ndarray], paths: Sequence[str] | None = None, progress: ProgressCallback | None = None
    ) -> Result:
        """Reference mode: each image's patches scored against the good bank
        (:func:`reference_scores`); image score = map maximum; verdict and masks by the
        conformal threshold of the good images."""
        bank, threshold = self.reference, self.calibration
        if bank is None or threshold is None:
            raise ConfigError("reference mode needs good images: call calibrate() with known-good images first")
        if not images:
            raise ConfigError("MuSc got no images to score")
        names = default_paths(paths, len(images), self.method)
        sets, grid, _ = self.feature_sets(images, progress, native_grids=self.config.native_grids)
        if grid != bank.grid or len(sets) != len(bank.feature_sets):
            raise ConfigError(f"images give a {grid} feature grid but the good images gave {bank.grid}")
        scores = self._combine(
            [reference_scores(s, r, self.config.lower, self.config.upper, drop_one=True) for s, r in zip(sets, bank.feature_sets)],
            grid,
        )
        maps = self.maps_from_patch_scores(scores, grid).numpy().astype(np.float32)
        image_scores = maps.reshape(len(names), -1).max(axis=1).astype(np.float64)
        return Result(
            paths=names,
            image_scores=image_scores,
            anomaly_maps=maps,
            masks=pixel_masks(maps, threshold),
            settings={**self.settings(), "reference_images": int(bank.feature_sets[0].shape[0])},
            is_anomalous=decide(image_scores, threshold),
            threshold=threshold.value,
            threshold_rule=threshold.rule,
        )

    def result_from_patch_scores(
        self,
        patch_scores: torch.Tensor,
        grid: tuple[int, int],
        embeddings: torch.Tensor,
        paths: Sequence[str] | None = None,
    ) -> Result:
        """(N, L) patch scores -> Result: maps, image score = max of the map, then RsCIN."""
        return self.result_from_maps(self.maps_from_patch_scores(patch_scores, grid), embeddings, grid, paths)

    def result_from_maps(
        self,
        maps: torch.Tensor,
        embeddings: torch.Tensor,
        grid: tuple[int, int],
        paths: Sequence[str] | None = None,
    ) -> Result:
        """(N, H, W) anomaly maps -> Result: image score = max of the map, then RsCIN.

        Verdict: the label-free rule on the map maxima (before RsCIN). RsCIN rescales every
        batch to [0, 1] and mixes each score with its neighbours', so its values are neither
        comparable between batches nor independent draws; the map maxima are both. Masks: the
        same threshold per pixel, so an image is anomalous exactly when its mask is non-empty.
        """
        names = default_paths(paths, maps.shape[0], self.method)
        raw = maps.flatten(1).amax(dim=1)
        if self.config.image_top > 0:
            from defectscope.methods.pose import top_share_scores

            image_scores = rscin(top_share_scores(maps, self.config.image_top), embeddings, self.config.rscin_ks)
        else:
            image_scores = rscin(raw, embeddings, self.config.rscin_ks)
        threshold = label_free_threshold(raw.numpy(), self.config.false_alarm_rate, statistic="map maxima")
        return Result(
            paths=names,
            image_scores=np.asarray(image_scores, dtype=np.float64),
            anomaly_maps=maps.numpy().astype(np.float32),
            masks=pixel_masks(maps.numpy(), threshold),
            settings=self.settings(),
            extras={"raw_image_scores": raw.tolist(), "grid": list(grid), **getattr(self, "last_pose_facts", {})},
            is_anomalous=decide(raw.numpy(), threshold),
            threshold=threshold.value,
            threshold_rule=threshold.rule,
            verdict_scores=raw.numpy().astype(np.float64),
        )

