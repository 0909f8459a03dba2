"""Pose- and look-robust options of MuSc's mutual scoring (all off by default; docs/POSE.md).

Mutual scoring compares a patch with the nearest patch of every other image. When the part lies
at another angle in every image, the nearest patch of another image shows it at another angle,
and a CNN's features change with the angle: normal patches score high. Three remedies, each a
:class:`defectscope.methods.musc.MuScConfig` option:

- ``rotations`` (k = 2, 4 or 8): every image also goes through the backbone turned by 180
  degrees (k = 2), by the four quarter turns (k = 4), or by the quarter turns of the image and of
  its mirror (k = 8); a patch's distance to image j is the smallest over j's k copies. Rotating
  the *feature maps* instead would change nothing: the nearest patch is searched over the whole
  image, so a permutation of its patches gives the same minimum; only the network sees a turned
  image differently. Cost: k backbone passes and k similarity blocks per image pair (each
  unordered pair (i, j) takes the blocks of i unturned against j's copies; their column maxima,
  turned back onto j's grid, serve j against i's copies turned the other way, which the group
  holds). Inputs that are not square use the group {unturned, half turn, the two mirrors}.
- ``self_term`` ("on" / "auto"): each patch is also compared with the patches of its own image
  outside a neighbourhood (``self_radius`` cells of the finest grid plus the half-width of the
  LNAMD window); a texture is its own reference at any angle. The patch score becomes
  ``self_mix`` of the two: "min" (the better explanation wins) or "mean". The self distance is
  rescaled per batch and feature set so that its median matches the mutual score's median.
  "auto" decides per batch from the data: the term is used when the batch's patches are explained
  about as well by their own image as by the nearest other image (the median ratio of the two
  nearest-patch distances at most ``self_gate``); parts whose regions are unique in the image
  (a bottle, a screw) have a high ratio and keep plain mutual scoring.
- ``nearest_images`` (m): each image is scored against the m images nearest to it by the global
  embedding only (several looks of normal: a normal patch is compared with images of its own
  look), the MSM interval then applies to those m.

Several looks of normal: ``looks_gate`` (a cosine in (0, 1]) switches the MSM interval of a
batch to ``looks_interval`` (default the authors' [0, 0.3)) when its images' global embeddings
agree less than the gate (mean pairwise cosine below it): normal then comes in several looks,
and the default interval [0.5, 1) would compare a normal patch with the images least like it.

And one image score: ``image_top`` > 0 takes the mean of that share of the map's highest pixels
instead of its maximum (before RsCIN).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from defectscope.methods.mutual import (
    MuScScores,
    _interval_reduce,
    calibrate_border,
    nearest_similarities,
    similarities_to_distances,
    to_finest_grid,
)

ROTATION_COUNTS = (1, 2, 4, 8)
SELF_TERMS = ("off", "on", "auto")
SELF_MIXES = ("min", "mean")

# (quarter turns, mirrored first) of each group; images turn with np.rot90 (counter-clockwise)
_GROUPS_SQUARE = {
    1: [(0, False)],
    2: [(0, False), (2, False)],
    4: [(0, False), (1, False), (2, False), (3, False)],
    8: [(0, False), (1, False), (2, False), (3, False), (0, True), (1, True), (2, True), (3, True)],
}
_GROUP_OBLONG = [(0, False), (2, False), (0, True), (2, True)]


def turn_group(rotations: int, square: bool) -> list[tuple[int, bool]]:
    """The (quarter turns, mirrored) copies for ``rotations``; oblong inputs avoid quarter turns."""
    if rotations == 1:
        return _GROUPS_SQUARE[1]
    if square:
        return _GROUPS_SQUARE[rotations]
    return _GROUPS_SQUARE[2] if rotations == 2 else _GROUP_OBLONG


def turn_image(image: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """The image mirrored left-right (if ``mirrored``), then turned ``turns`` quarter turns."""
    out = image[:, ::-1] if mirrored else image
    return np.ascontiguousarray(np.rot90(out, turns))


def unturn_map(values: torch.Tensor, grid: tuple[int, int], turns: int, mirrored: bool) -> torch.Tensor:
    """(..., L) values on the grid of a turned image -> the same values on the unturned image's
    grid (``grid`` is the unturned (h, w))."""
    h, w = grid
    turned_shape = (w, h) if turns % 2 else (h, w)
    maps = values.reshape(*values.shape[:-1], *turned_shape)
    maps = torch.rot90(maps, -turns, dims=(-2, -1))
    if mirrored:
        maps = torch.flip(maps, dims=(-1,))
    return maps.reshape(*values.shape[:-1], h * w)


def rotated_similarities(
    plain: torch.Tensor,
    turned: Sequence[torch.Tensor],
    group: Sequence[tuple[int, bool]],
    grid: tuple[int, int],
    *,
    per_turn: bool = False,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(N, N, L) nearest similarities with turned references: entry (i, j, p) is the largest
    similarity of patch p of image i to any patch of any copy of image j (diagonal -inf).

    ``plain`` (N, L, C) are the unturned images' features, ``turned[g]`` (N, L, C) those of copy
    ``group[g]`` (``turned[0]`` is ``plain`` for the identity), ``grid`` the unturned (h, w).
    With ``per_turn`` the result is (G, N, N, L), one table per copy (for cached ablations)."""
    n, length, _ = plain.shape
    count = len(group)
    table = torch.full((count if per_turn else 1, n, n, length), -math.inf)
    for i in range(n - 1):
        zi = plain[i]
        for j in range(i + 1, n):
            for g, (turns, mirrored) in enumerate(group):
                block = zi @ turned[g][j].T
                slot = g if per_turn else 0
                forward = block.amax(dim=1)
                backward = unturn_map(block.amax(dim=0), grid, turns, mirrored)
                table[slot, i, j] = torch.maximum(table[slot, i, j], forward)
                table[slot, j, i] = torch.maximum(table[slot, j, i], backward)
        if progress is not None:
            progress(n - 1 - i)
    return table if per_turn else table[0]


def exclusion(grid: tuple[int, int], radius: int) -> torch.Tensor:
    """(L, L) bool: True where two patches of ``grid`` lie within ``radius`` cells (Chebyshev)."""
    rows = torch.arange(grid[0]).repeat_interleave(grid[1])
    cols = torch.arange(grid[1]).repeat(grid[0])
    return ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)


def set_radius(self_radius: int, grid: tuple[int, int], finest: tuple[int, int], degree: int) -> int:
    """Neighbourhood radius on a feature set's own grid: ``self_radius`` finest cells scaled to
    the set's grid, plus the half-width of its LNAMD window (whose aggregates overlap)."""
    return int(math.ceil(self_radius * grid[0] / finest[0])) + degree // 2


def self_similarities(features: torch.Tensor, grid: tuple[int, int], radius: int) -> torch.Tensor:
    """(N, L, C) -> (N, L): each patch's largest similarity to its own image's patches outside
    ``radius`` cells; -inf when the grid has no such patch."""
    near = exclusion(grid, radius)
    out = torch.empty(features.shape[:2])
    for i in range(features.shape[0]):
        block = features[i] @ features[i].T
        block.masked_fill_(near, -math.inf)
        out[i] = block.amax(dim=1)
    return out


def set_grid(length: int, finest: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of a feature set with ``length`` patches and the aspect of the finest grid."""
    if length == finest[0] * finest[1]:
        return finest
    rows = max(1, int(round(math.sqrt(length * finest[0] / finest[1]))))
    return rows, length // rows


def own_image_ratio(self_distances: torch.Tensor, nearest_other: torch.Tensor) -> float:
    """The gate statistic of one feature set: median over the batch's patches of the distance to
    the nearest patch of their own image (outside the neighbourhood) over the distance to the
    nearest patch of the nearest other image."""
    ratio = self_distances / nearest_other.clamp_min(1e-6)
    finite = ratio[torch.isfinite(ratio)]
    return float(finite.median()) if finite.numel() else math.inf


def mix_self(mutual: torch.Tensor, self_distances: torch.Tensor, how: str) -> torch.Tensor:
    """Combine (N, L) mutual scores with (N, L) self distances rescaled to the mutual scores'
    median over the batch: "min" or "mean"."""
    finite = torch.isfinite(self_distances)
    if not finite.any():
        return mutual
    scale = mutual.median() / self_distances[finite].median().clamp_min(1e-12)
    own = torch.where(finite, self_distances * scale, mutual)
    return torch.minimum(mutual, own) if how == "min" else 0.5 * (mutual + own)


def nearest_image_mask(embeddings: torch.Tensor, count: int) -> torch.Tensor:
    """(N, N) bool: True where j is among the ``count`` images nearest to i by cosine similarity
    of the global embeddings (i itself excluded; all others when count >= N - 1)."""
    n = embeddings.shape[0]
    e = torch.nn.functional.normalize(embeddings.float(), dim=1)
    similarity = e @ e.T
    similarity.fill_diagonal_(-math.inf)
    keep = torch.zeros(n, n, dtype=torch.bool)
    top = torch.topk(similarity, min(count, n - 1), dim=1).indices
    keep.scatter_(1, top, True)
    return keep


def top_share_scores(maps: torch.Tensor, share: float) -> torch.Tensor:
    """(N, H, W) maps -> (N,) image scores: the maximum (share 0) or the mean of the top
    ``share`` of each map's pixels (at least one)."""
    flat = maps.flatten(1)
    if share <= 0:
        return flat.amax(dim=1)
    k = max(1, int(round(share * flat.shape[1])))
    return torch.topk(flat, k, dim=1).values.mean(dim=1)


def embedding_agreement(embeddings: torch.Tensor) -> float:
    """Mean pairwise cosine of the batch's global embeddings (the image itself left out).

    The sum of all pairwise cosines of unit vectors is the squared norm of their sum, so no
    N x N table is built (the reference bank computes this for batches of any size)."""
    e = torch.nn.functional.normalize(embeddings.double(), dim=1)
    n = e.shape[0]
    if n < 2:
        return 1.0
    total = e.sum(dim=0)
    return float((total @ total - (e * e).sum()) / (n * (n - 1)))


GROUP_COMPONENTS = 3
"""Principal components in which :func:`look_groups` refines its 2-way split."""


def look_groups(embeddings: torch.Tensor, components: int = GROUP_COMPONENTS, iterations: int = 50) -> dict:
    """Does the batch's normal come in separated groups (e.g. two kinds of cell) or as one spread?

    The unit global embeddings are centred; their best 2-way split along the first principal
    component (Otsu: the cut of the sorted projections with the largest between-group variance)
    is refined by 2-means in the top ``components`` principal components. ``separation``: the
    distance between the two groups' centres over their pooled standard deviation along the line
    through the centres. A Gaussian spread gives about 2.8 (2.65 for the median cut of one normal
    variable, 1.60 / 0.60; 3.5 on the 868 magnetic tiles), two separated groups much more (6.2 on
    the elpv cells, mono vs poly). ``minor``: the smaller group's share. O(N D^2) time, O(N D)
    memory (no N x N table). Fewer than 4 images, or all of them equal: separation 0."""
    e = torch.nn.functional.normalize(embeddings.double(), dim=1)
    n = e.shape[0]
    x = e - e.mean(dim=0)
    if n < 4 or float(x.abs().max()) == 0.0:
        return {"separation": 0.0, "minor": 0.0}
    _, _, vt = torch.linalg.svd(x, full_matrices=False)
    z = x @ vt[: max(1, components)].T
    order = torch.sort(z[:, 0]).values
    sums = torch.cumsum(order, dim=0)
    left = torch.arange(1, n, dtype=torch.float64, device=z.device)
    between = left * (n - left) / n * ((sums[-1] - sums[:-1]) / (n - left) - sums[:-1] / left) ** 2
    cut = int(torch.argmax(between))
    upper = z[:, 0] > 0.5 * (order[cut] + order[cut + 1])
    for _ in range(iterations):
        if bool(upper.all()) or not bool(upper.any()):
            return {"separation": 0.0, "minor": 0.0}
        c0, c1 = z[~upper].mean(dim=0), z[upper].mean(dim=0)
        moved = ((z - c1) ** 2).sum(dim=1) < ((z - c0) ** 2).sum(dim=1)
        if bool(torch.equal(moved, upper)) or bool(moved.all()) or not bool(moved.any()):
            break
        upper = moved
    c0, c1 = z[~upper].mean(dim=0), z[upper].mean(dim=0)
    gap = float(torch.linalg.norm(c1 - c0))
    if gap == 0.0:
        return {"separation": 0.0, "minor": 0.0}
    q = z @ ((c1 - c0) / gap)
    spread = float(((q[upper] - q[upper].mean()) ** 2).sum() + ((q[~upper] - q[~upper].mean()) ** 2).sum())
    spread = math.sqrt(spread / max(n - 2, 1))
    share = float(upper.double().mean())
    return {"separation": gap / spread if spread > 0 else math.inf, "minor": min(share, 1.0 - share)}


def bank_looks(config, embeddings: torch.Tensor) -> tuple[float, float, dict]:
    """The reference bank's interval and facts. ``looks_bank`` on: the several-looks gate alone
    (:func:`batch_interval`). Off (the default): the bank takes ``looks_interval`` (and
    ``looks_nearest``) only when the gate finds the embeddings disagree *and*
    :func:`look_groups` finds separated groups (separation at least ``looks_groups``); a batch
    that is one wide spread keeps [lower, upper) and the whole bank. ``looks_gate`` or
    ``looks_groups`` None (with ``looks_bank`` off): [lower, upper), no facts."""
    if getattr(config, "looks_bank", False):
        return batch_interval(config, embeddings)
    threshold = getattr(config, "looks_groups", None)
    if config.looks_gate is None or threshold is None:
        return config.lower, config.upper, {}
    agreement = embedding_agreement(embeddings)
    groups = look_groups(embeddings)
    several = agreement < config.looks_gate and groups["separation"] >= threshold
    lower, upper = config.looks_interval if several else (config.lower, config.upper)
    return lower, upper, {
        "embedding_agreement": agreement,
        "group_separation": groups["separation"],
        "minor_group": groups["minor"],
        "several_looks": bool(several),
        "interval": [lower, upper],
    }


def batch_interval(config, embeddings: torch.Tensor) -> tuple[float, float, dict]:
    """The MSM interval for this batch: ``config.looks_interval`` when ``config.looks_gate`` is set
    and the batch's :func:`embedding_agreement` is below it, else (lower, upper); and the facts."""
    if config.looks_gate is None:
        return config.lower, config.upper, {}
    agreement = embedding_agreement(embeddings)
    several = agreement < config.looks_gate
    lower, upper = config.looks_interval if several else (config.lower, config.upper)
    return lower, upper, {"embedding_agreement": agreement, "several_looks": bool(several), "interval": [lower, upper]}


def uses_pose_options(config) -> bool:
    """True when any scoring option of this module is on (``image_top`` is applied elsewhere)."""
    return config.rotations != 1 or config.self_term != "off" or config.nearest_images is not None


def similarity_tables(detector, images: Sequence[np.ndarray], progress=None, *, per_turn: bool = False):
    """The backbone pass(es) and nearest-similarity tables of a batch under ``detector.config``:
    (feature sets, finest grid, embeddings, one (N, N, L) table per set (or (G, N, N, L) with
    ``per_turn``), the turn group)."""

    config = detector.config
    sets, grid, embeddings = detector.feature_sets(images, progress, native_grids=config.native_grids)
    shape = detector.input_shape(images)
    group = turn_group(config.rotations, shape is None or shape[0] == shape[1])
    if len(group) == 1:
        tables = [nearest_similarities(s)[None] if per_turn else nearest_similarities(s) for s in sets]
        return sets, grid, embeddings, tables, group
    turned_sets = [sets]
    for turns, mirrored in group[1:]:
        turned = [turn_image(image, turns, mirrored) for image in images]
        turned_sets.append(detector.feature_sets(turned, None, native_grids=config.native_grids)[0])
    tables = []
    for index, plain in enumerate(sets):
        copies = [copy[index] for copy in turned_sets]
        tables.append(rotated_similarities(plain, copies, group, set_grid(plain.shape[1], grid), per_turn=per_turn))
    return sets, grid, embeddings, tables, group


def self_tables(sets: Sequence[torch.Tensor], grid: tuple[int, int], degrees: Sequence[int], self_radius: int) -> list[torch.Tensor]:
    """(N, L) own-image nearest similarities of every feature set (sets ordered layer by layer,
    degree by degree, as :meth:`MuSc.feature_sets` gives them)."""
    out = []
    for index, features in enumerate(sets):
        own_grid = set_grid(features.shape[1], grid)
        degree = degrees[index % len(degrees)]
        out.append(self_similarities(features, own_grid, set_radius(self_radius, own_grid, grid, degree)))
    return out


def scores_from_tables(
    tables: Sequence[torch.Tensor],
    grid: tuple[int, int],
    embeddings: torch.Tensor,
    lower: float,
    upper: float,
    *,
    self_sims: Sequence[torch.Tensor] | None = None,
    self_term: str = "off",
    self_mix: str = "min",
    self_gate: float = 1.0,
    nearest_images: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """(N, L) patch scores on the finest ``grid`` (before the border rule) from per-set (N, N, L)
    nearest-similarity tables, and facts about the batch (the gate statistic, whether the self
    term was used)."""

    n = tables[0].shape[0]
    keep = None
    references = n - 1
    if nearest_images is not None and nearest_images < n - 1:
        keep = nearest_image_mask(embeddings, nearest_images)
        references = nearest_images
    facts: dict = {}
    per_set = []
    ratios = []
    for index, table in enumerate(tables):
        distances = similarities_to_distances(table)
        if keep is not None:
            distances = torch.where(keep[:, :, None], distances, torch.full_like(distances, math.inf))
        mutual = _interval_reduce(distances, references, lower, upper)
        own = None
        if self_term != "off" and self_sims is not None:
            own = similarities_to_distances(self_sims[index])
            ratios.append(own_image_ratio(own, distances.amin(dim=1)))
        per_set.append((mutual, own))
    if ratios:
        facts["own_image_ratio"] = float(np.mean(ratios))
    use_self = self_term == "on" or (self_term == "auto" and ratios and float(np.mean(ratios)) <= self_gate)
    facts["self_term_used"] = bool(use_self)
    total = torch.zeros(n, grid[0] * grid[1])
    for mutual, own in per_set:
        score = mix_self(mutual, own, self_mix) if use_self and own is not None else mutual
        total += to_finest_grid(score, grid)
    return total / len(per_set), facts


def pose_patch_scores(detector, images: Sequence[np.ndarray], progress=None):
    """MuSc's patch scores with the options of this module (:class:`MuScScores`, the facts of the
    batch in its ``facts``)."""

    config = detector.config
    sets, grid, embeddings, tables, group = similarity_tables(detector, images, progress)
    own = self_tables(sets, grid, config.degrees, config.self_radius) if config.self_term != "off" else None
    lower, upper, looks = batch_interval(config, embeddings)
    scores, facts = scores_from_tables(
        tables, grid, embeddings, lower, upper, self_sims=own, self_term=config.self_term,
        self_mix=config.self_mix, self_gate=config.self_gate, nearest_images=config.nearest_images,
    )
    facts.update(looks, reference_copies=len(group))
    return MuScScores(calibrate_border(scores, grid, config.border_depth), grid, embeddings, sets, facts)
