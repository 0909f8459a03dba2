"""U-Flow fit time on a shared category: backbone features, flow training and the whole fit.

Reads the category's train/good images once, then fits the default U-Flow ``--repeats`` times
(``--epochs`` epochs each) and prints each run's seconds for the features (the frozen backbone
built and run over every training image), the rest of the fit (flow training and the held-out
calibration) and the total, then the medians: wall-clock seconds and this process's CPU seconds
(with ``--threads 1`` the CPU seconds are the steadier figure on a machine other jobs share).
The images are decoded before the clock starts.

    PYTHONPATH=src python bench/bench_uflow_fit.py --category mvtec_bottle --epochs 1 --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from defectscope.data.io import read_image
from defectscope.data.layouts import mvtec_category
from defectscope.methods.uflow import UFlow, UFlowConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="mvtec_bottle")
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    category = mvtec_category(Path(args.shared) / args.category)
    images = [read_image(s.path) for s in category.train]
    config = UFlowConfig(epochs=args.epochs, device="cpu")
    rows = []
    for repeat in range(args.repeats):
        marks: dict[str, tuple[float, float]] = {}
        start = (time.perf_counter(), time.process_time())

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "features" and done == total:
                marks["features"] = (time.perf_counter() - start[0], time.process_time() - start[1])

        UFlow(config).fit(images, progress=progress)
        total = (time.perf_counter() - start[0], time.process_time() - start[1])
        features = marks["features"]
        row = (*features, total[0] - features[0], total[1] - features[1], *total)
        rows.append(row)
        print(f"run {repeat + 1}: " + _describe(row), flush=True)
    medians = tuple(statistics.median(column) for column in zip(*rows))
    print(f"{args.category}, {len(images)} images, {args.epochs} epoch(s), {args.threads} thread(s), "
          f"median of {len(rows)}: " + _describe(medians))


def _describe(row: tuple[float, ...]) -> str:
    """(wall, cpu) seconds of features, training and the whole fit -> one line."""
    return (f"features {row[0]:.1f} s ({row[1]:.1f} s CPU), training {row[2]:.1f} s ({row[3]:.1f} s CPU), "
            f"fit {row[4]:.1f} s ({row[5]:.1f} s CPU)")


if __name__ == "__main__":
    main()
