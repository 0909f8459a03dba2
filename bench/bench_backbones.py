"""Feature-extraction throughput of the embedded EfficientNet-Lite backbones on CPU.

Times ``Backbone.extract`` on a preprocessed batch (preprocessing excluded), one warm-up run and
then the median of ``--runs`` timed runs. Reports wall-clock images/s and CPU ms per image (process
CPU time of all threads). ``--hf NAME ...`` also times Hugging Face ViTs built with their published
architecture and random weights (same compute as the real weights, which need no download here).

Reproduce: ``python bench/bench_backbones.py --hf dinov2-vits14`` (defaults: batch 8, sizes
224 320 448, 2 threads; HF models at their default size, or ``--hf-sizes``, with batch 2).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from defectscope.backbones import Backbone, HFBackbone, get_backbone
from defectscope.backbones.efficientnet import VARIANTS
from defectscope.backbones.hf import architecture_config


def time_extract(backbone: Backbone, batch_size: int, runs: int) -> dict:
    """Median wall and CPU time of ``extract`` on one preprocessed batch (after a warm-up)."""
    generator = np.random.default_rng(0)
    size = backbone.image_size
    images = [generator.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch_size)]
    batch = backbone.preprocess(images)
    features = backbone.extract(batch)
    wall_times, cpu_times = [], []
    for _ in range(runs):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        backbone.extract(batch)
        wall_times.append(time.perf_counter() - wall_start)
        cpu_times.append(time.process_time() - cpu_start)
    wall = statistics.median(wall_times)
    return {
        "name": backbone.name,
        "image_size": size,
        "batch": batch_size,
        "layers": "+".join(features.layer_names),
        "grid": "x".join(str(v) for v in features.grid),
        "images_per_s": batch_size / wall,
        "ms_per_image": 1000 * wall / batch_size,
        "cpu_ms_per_image": 1000 * statistics.median(cpu_times) / batch_size,
        "spread": (max(wall_times) - min(wall_times)) / wall,
    }


def print_row(row: dict) -> None:
    """One markdown table row."""
    print(
        f"| {row['name']} | {row['image_size']} | {row['batch']} | {row['layers']} | {row['grid']} | "
        f"{row['images_per_s']:.1f} | {row['ms_per_image']:.0f} | {row['cpu_ms_per_image']:.0f} | "
        f"{100 * row['spread']:.0f}% |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320, 448])
    parser.add_argument("--variants", nargs="*", default=sorted(VARIANTS))
    parser.add_argument("--layers", nargs="+", default=None, help="e.g. stride8 stride16 (default: backbone default)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hf", nargs="*", default=[], help="HF backbones to time with random weights, e.g. dinov2-vits14")
    parser.add_argument("--hf-batch-size", type=int, default=2)
    parser.add_argument("--hf-sizes", type=int, nargs="+", default=None, help="HF input sizes (default: each model's own)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"# torch {torch.__version__}, {args.threads} threads, median of {args.runs} runs after a warm-up")
    print(f"# {platform.machine()}, {os.cpu_count()} logical CPUs, load average at start {os.getloadavg()[0]:.1f}")
    print("| backbone | input | batch | layers | grid | images/s | ms/image (wall) | CPU ms/image | run spread |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        for size in args.sizes:
            backbone = get_backbone(name, image_size=size, layers=args.layers)
            print_row(time_extract(backbone, args.batch_size, args.runs))
    for name in args.hf:
        for size in args.hf_sizes or [None]:
            backbone = HFBackbone(name, config=architecture_config(name), image_size=size)
            print_row(time_extract(backbone, args.hf_batch_size, args.runs))
    print(f"# load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
