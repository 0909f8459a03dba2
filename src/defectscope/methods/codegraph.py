"""CoDeGraph: mutual scoring that filters consistent anomalies (defects recurring in the batch).

MuSc fails when one kind of defect recurs in several images: the defective patches find close
matches in the other defective images and look normal. CoDeGraph reuses the per-image nearest
distance tables that mutual scoring computes anyway (one (N, N, L) table per LNAMD feature set)
and adds four cheap steps, none of which repeats the pairwise work:

1. :func:`neighbour_burnout` — per patch, the sorted distances to the other images
   d_(1) <= ... <= d_(N-1), log-gaps tau_k = ln(d_(k+1) / d_(k)) and the endurance ratio
   ``burnout(p) = max_{1 <= k <= K} k tau_k(p) / median_q(k tau_k(q))`` (median over every patch
   of the batch at that k). The argmax k is the number of images that "support" the patch before
   its neighbours run out. See docs/CODEGRAPH.md for the argument and the calibration.
2. :func:`linking_patches`, :func:`image_graph` — nodes are images; every burnt-out patch of
   image i whose MSM score without its k supporters would be high (above a quantile of the
   batch's patch scores) adds 1 to the edge between i and each of its supporting images; the
   matrix is symmetrised.
3. :func:`find_communities` — Leiden with the Constant Potts Model; communities of at least
   ``min_community_size`` images whose mean edge weight per member pair reaches
   ``min_pair_weight`` are candidates; :func:`confirmed` keeps those whose members stand out
   once re-scored without each other (groups of merely similar normal images do not).
4. :func:`excluded_interval_mean` — for community members, mutual scoring is recomputed from the
   same tables with the other members of the community excluded as references (their distances
   set to +inf, interval bounds taken for the reduced reference count); then maps, image score =
   max, RsCIN, as in MuSc.

Grids: like MuSc (``native_grids``, the default), each layer is scored on its own grid and its
scores are upsampled to the finest grid. Burnout and the graph use the finest layer's tables only
(averaged over its LNAMD degrees), so every patch count is in finest-grid patches whatever the
layers; the re-scoring of step 4 uses every table.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from defectscope.errors import ConfigError
from defectscope.methods.base import Result, with_batch_fact
from defectscope.methods.musc import (
    MuSc,
    ProgressCallback,
    calibrate_border,
    check_batch_size,
    interval_bounds,
    interval_mean,
    nearest_similarities,
    set_progress,
    similarities_to_distances,
    to_finest_grid,
)
from defectscope.methods.pose import similarity_tables
from defectscope.methods.zeroshot_config import CoDeGraphConfig  # noqa: F401  (the registry names it here)

_DISTANCE_FLOOR = 1e-6
"""Distances are floored here before taking logarithms (identical patches have distance 0)."""


@dataclass
class Burnout:
    """Neighbour-burnout statistics of every patch of a batch.

    Attributes:
        ratio: (N, L) endurance ratio max_k k tau_k / median(k tau_k).
        support: (N, L) int64 argmax k: the number of images before the jump (1..K).
        before: (N, L) distance d_(k) just before the jump.
        after: (N, L) distance d_(k+1) just after the jump.
        score: (N, L) MSM score of each patch over the same table.
        unsupported: (N, L) MSM score without the k supporting images as references.
        neighbours: (N, L, K) int64 indices of the K nearest other images, nearest first.
    """

    ratio: torch.Tensor
    support: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    score: torch.Tensor
    unsupported: torch.Tensor
    neighbours: torch.Tensor


def max_support(num_images: int, fraction: float) -> int:
    """K = ceil(fraction (N - 1)), clipped to [1, N - 2] (a jump needs a value after it)."""
    if num_images < 3:
        raise ConfigError(f"neighbour burnout needs at least 3 images, got {num_images}")
    return max(1, min(int(math.ceil(fraction * (num_images - 1))), num_images - 2))


def neighbour_burnout(distances: torch.Tensor, support: int, lower: float = 0.0, upper: float = 0.3) -> Burnout:
    """Endurance ratio of every patch from an (N, N, L) per-image nearest-distance table.

    The diagonal (an image with itself) must be +inf. For each patch the distances to the other
    images are sorted, tau_k = ln(d_(k+1) / d_(k)) for k = 1..K (K = ``support``), and the ratio
    is max_k k tau_k / m_k with m_k the median of k tau_k over all patches of the batch. Also
    returns the MSM score of every patch over this table and the score it would get without its
    supporters (the interval [lower, upper) taken over the N - 1 - k remaining references).
    """
    n = distances.shape[0]
    if not 1 <= support <= n - 2:
        raise ConfigError(f"support {support} is invalid for {n} images: need 1 <= K <= N - 2")
    start, end = interval_bounds(n - 1, lower, upper)
    depth = min(n - 1, support + end)
    nearest = torch.topk(distances, depth, dim=1, largest=False, sorted=True)
    values = nearest.values.transpose(1, 2).contiguous()
    order = nearest.indices.transpose(1, 2)
    floored = values[..., : support + 1].clamp_min(_DISTANCE_FLOOR)
    ranks = torch.arange(1, support + 1, dtype=values.dtype, device=values.device)
    scaled_gaps = ranks * torch.log(floored[..., 1:] / floored[..., :-1])
    typical = scaled_gaps.reshape(-1, support).median(dim=0).values.clamp_min(_DISTANCE_FLOOR)
    ratio, jump = (scaled_gaps / typical).max(dim=-1)
    before = values.gather(-1, jump.unsqueeze(-1)).squeeze(-1)
    after = values.gather(-1, (jump + 1).unsqueeze(-1)).squeeze(-1)
    score = values[..., start:end].mean(dim=-1)
    cumulative = F.pad(values.double().cumsum(dim=-1), (1, 0))
    bounds = torch.tensor([interval_bounds(n - 1 - k, lower, upper) for k in range(1, support + 1)], device=values.device)
    first = bounds[jump, 0] + jump + 1
    last = bounds[jump, 1] + jump + 1
    total = cumulative.gather(-1, last.unsqueeze(-1)) - cumulative.gather(-1, first.unsqueeze(-1))
    unsupported = (total.squeeze(-1) / (last - first)).to(values.dtype)
    return Burnout(ratio, jump + 1, before, after, score, unsupported, order[..., :support].contiguous())


def linking_patches(burnout: Burnout, threshold: float, score_quantile: float) -> torch.Tensor:
    """(N, L) bool: burnt-out patches (ratio > threshold) whose MSM score without their
    supporters would exceed the ``score_quantile`` quantile of the batch's MSM patch scores."""
    level = torch.quantile(burnout.score.flatten().double(), score_quantile).item()
    return (burnout.ratio > threshold) & (burnout.unsupported > level)


def image_graph(burnout: Burnout, linking: torch.Tensor) -> np.ndarray:
    """(N, N) symmetric edge weights: each linking patch of image i adds 1 to (i, j) for each of
    its supporting images j (those before the jump); then W + W^T, zero diagonal."""
    n, _, support = burnout.neighbours.shape
    device = linking.device
    ranks = torch.arange(support, device=device)
    used = linking.unsqueeze(-1) & (ranks < burnout.support.unsqueeze(-1))
    sources = torch.arange(n, device=device).view(n, 1, 1).expand_as(used)
    weights = torch.zeros(n * n, dtype=torch.float64, device=device)
    weights.index_add_(0, (sources[used] * n + burnout.neighbours[used]), torch.ones(int(used.sum()), dtype=torch.float64, device=device))
    matrix = weights.view(n, n).cpu().numpy()
    matrix = matrix + matrix.T
    np.fill_diagonal(matrix, 0.0)
    return matrix


def find_communities(
    weights: np.ndarray,
    resolution: float,
    *,
    min_size: int = 2,
    min_pair_weight: float = 0.0,
    seed: int = 0,
) -> list[list[int]]:
    """Leiden (CPM objective, ``resolution`` in weight per node pair) on the image graph.

    Returns the communities of at least ``min_size`` images whose mean edge weight per member
    pair is at least ``min_pair_weight``, largest first, each sorted.
    """
    import igraph
    import leidenalg

    n = weights.shape[0]
    rows, cols = np.nonzero(np.triu(weights, k=1))
    if rows.size == 0:
        return []
    graph = igraph.Graph(n=n, edges=list(zip(rows.tolist(), cols.tolist())))
    graph.es["weight"] = weights[rows, cols].tolist()
    partition = leidenalg.find_partition(
        graph, leidenalg.CPMVertexPartition, weights="weight", resolution_parameter=resolution, seed=seed
    )
    kept = []
    for members in partition:
        if len(members) < min_size:
            continue
        block = weights[np.ix_(members, members)]
        pairs = len(members) * (len(members) - 1) / 2
        if block.sum() / 2 / pairs >= min_pair_weight:
            kept.append(sorted(members))
    return sorted(kept, key=lambda c: (-len(c), c[0]))


def excluded_interval_mean(distances: torch.Tensor, excluded: torch.Tensor, lower: float = 0.0, upper: float = 0.3) -> torch.Tensor:
    """MSM reduction with some references removed: (N, N, L) distances, (N, N) bool
    ``excluded[i, j]`` (j may not serve as a reference for image i) -> (N, L) scores.

    Excluded entries count as +inf; image i's interval bounds are taken for its own number of
    remaining references. Images that lose every reference keep their unrestricted score.
    """
    n = distances.shape[0]
    excluded = excluded.clone()
    excluded.fill_diagonal_(True)
    references = n - excluded.sum(dim=1)
    scores = interval_mean(distances, lower, upper)
    for count in torch.unique(references).tolist():
        if count == n - 1 or count < 1:
            continue
        rows = torch.nonzero(references == count).flatten()
        start, end = interval_bounds(count, lower, upper)
        masked = distances[rows].masked_fill(excluded[rows].unsqueeze(-1), math.inf)
        smallest = torch.topk(masked, end, dim=1, largest=False, sorted=True).values
        scores[rows] = smallest[:, start:end].mean(dim=1)
    return scores


def confirmed(members: Sequence[int], musc_scores: torch.Tensor, filtered: torch.Tensor, quantile: float, share: float) -> bool:
    """Whether a community is a group of images sharing a defect, not a group of similar normal
    images: at least ``share`` of its members, re-scored without the other members
    (``filtered``, (N, L)), must have an image score (largest patch score) above the ``quantile``
    quantile of the MuSc image scores of the images outside the community. Separating images that
    only share normal appearance leaves most of them ordinary; separating images that share a
    defect makes them stand out."""
    n = musc_scores.shape[0]
    index = torch.tensor(sorted(members), device=musc_scores.device)
    outside = torch.ones(n, dtype=torch.bool, device=musc_scores.device)
    outside[index] = False
    if not outside.any():
        return False
    level = torch.quantile(musc_scores[outside].amax(dim=1).double(), quantile).item()
    above = (filtered[index].amax(dim=1).double() > level).double().mean().item()
    return above >= share


def graph_picture(weights: np.ndarray, communities: Sequence[Sequence[int]], highlight: int | None = None) -> bytes:
    """A small PNG of the image graph: nodes on a circle (community members side by side), edge
    width by weight, members of each community coloured (``highlight``: only that community
    coloured, and named in the title). Returns PNG bytes."""
    from matplotlib.figure import Figure

    n = weights.shape[0]
    grouped = [i for members in communities for i in members]
    placed = set(grouped)
    order = grouped + [i for i in range(n) if i not in placed]
    angles = np.empty(n)
    angles[order] = 2 * np.pi * np.arange(n) / max(n, 1)
    xy = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    figure = Figure(figsize=(3.2, 3.4), dpi=80)
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.set_aspect("equal")
    if highlight is not None:
        axes.set_title(f"community {highlight}: {len(communities[highlight])} of {n} images", fontsize=9)
    palette = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown"]
    colours = np.full(n, "0.8", dtype=object)
    for index, members in enumerate(communities):
        if highlight is None or index == highlight:
            colours[list(members)] = palette[index % len(palette)]
    peak = weights.max() if weights.size and weights.max() > 0 else 1.0
    rows, cols = np.nonzero(np.triu(weights, k=1))
    for i, j in zip(rows, cols):
        inside = colours[i] == colours[j] and colours[i] != "0.8"
        axes.plot(
            xy[[i, j], 0], xy[[i, j], 1], color=colours[i] if inside else "0.6",
            linewidth=0.3 + 2.0 * weights[i, j] / peak, alpha=0.9 if inside else 0.5, zorder=1,
        )
    axes.scatter(xy[:, 0], xy[:, 1], c=list(colours), s=max(8, 400 // max(n, 1)), edgecolors="k", linewidths=0.3, zorder=2)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


@dataclass
class CoDeGraphScores:
    """Everything CoDeGraph derives for a batch, for diagnostics and tests."""

    musc_patch_scores: torch.Tensor
    patch_scores: torch.Tensor
    burnout: Burnout
    linking: torch.Tensor
    weights: np.ndarray
    communities: list[list[int]]
    grid: tuple[int, int]
    embeddings: torch.Tensor
    candidates: list[list[int]] = field(default_factory=list)
    """Leiden communities before confirmation (``communities`` holds the confirmed ones)."""


class CoDeGraph(MuSc):
    """MuSc with consistent-anomaly filtering: detects groups of images that vouch for each
    other's defects and re-scores them without each other as references."""

    method = "codegraph"
    reference_bank = False

    def __init__(self, config: CoDeGraphConfig | None = None, backbone=None) -> None:
        if config is not None and not isinstance(config, CoDeGraphConfig):
            raise ConfigError(f"CoDeGraph needs a CoDeGraphConfig, got {type(config).__name__}")
        super().__init__(config or CoDeGraphConfig(), backbone)

    def _tables_held(self, sets: int) -> int:
        """Every feature set's table is kept for the re-scoring, plus two working copies."""
        return sets + 2

    def analyse(
        self,
        images: Sequence[np.ndarray],
        progress: ProgressCallback | None = None,
        *,
        groups: Sequence[Sequence[int]] | None = None,
    ) -> CoDeGraphScores:
        """Features, distance tables, burnout, graph, communities and filtered patch scores.

        ``groups`` (image indices) replaces the detected communities: each group is re-scored
        without its own members as references, unconditionally (no confirmation). Use it when the
        groups are known, or to measure what perfect detection would give.
        """
        cfg: CoDeGraphConfig = self.config  # type: ignore[assignment]
        n = len(images)
        check_batch_size(n, "CoDeGraph", minimum=3)
        if groups is not None:
            groups = [sorted({int(i) for i in g}) for g in groups]
            if any(not 0 <= i < n for g in groups for i in g):
                raise ConfigError(f"groups name images outside the batch of {n}")
        if cfg.rotations != 1:
            sets, grid, embeddings, similarities, _ = similarity_tables(self, images, progress)
            tables = [similarities_to_distances(t) for t in similarities]
        else:
            sets, grid, embeddings = self.feature_sets(images, progress, native_grids=cfg.native_grids)
            reports = set_progress(progress, n, len(sets))
            tables = [similarities_to_distances(nearest_similarities(s, progress=r)) for s, r in zip(sets, reports)]
        device = tables[0].device
        musc_scores = torch.zeros(n, grid[0] * grid[1], device=device)
        for table in tables:
            musc_scores += to_finest_grid(interval_mean(table, cfg.lower, cfg.upper), grid)
        musc_scores = calibrate_border(musc_scores / len(tables), grid, cfg.border_depth)
        # The graph is built on the finest grid only (with native grids the coarser layer's tables
        # have fewer patches; they still take part in the re-scoring below).
        finest = [t for t in tables if t.shape[2] == grid[0] * grid[1]]
        mean_table = sum(finest[1:], finest[0].clone()) / len(finest)
        burnout = neighbour_burnout(mean_table, max_support(n, cfg.max_support_fraction), cfg.lower, cfg.upper)
        del mean_table
        linking = linking_patches(burnout, cfg.burnout_threshold, cfg.score_quantile)
        weights = image_graph(burnout, linking)
        if groups is None:
            communities = find_communities(
                weights, cfg.resolution, min_size=cfg.min_community_size, min_pair_weight=cfg.min_pair_weight,
                seed=cfg.seed,
            )
        else:
            communities = [g for g in groups if len(g) >= 2]
        patch_scores = musc_scores
        candidates = communities
        if communities:
            excluded = torch.zeros(n, n, dtype=torch.bool, device=device)
            for members in communities:
                index = torch.tensor(members, device=device)
                excluded[index.unsqueeze(1), index.unsqueeze(0)] = True
            filtered = torch.stack([
                to_finest_grid(excluded_interval_mean(t, excluded, cfg.lower, cfg.upper), grid) for t in tables
            ]).mean(dim=0)
            filtered = calibrate_border(filtered, grid, cfg.border_depth)
            if groups is None:
                communities = [
                    members for members in communities
                    if confirmed(members, musc_scores, filtered, cfg.confirm_quantile, cfg.confirm_share)
                ]
            members_all = torch.zeros(n, dtype=torch.bool, device=device)
            for members in communities:
                members_all[torch.tensor(members, device=device)] = True
            patch_scores = torch.where(members_all.unsqueeze(1), filtered, musc_scores)
        return CoDeGraphScores(musc_scores, patch_scores, burnout, linking, weights, communities, grid, embeddings,
                               candidates)

    def score_posed(self, images: Sequence[np.ndarray], paths: Sequence[str] | None, progress: ProgressCallback | None) -> Result:
        """CoDeGraph scores the images as they are (its graph is built on them): ``canonical_pose``
        "auto" is read as "off", and the fact goes to ``extras["canonical_pose"]``
        and ``batch_facts`` ("on" is refused by the config)."""
        result = self.score_batch(images, paths, progress)
        if self.config.canonical_pose == "off":
            return result
        facts = {"mode": self.config.canonical_pose, "turned": False, "reason": "CoDeGraph scores the images as they are: canonical_pose=auto is read as off"}
        return replace(result, extras=with_batch_fact(result.extras, "canonical_pose", facts))

    def score_batch(self, images: Sequence[np.ndarray], paths: Sequence[str] | None, progress: ProgressCallback | None) -> Result:
        """Score the batch with consistent-anomaly filtering; ``extras["communities"]`` lists the
        detected groups (members as paths, a graph picture as PNG bytes). After :meth:`calibrate` on
        good images, :meth:`predict` scores against them as MuSc does (a clean reference bank holds
        no consistent anomalies to filter)."""
        return self.result(self.analyse(images, progress), paths)

    def result(self, scores: CoDeGraphScores, paths: Sequence[str] | None = None) -> Result:
        """The Result of an :meth:`analyse` output: maps, image scores (max, then RsCIN) and the
        communities as ``extras["communities"]``."""
        cfg: CoDeGraphConfig = self.config  # type: ignore[assignment]
        result = self.result_from_patch_scores(scores.patch_scores, scores.grid, scores.embeddings, paths)
        names = result.paths
        communities = [
            {
                "id": number,
                "members": [names[i] for i in members],
                "image_png": graph_picture(scores.weights, scores.communities, number) if cfg.draw_graphs else None,
            }
            for number, members in enumerate(scores.communities)
        ]
        result.extras.update({"communities": communities, "linking_patches": scores.linking.sum(dim=1).tolist()})
        return result
