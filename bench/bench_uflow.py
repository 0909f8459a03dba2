"""Benchmark U-Flow on the shared MVTec bottle and hazelnut_toy categories (CPU).

Trains on train/good with the default UFlowConfig (fixed epoch count, no test data used for
any choice), then reports pixel AUROC, mIoU at the automatic NFA threshold, mIoU at the oracle
threshold, image AUROC and the training time (feature extraction + flow training).

    PYTHONPATH=src python bench/bench_uflow.py [--categories mvtec_bottle hazelnut_toy] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from defectscope.data.io import read_image, read_mask
from defectscope.data.layouts import mvtec_category
from defectscope.methods.uflow import UFlow, UFlowConfig, iou_auto, iou_oracle_threshold
from defectscope.metrics import image_metrics, pixel_metrics

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Ground-truth mask -> (size, size) bool, nearest-neighbour."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((size, size), Image.Resampling.NEAREST)) > 127


def run_category(root: Path, config: UFlowConfig) -> dict[str, object]:
    """Train and evaluate one category; returns the metrics row."""
    category = mvtec_category(root)
    train_images = [read_image(s.path) for s in category.train]
    start = time.perf_counter()
    model = UFlow(config)

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "epoch" and (done % 10 == 0 or done == total):
            print(f"  {root.name}: epoch {done}/{total} loss {model.history[-1]:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)

    model.fit(train_images, progress=progress)
    train_seconds = time.perf_counter() - start
    del train_images
    test_images = [read_image(s.path) for s in category.test]
    start = time.perf_counter()
    result = model.predict(test_images, [str(s.path) for s in category.test])
    predict_seconds = time.perf_counter() - start
    size = config.image_size
    gts = np.stack([
        _resize_mask(read_mask(s.mask_path), size) if s.mask_path is not None else np.zeros((size, size), bool)
        for s in category.test
    ])
    labels = np.array([s.label for s in category.test])
    pixel = pixel_metrics(result.anomaly_maps, gts)
    image = image_metrics(result.image_scores, labels)
    miou_auto = iou_auto(result.masks, gts)
    miou_oracle, oracle_threshold = iou_oracle_threshold(result.anomaly_maps, gts)
    return {
        "category": root.name,
        "train_images": len(category.train),
        "test_images": len(category.test),
        "pixel_auroc": pixel["pixel_auroc"],
        "pixel_aupro": pixel["pixel_aupro"],
        "image_auroc": image["image_auroc"],
        "miou_auto": miou_auto,
        "miou_oracle": miou_oracle,
        "oracle_threshold": oracle_threshold,
        "auto_over_oracle": miou_auto / miou_oracle if miou_oracle > 0 else None,
        "masks_on_good_images": int(sum(result.masks[i].any() for i in range(len(labels)) if labels[i] == 0)),
        "train_seconds": train_seconds,
        "predict_seconds": predict_seconds,
        "final_loss": model.history[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=["mvtec_bottle", "hazelnut_toy"])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--nfa", default=None, choices=["region", "block"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = UFlowConfig()
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    if args.nfa is not None:
        config = replace(config, nfa_method=args.nfa)
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print(f"config: {config.to_json()}")
    rows = []
    for name in args.categories:
        row = run_category(DATASETS / name, config)
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    header = "| category | P-AUROC | P-AUPRO | I-AUROC | mIoU auto | mIoU oracle | auto/oracle | train s |"
    print(header)
    print("|" + "---|" * 8)
    for r in rows:
        print(f"| {r['category']} | {r['pixel_auroc']:.4f} | {r['pixel_aupro']:.4f} | {r['image_auroc']:.4f} | "
              f"{r['miou_auto']:.4f} | {r['miou_oracle']:.4f} | {r['auto_over_oracle']:.3f} | "
              f"{r['train_seconds']:.0f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
