"""Per-image scores of U-Flow and PRN at a fixed seed, to check that a refactoring changes none.

Fits each trained method on a small shared category (default hazelnut_toy: 28 normal images,
enough for U-Flow's held-out share and PRN's cross-fitting) with short training, predicts its
test images and writes the image scores, maps and masks to an .npz. ``--compare OLD.npz`` prints
the largest differences against an earlier run and exits 1 when a score moved more than
``--tolerance``.

    PYTHONPATH=src python bench/trained_scores.py --out /tmp/before.npz
    PYTHONPATH=src python bench/trained_scores.py --out /tmp/after.npz --compare /tmp/before.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from defectscope.data.io import read_image, read_mask
from defectscope.data.layouts import mvtec_category
from defectscope.methods.prn import PRN, PRNConfig
from defectscope.methods.uflow import UFlow, UFlowConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def run(root: Path, epochs: int) -> dict[str, np.ndarray]:
    category = mvtec_category(root)
    normals = [read_image(s.path) for s in category.train]
    tests = [read_image(s.path) for s in category.test]
    defective = [s for s in category.test if s.mask_path is not None][:2]
    anomalies = [(read_image(s.path), read_mask(s.mask_path)) for s in defective]
    arrays: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    uflow = UFlow(UFlowConfig(epochs=epochs, device="cpu")).fit(normals)
    result = uflow.predict(tests)
    print(f"uflow: {time.perf_counter() - start:.1f} s", flush=True)
    arrays.update(uflow_scores=result.image_scores, uflow_maps=result.anomaly_maps,
                  uflow_masks=result.masks, uflow_verdicts=result.is_anomalous)
    start = time.perf_counter()
    prn = PRN(PRNConfig(epochs=epochs, samples_per_epoch=48, device="cpu")).fit(normals, anomalies)
    result = prn.predict(tests)
    print(f"prn: {time.perf_counter() - start:.1f} s", flush=True)
    arrays.update(prn_scores=result.image_scores, prn_maps=result.anomaly_maps, prn_masks=result.masks,
                  prn_verdicts=result.is_anomalous, prn_threshold=np.array([result.threshold]))
    return arrays


def compare(new: dict[str, np.ndarray], old_path: Path, tolerance: float) -> bool:
    old = dict(np.load(old_path))
    same = True
    for key in sorted(old):
        a, b = old[key], new[key]
        if a.dtype == bool:
            changed = int((a != b).sum())
            print(f"{key}: {changed} of {a.size} differ")
            same &= changed == 0
        else:
            diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
            print(f"{key}: max |difference| {diff:.3g}")
            same &= diff <= tolerance
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(SHARED / "hazelnut_toy"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", default=None)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arrays = run(Path(args.root), args.epochs)
    np.savez(args.out, **arrays)
    if args.compare:
        return 0 if compare(arrays, Path(args.compare), args.tolerance) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
