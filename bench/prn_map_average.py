"""Offline: the pixel metrics of the average of several PRN runs' maps, on maps saved by
``bench/bench_prn.py --suite --save-maps FILE.npz`` from runs on the same test images (the same
category and seed; the runs may differ in any other setting, the map size included).

Each run's detector maps (``maps``) are resized (bilinear) to each test image's own size, as the
benchmark's image protocol does, then averaged with equal weights; the pixel metrics are those of
``bench_prn.py`` (full-resolution masks). Each run alone is printed first, to check it repeats its
benchmark figure. Pixel metrics only: image scores and verdicts are not recomputed.

    python bench/prn_map_average.py A.npz B.npz [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from defectscope.metrics import pixel_metrics
from defectscope.report.atomic import atomic_write_text
from prn_maps import at_image_size, test_masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("maps", nargs="+", help=".npz files from bench_prn.py --save-maps (same test images)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    runs = [np.load(path) for path in args.maps]
    paths = runs[0]["paths"]
    for path, run in zip(args.maps[1:], runs[1:]):
        if not np.array_equal(run["paths"], paths):
            parser.error(f"{path} holds other test images than {args.maps[0]} (another seed or category?)")
    shapes, labels = runs[0]["shapes"], runs[0]["labels"]
    masks = test_masks(runs[0]["mask_paths"], shapes, labels)
    # each run's maps at each image's size, once (an npz member is read again on every access)
    resized = [at_image_size(run["maps"], shapes) for run in runs]
    average = [sum(maps) / len(runs) for maps in zip(*resized)]
    rows = []
    for name, maps in [*zip(args.maps, resized), ("average", average)]:
        row = {"maps": name, **pixel_metrics(maps, masks)}
        rows.append(row)
        print(f"{name}: P-AP {row['pixel_ap']:.3f}  P-AUROC {row['pixel_auroc']:.3f}  AUPRO {row['pixel_aupro']:.3f}", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps({"runs": args.maps, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
