"""Mutual-scoring speed: ours vs the per-ordered-pair cdist formulation vs the matmul bound.

All three run on the same random unit features in one process, interleaved, several repeats;
medians are reported. The bound is (number of unordered pairs) x (median time of one L x C by
C x L float32 matrix product), i.e. what one similarity block per unordered pair costs at this
machine's matrix-multiply throughput, with no reduction work at all. The block time is the
better of (a) one product with torch's intra-op threads and (b) one single-threaded product
divided by the number of threads (independent products on separate cores).

    python bench/bench_musc_speed.py --n 83 --length 784 --channels 112 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from defectscope.methods.musc import interval_bounds, mutual_scores


def per_ordered_pair_cdist(features: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """The published formulation: for each image, an (L, (N-1) L) cdist matrix, min per image."""
    n, length, channels = features.shape
    start, end = interval_bounds(n - 1, lower, upper)
    scores = torch.empty(n, length)
    for i in range(n):
        others = torch.cat([features[:i], features[i + 1 :]]).reshape(-1, channels)
        distances = torch.cdist(features[i], others).view(length, n - 1, length)
        nearest = distances.min(dim=2).values
        scores[i] = nearest.sort(dim=1).values[:, start:end].mean(dim=1)
    return scores


def block_time(features: torch.Tensor, threads: int, repeats: int = 50) -> float:
    """Best per-block time of the two ways of using ``threads`` cores (see module docstring)."""
    torch.set_num_threads(threads)
    pooled = _one_block(features, repeats)
    torch.set_num_threads(1)
    single = _one_block(features, repeats) / threads
    torch.set_num_threads(threads)
    return min(pooled, single)


def _one_block(features: torch.Tensor, repeats: int) -> float:
    a, b = features[0], features[1].T.contiguous()
    for _ in range(5):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=83)
    parser.add_argument("--length", type=int, default=784)
    parser.add_argument("--channels", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(args.n, args.length, args.channels, generator=gen), dim=-1)
    pairs = args.n * (args.n - 1) // 2
    ours, reference, bounds, ours_cpu, bound_cpu = [], [], [], [], []
    for _ in range(args.repeats):
        bounds.append(block_time(features, args.threads) * pairs)
        torch.set_num_threads(1)
        c = time.process_time()
        _one_block(features, 20)
        bound_cpu.append((time.process_time() - c) / 25 * pairs)
        torch.set_num_threads(args.threads)
        t, c = time.perf_counter(), time.process_time()
        fast = mutual_scores(features)
        ours.append(time.perf_counter() - t)
        ours_cpu.append(time.process_time() - c)
        if not args.skip_reference:
            t = time.perf_counter()
            slow = per_ordered_pair_cdist(features, 0.0, 0.3)
            reference.append(time.perf_counter() - t)
            err = (fast - slow).abs().max().item()
    flops = 2 * args.length * args.length * args.channels
    bound = statistics.median(bounds)
    print(f"N={args.n} L={args.length} C={args.channels} threads={args.threads} pairs={pairs}")
    print(f"matmul throughput on one block: {flops / (bound / pairs) / 1e9:.1f} GFLOP/s")
    print(f"bound (one block per unordered pair): {bound:.2f} s")
    print(f"CPU time: ours {statistics.median(ours_cpu):.2f} s, one single-threaded block per pair {statistics.median(bound_cpu):.2f} s -> {statistics.median(ours_cpu) / statistics.median(bound_cpu):.2f}x")
    print(f"ours: median {statistics.median(ours):.2f} s over {args.repeats} runs {['%.2f' % t for t in ours]} -> {statistics.median(ours) / bound:.2f}x the bound")
    if reference:
        ratio = statistics.median([r / o for r, o in zip(reference, ours)])
        print(f"per-ordered-pair cdist: median {statistics.median(reference):.2f} s -> ours is {ratio:.1f}x faster (median of per-run ratios); max |diff| {err:.2e}")


if __name__ == "__main__":
    main()
