"""U-Flow fit time on a shared category: backbone features, flow training and the whole fit.

Reads the category's train/good images once, then fits the default U-Flow ``--repeats`` times
(``--epochs`` epochs each) and prints each run's seconds for the features (the frozen backbone
over every training image), the rest of the fit (flow training and the held-out calibration) and
the total, then the medians. The images are decoded before the clock starts.

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
        marks: dict[str, float] = {}
        start = time.perf_counter()

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "features" and done == total:
                marks["features"] = time.perf_counter() - start

        UFlow(config).fit(images, progress=progress)
        total = time.perf_counter() - start
        row = (marks.get("features", float("nan")), total - marks.get("features", float("nan")), total)
        rows.append(row)
        print(f"run {repeat + 1}: features {row[0]:.1f} s, training {row[1]:.1f} s, fit {row[2]:.1f} s", flush=True)
    medians = [statistics.median(column) for column in zip(*rows)]
    print(f"{args.category}, {len(images)} images, {args.epochs} epoch(s), {args.threads} thread(s), "
          f"median of {len(rows)}: features {medians[0]:.1f} s, training {medians[1]:.1f} s, fit {medians[2]:.1f} s")


if __name__ == "__main__":
    main()
