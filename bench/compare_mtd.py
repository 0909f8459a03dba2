"""MuSc or U-Flow on the exact test images of a PRN k-shot split of the magnetic-tile set.

    python bench/bench_prn.py --k 10            # writes bench/results/prn_mtd_k10_split.json
    python bench/compare_mtd.py bench/results/prn_mtd_k10_split.json --method musc
    python bench/compare_mtd.py bench/results/prn_mtd_k10_split.json --method uflow

MuSc: the whole test list is scored as one unlabeled batch with the default settings (no
training, labels unused). U-Flow: trained with its defaults on the normal training half of the
documented split (``magnetic_tile(root, seed=0).train``, the same normal tiles PRN uses), no
defective image. Metrics are computed as bench_prn.py computes PRN's: maps resized bilinearly to
each image's own size, pooled over all test pixels. For U-Flow the mean IoU of its automatic
masks and of the best single threshold on its maps (oracle) are added, at the model's 256 x 256
resolution (ground truth resized, nearest), as bench_uflow.py computes them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from defectscope.data import read_mask
from defectscope.methods.musc import MuSc, MuScConfig
from defectscope.metrics import image_metrics, pixel_metrics
from defectscope.pipeline import read_batch
from defectscope.report.overlay import resize_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", choices=["musc", "uflow"], default="musc")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="U-Flow setting, e.g. smoothing_sigma=0 or layers=stride8,stride16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = json.loads(args.split.read_text())
    test = split["test"]
    images, _, _ = read_batch([Path(t["image"]) for t in test])
    masks = [read_mask(t["mask"], expected_shape=img.shape[:2]) if t["mask"] else np.zeros(img.shape[:2], bool) for t, img in zip(test, images)]
    labels = np.array([t["label"] for t in test])
    started = time.perf_counter()
    if args.method == "musc":
        result = MuSc(MuScConfig()).predict(images)
    else:
        from defectscope.data import magnetic_tile
        from defectscope.methods.uflow import UFlow, UFlowConfig

        options = {}
        for item in args.option:
            name, _, value = item.partition("=")
            default = getattr(UFlowConfig(), name)
            options[name] = tuple(value.split(",")) if isinstance(default, tuple) else type(default)(value)

        root = Path(test[0]["image"]).parents[2]
        normal, _, _ = read_batch([s.path for s in magnetic_tile(root, seed=split["seed"]).train])
        result = UFlow(UFlowConfig(**options)).fit(normal).predict(images)
    seconds = time.perf_counter() - started
    maps = [resize_map(m, img.shape[:2]) for m, img in zip(result.anomaly_maps, images)]
    metrics = dict(image_metrics(result.image_scores, labels))
    metrics.update(pixel_metrics(maps, masks))
    if result.masks is not None:
        from PIL import Image

        from defectscope.segmentation_iou import iou_auto, iou_oracle_threshold

        size = result.anomaly_maps.shape[-2:]
        small = np.stack([
            np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)) > 127
            for m in masks
        ])
        metrics["miou_auto"] = iou_auto(result.masks, small)
        metrics["miou_oracle"] = iou_oracle_threshold(result.anomaly_maps, small)[0]
        metrics["masks_on_good_images"] = int(sum(m.any() for m, y in zip(result.masks, labels) if y == 0))
    print(json.dumps({"method": args.method, "options": args.option, "split": str(args.split), "k": split["k"], "test": len(test), "seconds": round(seconds, 1), **metrics}))


if __name__ == "__main__":
    main()
