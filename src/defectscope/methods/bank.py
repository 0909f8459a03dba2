"""Reference banks: score images against M reference images instead of all N - 1 others.

Mutual scoring compares every image with every other one: N (N - 1) / 2 image pairs and an
N x N x L nearest-distance table per feature set. With a bank of M references each query image
is compared with the M references only: time O(N M) and memory O(N L) plus one block per
worker. The bank can be a seeded random sample of the batch (:func:`reference_sample`), a folder
of known-good parts, or the last images judged normal in a stream.

The scoring rule is MuSc's: for each patch, the nearest-patch distance to each reference image,
sorted, averaged over the ranks [floor(lower M'), floor(upper M')) where M' is the number of
references the query is compared with (M, or M - 1 when the query is itself in the bank: an image
never counts as its own reference). Only the smallest ``floor(upper M')`` distances are needed,
so each query keeps a running top-k of its per-reference nearest similarities, reduced block by
block; the N x M x L table is never built. With references = the batch and every image excluded
from its own row, the result is exact mutual scoring.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch

from defectscope.errors import ConfigError
from defectscope.methods.mutual import (
    MuScScores,
    _check_interval,
    _drop_one_interval_mean,
    _interval_reduce,
    interval_bounds,
    similarities_to_distances,
    to_finest_grid,
)
from defectscope.progress import Progress

BLOCK_BYTES = 8 * 2**20
"""Size of one similarity block (query patches x reference patches of a few references)."""
BUFFER_ROWS = 256
"""Per-reference similarity rows collected before the running top-k is reduced again."""


def reference_sample(n: int, m: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random sample of ``m`` of ``n`` images (all when m >= n)."""
    if m < 1:
        raise ConfigError(f"a reference bank needs at least 1 image, got max_references={m}")
    if m >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))


def use_bank(n: int, max_references: int | None) -> bool:
    """True when a sampled bank of ``max_references`` is cheaper than exact mutual scoring.

    Exact scoring costs N (N - 1) / 2 block products, the bank N M: the bank takes over once
    N - 1 > 2 M. ``None`` keeps exact mutual scoring for every batch size.
    """
    return max_references is not None and n - 1 > 2 * max_references


def self_positions(queries: Sequence[int], references: Sequence[int]) -> torch.Tensor:
    """For each query index, its position among the reference indices, or -1."""
    where = {int(r): position for position, r in enumerate(references)}
    return torch.tensor([where.get(int(q), -1) for q in queries], dtype=torch.long)


def reference_counts(num_queries: int, num_references: int, self_index: torch.Tensor | None) -> torch.Tensor:
    """Number of references each query is compared with (M, or M - 1 when it is in the bank)."""
    counts = torch.full((num_queries,), num_references, dtype=torch.long)
    if self_index is not None:
        counts -= (self_index >= 0).long()
    if num_queries and int(counts.min()) < 1:
        raise ConfigError("a reference bank needs at least one reference other than the query itself")
    return counts


def _query_topk(query: torch.Tensor, references: torch.Tensor, k: int, skip: int) -> torch.Tensor:
    """The k largest per-reference nearest similarities of each patch of one query image.

    ``query`` (L, C), ``references`` (M, L', C); reference ``skip`` (or none if -1) is left out.
    Returns (k, L), descending along dim 0 (rows beyond the available references are -inf).
    """
    m, length_r, channels = references.shape
    length = query.shape[0]
    step = max(1, BLOCK_BYTES // (4 * length * length_r))
    buffer = torch.full((k + BUFFER_ROWS + step, length), -math.inf, device=references.device)
    filled = k
    for start in range(0, m, step):
        block = references[start : start + step]
        b = block.shape[0]
        sims = (query @ block.reshape(b * length_r, channels).T).view(length, b, length_r).amax(dim=2).T
        buffer[filled : filled + b] = sims
        if start <= skip < start + b:
            buffer[filled + skip - start] = -math.inf
        filled += b
        if filled >= k + BUFFER_ROWS:
            buffer[:k] = torch.topk(buffer[:filled], k, dim=0, sorted=False).values
            filled = k
    return torch.topk(buffer[:filled], k, dim=0, sorted=True).values


def _each_query(n: int, one: Callable[[int], None], device: torch.device, workers: int | None, progress: Callable[[int], None] | None) -> None:
    """Run ``one(i)`` for every query i, spread over ``workers`` threads on the CPU (each running
    single-threaded torch ops), calling ``progress(queries_done)`` as they finish."""
    workers = (workers or torch.get_num_threads()) if device.type == "cpu" else 1
    if workers <= 1:
        for i in range(n):
            one(i)
            if progress is not None:
                progress(i + 1)
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for done, _ in enumerate(pool.map(one, range(n)), start=1):
                if progress is not None:
                    progress(done)
    finally:
        torch.set_num_threads(previous)


def _check_shapes(queries: torch.Tensor, references: torch.Tensor) -> None:
    if queries.ndim != 3 or references.ndim != 3 or queries.shape[2] != references.shape[2]:
        raise ConfigError(
            f"bank scoring needs (N, L, C) queries and (M, L, C) references with the same C, got "
            f"{tuple(queries.shape)} and {tuple(references.shape)}"
        )


def nearest_topk(
    queries: torch.Tensor,
    references: torch.Tensor,
    k: int,
    *,
    self_index: torch.Tensor | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(Nq, L, C) queries vs (M, L', C) references -> (Nq, k, L) top-k nearest similarities.

    For every query patch the nearest-patch similarity to each reference image is computed
    block by block and only the k largest are kept (descending). ``self_index[i]`` is the
    position of query i among the references (left out), or -1. Queries are spread over
    ``workers`` threads (default: torch's thread count), each running single-threaded torch
    ops; ``progress(queries_done)`` is called as they finish. Partial results over disjoint
    reference chunks combine with :func:`merge_topk`.
    """
    _check_shapes(queries, references)
    n = queries.shape[0]
    skips = self_index.tolist() if self_index is not None else [-1] * n
    r = references.float().contiguous()
    out = torch.empty(n, k, queries.shape[1], device=r.device)

    def one(i: int) -> None:
        out[i] = _query_topk(queries[i].float().to(r.device), r, k, skips[i])

    _each_query(n, one, r.device, workers, progress)
    return out


def merge_topk(first: torch.Tensor, second: torch.Tensor, k: int) -> torch.Tensor:
    """Combine two (Nq, k_i, L) top-k similarity tensors over disjoint references into one."""
    both = torch.cat([first, second], dim=1)
    return torch.topk(both, min(k, both.shape[1]), dim=1, sorted=True).values


def topk_to_scores(topk: torch.Tensor, counts: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """(Nq, k, L) descending top-k similarities -> (Nq, L) interval-mean distances.

    Query i uses the ranks [floor(lower M_i), floor(upper M_i)) of its ascending distances,
    M_i = ``counts[i]`` references (see :func:`defectscope.methods.mutual.interval_bounds`).
    """
    distances = similarities_to_distances(topk)
    scores = torch.empty(topk.shape[0], topk.shape[2], device=topk.device)
    for count in torch.unique(counts).tolist():
        rows = counts == count
        start, end = interval_bounds(int(count), lower, upper)
        scores[rows] = distances[rows, start:end].mean(dim=1)
    return scores


def topk_size(num_references: int, lower: float, upper: float) -> int:
    """How many nearest similarities per patch the interval of M references needs."""
    return interval_bounds(num_references, lower, upper)[1]


def bank_scores(
    queries: torch.Tensor,
    references: torch.Tensor,
    lower: float = 0.0,
    upper: float = 0.3,
    *,
    self_index: torch.Tensor | None = None,
    nearest: torch.Tensor | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Score (Nq, L, C) query features against (M, L, C) reference features -> (Nq, L).

    MuSc's interval mean over the references (see the module docstring); ``self_index``
    marks queries that are themselves references (position in ``references``, else -1).
    ``nearest`` (Nq, m) long: query i is compared with the references at ``nearest[i]`` only
    (m of them, none of them itself; see :func:`nearest_references`), and the interval applies
    to those m; ``self_index`` is then not used.
    Each query's top-k is reduced to its scores as soon as it is done, so memory stays
    O(Nq L) beside the features (not the (Nq, k, L) top-k of the whole batch: at the interval
    [0.5, 1) k is every reference, 1.6 GB per feature set for 2,624 elpv cells and 200
    references). Values equal :func:`topk_to_scores` of :func:`nearest_topk`.
    """
    _check_shapes(queries, references)
    n = queries.shape[0]
    r = references.float().contiguous()
    scores = torch.empty(n, queries.shape[1], device=r.device)
    if nearest is not None:
        if nearest.ndim != 2 or nearest.shape[0] != n or nearest.shape[1] < 1:
            raise ConfigError(f"nearest references need one row of at least one index per query, got {tuple(nearest.shape)}")
        chosen = nearest.to(r.device)
        bounds = interval_bounds(nearest.shape[1], lower, upper)

        def plan(i: int) -> tuple[torch.Tensor, int, int, tuple[int, int]]:
            return r[chosen[i]], bounds[1], -1, bounds
    else:
        counts = reference_counts(n, references.shape[0], self_index)
        k = topk_size(references.shape[0], lower, upper)
        skips = self_index.tolist() if self_index is not None else [-1] * n
        by_count = {int(c): interval_bounds(int(c), lower, upper) for c in torch.unique(counts).tolist()}

        def plan(i: int) -> tuple[torch.Tensor, int, int, tuple[int, int]]:
            return r, k, skips[i], by_count[int(counts[i])]

    def one(i: int) -> None:
        compared, k_i, skip, (start, end) = plan(i)
        top = _query_topk(queries[i].float().to(r.device), compared, k_i, skip)
        scores[i] = similarities_to_distances(top[start:end]).mean(dim=0)

    _each_query(n, one, r.device, workers, progress)
    return scores


def nearest_references(embeddings: torch.Tensor, chosen: torch.Tensor, count: int) -> torch.Tensor:
    """(N, min(count, M')) positions in ``chosen`` of the references nearest to each image by the
    cosine of the global embeddings, the image itself left out (M' = M, or M - 1 when an image
    of the batch is itself a reference: every row has the same length)."""
    e = torch.nn.functional.normalize(embeddings.float(), dim=1)
    similarity = e @ e[chosen].T
    own = torch.arange(e.shape[0])[:, None] == chosen[None, :]
    similarity[own] = -math.inf
    usable = chosen.shape[0] - (1 if bool(own.any()) else 0)
    if usable < 1:
        raise ConfigError("a reference bank needs at least one reference other than the query itself")
    return torch.topk(similarity, min(count, usable), dim=1).indices


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
    end = interval_bounds(m - 1 if drop_one else m, lower, upper)[1] + (1 if drop_one else 0)
    distances = similarities_to_distances(nearest_topk(query, reference, min(end, m), workers=1))
    return _drop_one_interval_mean(distances, lower, upper, m) if drop_one else _interval_reduce(distances, m, lower, upper)


COST_CHANNEL_OFFSET = 40
"""Cost model of one query-reference product, in work units L L' (C + 40): the matrix product
grows with C, the two reductions do not (measured: C = 112 costs 1.8x C = 40 at equal L,
docs/BENCHMARKS.md, mutual-scoring speed)."""


def set_cost(feature_set: torch.Tensor) -> int:
    """Work units of comparing one image with one reference in this (N, L, C) feature set."""
    _, length, channels = feature_set.shape
    return length * length * (channels + COST_CHANNEL_OFFSET)


def sampled_patch_scores(detector, images: Sequence[np.ndarray], progress: Progress | None = None):
    """MuSc patch scores of a large batch against a seeded sample of its own images.

    The hook :meth:`MuSc.patch_scores` takes when :func:`use_bank` says so: features are
    computed chunk by chunk (:mod:`defectscope.methods.featurestore`), every image is scored
    against ``max_references`` images drawn with ``reference_seed`` (a sampled image leaves
    itself out) with the MSM interval [lower, upper), or the batch's own interval
    (:func:`defectscope.methods.pose.bank_looks`: by default ``looks_interval`` when the mean
    pairwise cosine of all the batch's global embeddings is below ``looks_gate`` *and* they form
    separated groups, :func:`defectscope.methods.pose.look_groups`; with ``looks_bank`` the
    cosine alone). With ``nearest_images`` = m, or ``looks_nearest`` = m when that decision finds
    several looks, each image is compared with only the m references nearest to it by global embedding
    (:func:`nearest_references`; m below the bank size). The "scoring" progress
    counts equal work: one unit is one image compared with one reference in the cheapest
    feature set, the others weighted by :func:`set_cost`.
    """
    from defectscope.methods.featurestore import chunked_feature_sets
    from defectscope.methods.pose import bank_looks

    cfg = detector.config
    n = len(images)
    features = chunked_feature_sets(
        detector.backbone, images, cfg.degrees, cfg.batch_size, progress, native_grids=cfg.native_grids, store=cfg.feature_store,
        shape=detector.input_shape(images),
    )
    lower, upper, facts = bank_looks(cfg, features.embeddings)
    chosen = torch.from_numpy(reference_sample(n, cfg.max_references, cfg.reference_seed))
    self_index = self_positions(range(n), chosen.tolist())
    nearest = None
    count = cfg.nearest_images
    if count is None and facts.get("several_looks") and getattr(cfg, "looks_nearest", None) is not None:
        count = cfg.looks_nearest
    if count is not None and count < len(chosen) - 1:
        nearest = nearest_references(features.embeddings, chosen, count)
        facts = {**facts, "nearest_references": int(nearest.shape[1])}
    compared = len(chosen) if nearest is None else nearest.shape[1]
    cheapest = min(set_cost(s) for s in features.sets)
    costs = [max(1, round(set_cost(s) / cheapest)) * compared for s in features.sets]
    total = sum(costs) * n
    device = detector.backbone.device
    accumulated = torch.zeros(n, features.grid[0] * features.grid[1], device=device)
    for index, feature_set in enumerate(features.sets):
        report = None
        if progress is not None:
            base = sum(costs[:index]) * n
            report = lambda done, base=base, cost=costs[index]: progress("scoring", base + done * cost, total)  # noqa: E731
        scores = bank_scores(
            feature_set, feature_set[chosen].to(device), lower, upper, self_index=self_index, nearest=nearest, progress=report
        )
        accumulated += to_finest_grid(scores, features.grid)
    return MuScScores(accumulated / len(features.sets), features.grid, features.embeddings, facts=facts)
