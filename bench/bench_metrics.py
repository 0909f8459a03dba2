"""Benchmark defectscope.metrics.pixel_metrics on ~1e8 pixels, with scikit-learn for scale.

Run: ``python bench/bench_metrics.py`` (defaults: 400 maps of 500x500 float32, median of 3).
Prints markdown table rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np
import torch
from scipy import ndimage

from defectscope.metrics import image_metrics, pixel_metrics


def synthetic_data(n: int, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 anomaly maps (smoothed noise plus bumps on defects) and blob masks; 1 in 4 images clean."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    maps = np.empty((n, h, w), dtype=np.float32)
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        noise = rng.standard_normal((h // 4, w // 4)).astype(np.float32)
        maps[i] = ndimage.zoom(noise, (h / noise.shape[0], w / noise.shape[1]), order=1)[:h, :w]
        maps[i] += 0.3 * rng.standard_normal((h, w)).astype(np.float32)
        if i % 4 == 3:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            ry, rx = rng.integers(4, h // 8), rng.integers(4, w // 8)
            blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            masks[i] |= blob
            maps[i][blob] += np.float32(rng.uniform(0.5, 2.0))
    return maps, masks


def timed(fn, repeats: int, digits: int = 2) -> str:
    """Median wall time and median process CPU time (all threads) of ``repeats`` calls, formatted."""
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return f"{statistics.median(walls):.{digits}f} | {statistics.median(cpus):.{digits}f}"


def peak_extra_memory(fn) -> int:
    """Peak bytes allocated (numpy arrays included) during one call, beyond what existed before."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-images", type=int, default=400)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sklearn-pixels", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sklearn import __version__ as sk_version
    from sklearn.metrics import average_precision_score, roc_auc_score

    maps, masks = synthetic_data(args.n_images, args.size, args.size, args.seed)
    n_pix = maps.size
    print(
        f"<!-- python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"scikit-learn {sk_version}; {n_pix:,} pixels, {masks.mean():.2%} defective, "
        f"{len(np.unique(maps)):,} distinct scores; load average at start: {os.getloadavg()} -->"
    )
    print("| case | pixels | median wall (s) | median CPU (s) | peak extra memory |")
    print("|---|---:|---:|---:|---:|")

    result: dict = {}

    def run_full() -> None:
        result.update(pixel_metrics(maps, masks))

    t_full = timed(run_full, args.repeats)
    mem_full = peak_extra_memory(run_full)
    print(f"| defectscope pixel_metrics (AUROC, AP, F1-max, AUPRO) | {n_pix:,} | {t_full} | {mem_full / 2**30:.2f} GiB |")

    k = max(1, min(args.n_images, args.sklearn_pixels // (args.size * args.size)))
    sub_maps, sub_masks = maps[:k], masks[:k]
    n_sub = sub_maps.size
    t_sub = timed(lambda: pixel_metrics(sub_maps, sub_masks), args.repeats)
    print(f"| defectscope pixel_metrics (AUROC, AP, F1-max, AUPRO) | {n_sub:,} | {t_sub} | |")

    y, s = sub_masks.ravel(), sub_maps.ravel()
    sk: dict = {}

    def run_sklearn() -> None:
        sk["auroc"] = roc_auc_score(y, s)
        sk["ap"] = average_precision_score(y, s)

    t_sk = timed(run_sklearn, args.repeats)
    print(f"| scikit-learn roc_auc_score + average_precision_score | {n_sub:,} | {t_sk} | |")

    ours = pixel_metrics(sub_maps, sub_masks)
    assert abs(ours["pixel_auroc"] - sk["auroc"]) < 1e-6 and abs(ours["pixel_ap"] - sk["ap"]) < 1e-6

    tied = np.round(maps * 32) / 32
    t_tied = timed(lambda: pixel_metrics(tied, masks), args.repeats)
    print(f"| defectscope pixel_metrics, scores rounded to 1/32 (heavy ties) | {n_pix:,} | {t_tied} | |")
    del tied

    scores = maps.reshape(args.n_images, -1).max(axis=1)
    labels = masks.reshape(args.n_images, -1).any(axis=1)
    t_img = timed(lambda: image_metrics(scores, labels), args.repeats, digits=4)
    print(f"| defectscope image_metrics | {args.n_images:,} images | {t_img} | |")
    print(f"<!-- load average at end: {os.getloadavg()} -->")
    print("<!-- full-size result: " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()) + " -->")


if __name__ == "__main__":
    main()
