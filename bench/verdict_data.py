"""Collect zero-shot verdict data once, so that verdict rules can be compared without rescoring.

    python bench/verdict_data.py --out /tmp/verdict-data [--only NAME ...] [--methods musc codegraph] [--backbone efficientnet-lite2]

Batches: the nine shared batches of bench/bench_verdicts.py, the demo's 60 elpv cells
(`defectscope demo`) and, with ``--elpv-all``, all 2,624 elpv cells (defective = the experts'
probability > 0). Each batch is scored with the method's default settings (it scores itself);
per batch an ``.npz`` holds the labels, the verdict statistic (map maxima), the ranking score
and the anomaly maps max-pooled by 4 (float16), so that any rule on maps or maxima can be
re-run offline (``bench/bench_verdicts.py --rules``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_verdicts import categories, detector  # noqa: E402

from defectscope.data import read_image  # noqa: E402
from defectscope.data.batch import read_batch  # noqa: E402
from defectscope.sample import elpv_category, elpv_root  # noqa: E402


def elpv_all() -> tuple[list[Path], np.ndarray]:
    root = elpv_root()
    paths, labels = [], []
    with open(root / "labels.csv", newline="") as handle:
        for row in csv.reader(handle, delimiter=" ", skipinitialspace=True):
            paths.append(root / row[0])
            labels.append(int(float(row[1]) > 0))
    return paths, np.array(labels)


def batches(names: list[str] | None, with_elpv: bool) -> dict[str, tuple[list[Path], np.ndarray]]:
    out = {}
    for name, (test, _) in categories().items():
        out[name] = ([s.path for s in test], np.array([s.label for s in test]))
    demo = elpv_category(60)
    out["demo_elpv60"] = ([s.path for s in demo.test], np.array([s.label for s in demo.test]))
    if with_elpv:
        out["elpv_all"] = elpv_all()
    return {k: v for k, v in out.items() if not names or k in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--methods", nargs="+", default=["musc"])
    parser.add_argument("--elpv-all", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbone", default=None, help="another backbone at its own default input (default: the method's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (paths, labels) in batches(args.only, args.elpv_all).items():
        images = read_batch(paths)[0]
        for method in args.methods:
            target = args.out / f"{name}__{method}.npz"
            if target.exists():
                continue
            started = time.perf_counter()
            result = detector(method, 0.05, args.backbone).predict(images)
            maps = torch.from_numpy(result.anomaly_maps).unsqueeze(1)
            pooled = F.max_pool2d(maps, 4).squeeze(1).numpy().astype(np.float16)
            np.savez_compressed(
                target.with_suffix(".tmp.npz"), labels=labels, maxima=np.asarray(result.verdict_scores),
                scores=result.image_scores, maps=pooled, paths=np.array([str(p) for p in paths]),
                threshold=result.threshold, rule=result.threshold_rule,
            )
            target.with_suffix(".tmp.npz").rename(target)
            print(f"{name} {method} n={len(images)} {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
