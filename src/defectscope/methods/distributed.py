"""MuSc on a Dask cluster: feature extraction and the pairwise blocks as Dask tasks.

``MuScConfig(scheduler="dask")`` starts a ``LocalCluster`` on this machine for the run;
``scheduler="tcp://HOST:PORT"`` uses a running cluster (its workers need defectscope and the
backbone weights installed). The graph, for C chunks of ``chunk`` images:

1. ``features``: one task per chunk (images in, LNAMD feature sets and embeddings out); the
   feature sets stay on the workers.
2. scoring, per query chunk: with a reference bank (large batches, see
   :func:`defectscope.methods.bank.use_bank`) one task gathers the sampled references from the
   chunks and every query chunk is scored against it in one task; for exact mutual scoring
   every (query chunk, reference chunk) block is a task that keeps each patch's top-k
   nearest similarities, merged pairwise over the reference chunks (a tree of ``merge`` tasks).
3. ``finish``: per query chunk the interval mean, brought to the finest grid and averaged over
   the sets: (chunk, L) patch scores, the only data that comes back besides the embeddings.

Worker processes started by Dask's nanny run torch single-threaded (it sets OMP_NUM_THREADS=1);
one task uses one core. Maps, smoothing and RsCIN then run in this process as in the single-process run; the scores
equal it up to float rounding (the exact run reduces each pair's block in both directions).
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

from defectscope.errors import ConfigError
from defectscope.progress import Progress

CHUNK = 64
"""Images per feature task and per query block."""

_WORKER_MODELS: dict = {}


@contextmanager
def dask_client(scheduler: str, workers: int | None = None) -> Iterator:
    """A ``distributed.Client``: a LocalCluster for "dask", else the cluster at the address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--scheduler needs the `dask` and `distributed` packages: pip install \"defectscope[dask]\"") from None
    if scheduler == "dask":
        cluster = LocalCluster(n_workers=workers or torch.get_num_threads(), threads_per_worker=1, processes=True, dashboard_address=None)
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    if not scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        raise ConfigError(f"--scheduler '{scheduler}' is not 'dask' or a scheduler address such as tcp://HOST:8786")
    try:
        client = Client(scheduler, timeout="10s")
    except OSError as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at '{scheduler}': {exc}") from None
    with client:
        yield client


def _worker_model(detector_class, config):
    """The detector (``detector_class(config)``, with its backbone) of this worker process, built
    once per config. The class travels with the task (pickled by reference), so this module never
    imports the detector that calls it."""
    if config not in _WORKER_MODELS:
        _WORKER_MODELS.clear()
        _WORKER_MODELS[config] = detector_class(config)
    return _WORKER_MODELS[config]


def extract_chunk(
    detector_class, config, images: Sequence[np.ndarray], shape: tuple[int, int] | None = None
) -> tuple[list[torch.Tensor], torch.Tensor, tuple[int, int]]:
    """Task: LNAMD feature sets (one (n, L, C) per set), embeddings and grid of a chunk, at the
    whole batch's input ``shape`` (decided once by the client, so every chunk has one grid)."""
    from defectscope.methods.featurestore import chunked_feature_sets

    musc = _worker_model(detector_class, config)
    features = chunked_feature_sets(
        musc.backbone, images, config.degrees, config.batch_size, native_grids=config.native_grids, store=None, shape=shape
    )
    return features.sets, features.embeddings, features.grid


def gather_rows(positions: Sequence[np.ndarray], *chunks) -> list[torch.Tensor]:
    """Task: the bank, i.e. the rows ``positions[c]`` of each chunk's sets, concatenated."""
    per_set = zip(*(chunk[0] for chunk in chunks))
    return [torch.cat([s[torch.as_tensor(p, dtype=torch.long)] for s, p in zip(sets, positions)]) for sets in per_set]


def block_topk(queries, references, k: int, self_index: torch.Tensor) -> list[torch.Tensor]:
    """Task: per set, the (n, k, L) top-k nearest similarities of a query chunk in a reference block.

    ``queries`` is a feature chunk (sets, embeddings, grid); ``references`` a chunk or a bank
    (list of sets)."""
    from defectscope.methods.bank import nearest_topk

    bank = references[0] if isinstance(references, tuple) else references
    return [nearest_topk(q, r, min(k, r.shape[0]), self_index=self_index, workers=1) for q, r in zip(queries[0], bank)]


def merge(first: list[torch.Tensor], second: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Task: merge two per-set top-k lists over disjoint references."""
    from defectscope.methods.bank import merge_topk

    return [merge_topk(a, b, k) for a, b in zip(first, second)]


def finish(topk: list[torch.Tensor], counts: torch.Tensor, lower: float, upper: float, grid: tuple[int, int]) -> torch.Tensor:
    """Task: top-k similarities per set -> (n, L) patch scores averaged over the sets."""
    from defectscope.methods.bank import topk_to_scores
    from defectscope.methods.mutual import to_finest_grid

    return torch.stack([to_finest_grid(topk_to_scores(t, counts, lower, upper), grid) for t in topk]).mean(dim=0)


def _embeddings(chunk) -> torch.Tensor:
    return chunk[1]


def _tree_merge(client, parts: list, k: int):
    while len(parts) > 1:
        pairs = [client.submit(merge, parts[i], parts[i + 1], k, pure=False) for i in range(0, len(parts) - 1, 2)]
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def dask_patch_scores(
    detector,
    images: Sequence[np.ndarray],
    progress: Progress | None = None,
    *,
    chunk: int | None = None,
    timings: dict | None = None,
):
    """MuSc patch scores of ``images`` computed on the Dask cluster of ``detector.config.scheduler``.

    Same rule as :meth:`MuSc.patch_scores` (exact below the bank size, the seeded bank above);
    ``chunk`` images per task (default :data:`CHUNK`);
    ``timings`` (if given) receives the wall seconds of the feature and scoring phases.
    """
    from distributed import as_completed

    from defectscope.methods.bank import reference_counts, reference_sample, self_positions, topk_size, use_bank
    from defectscope.methods.mutual import MuScScores

    cfg = detector.config
    chunk = chunk or CHUNK
    task_config = dataclasses.replace(cfg, scheduler=None)
    n = len(images)
    starts = list(range(0, n, chunk))
    bounds = [(s, min(s + chunk, n)) for s in starts]
    with dask_client(cfg.scheduler) as client:
        started = time.perf_counter()
        shape = detector.input_shape(images)  # the batch's aspect, as the exact path keeps it
        feature_futures = [
            client.submit(extract_chunk, type(detector), task_config, list(images[a:b]), shape, pure=False) for a, b in bounds
        ]
        sizes = {future.key: b - a for future, (a, b) in zip(feature_futures, bounds)}
        extracted = 0
        for future in as_completed(feature_futures):
            extracted += sizes[future.key]
            if progress is not None:
                progress("features", extracted, n)
        first_sets, _, grid = feature_futures[0].result()
        featured = time.perf_counter()
        if use_bank(n, cfg.max_references):
            chosen = reference_sample(n, cfg.max_references, cfg.reference_seed)
            positions = [chosen[(chosen >= a) & (chosen < b)] - a for a, b in bounds]
            bank = client.submit(gather_rows, positions, *feature_futures, pure=False)
            reference_ids = chosen.tolist()
            blocks = [[(bank, self_positions(range(a, b), reference_ids))] for a, b in bounds]
        else:
            reference_ids = list(range(n))
            blocks = [[(feature_futures[j], self_positions(range(a, b), range(c, d))) for j, (c, d) in enumerate(bounds)] for a, b in bounds]
        k = topk_size(len(reference_ids), cfg.lower, cfg.upper)
        finished = []
        for (a, b), query, references in zip(bounds, feature_futures, blocks):
            parts = [client.submit(block_topk, query, ref, k, skip, pure=False) for ref, skip in references]
            counts = reference_counts(b - a, len(reference_ids), self_positions(range(a, b), reference_ids))
            finished.append(client.submit(finish, _tree_merge(client, parts, k), counts, cfg.lower, cfg.upper, grid, pure=False))
        results: dict = {}
        for done, future in enumerate(as_completed(finished), start=1):
            results[future.key] = future.result()
            if progress is not None:
                progress("scoring", done, len(finished))
        patch_scores = torch.cat([results[f.key] for f in finished])
        embeddings = torch.cat(client.gather([client.submit(_embeddings, f, pure=False) for f in feature_futures]))
        if timings is not None:
            timings.update(features=featured - started, scoring=time.perf_counter() - featured, sets=len(first_sets))
    return MuScScores(patch_scores, grid, embeddings)
