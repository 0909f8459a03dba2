"""PRN on the Magnetic Tile Defect set (MTD) with k labelled defects per class.

Split (deterministic, written to bench/results/prn_mtd_k<k>_split.json so other methods can be run
on the identical test images):
  * normal tiles: ``defectscope.data.magnetic_tile(root, seed=0)`` (half of MT_Free, seeded, for
    training; the other half in test); PRN trains on ``--max-normal`` of the training half, drawn
    with ``numpy.random.default_rng(seed)`` (all when 0);
  * defective tiles: ``kshot_split(category.test, k, seed)``: k per defect class to training, the
    rest in test.
Metrics (defectscope.metrics) on the test images: pixel AUROC / AP / AUPRO (FPR <= 0.3) with
maps resized (bilinear) to each image's own size, image AUROC, and the verdict's false-alarm rate
and recall (PRN's probability cut, calibrated on its held-back normal training tiles; cross-fitted
when ``--max-normal`` is below 190, see PRN's module docstring).

Run: python bench/bench_prn.py --k 10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from defectscope.data import magnetic_tile, read_image, read_mask
from defectscope.methods.prn import PRN, PRNConfig, kshot_split
from defectscope.metrics import image_metrics, pixel_metrics, verdict_metrics
from defectscope.report.overlay import resize_map

ROOT = Path(__file__).resolve().parents[1]


def _identities(paths: list[Path]) -> set[str]:
    found = set()
    for path in paths:
        found.add(str(Path(path).resolve()))
        found.add(hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "datasets" / "magnetic_tile"))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-normal", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=PRNConfig.epochs)
    parser.add_argument("--samples-per-epoch", type=int, default=PRNConfig.samples_per_epoch)
    parser.add_argument("--image-size", type=int, default=PRNConfig.image_size)
    parser.add_argument("--max-test", type=int, default=0, help="smoke runs only: cap the test set")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"prn_mtd_k{args.k}"

    category = magnetic_tile(args.root, seed=args.seed)
    train_anomalies, test_samples = kshot_split(category.test, k=args.k, seed=args.seed)
    normals = list(category.train)
    if args.max_normal and len(normals) > args.max_normal:
        chosen = np.sort(np.random.default_rng(args.seed).choice(len(normals), args.max_normal, replace=False))
        normals = [normals[int(i)] for i in chosen]
    if args.max_test:
        test_samples = test_samples[:: max(1, len(test_samples) // args.max_test)][: args.max_test]

    train_files = [s.path for s in normals] + [s.path for s in train_anomalies] + [s.mask_path for s in train_anomalies]
    test_files = [s.path for s in test_samples] + [s.mask_path for s in test_samples if s.mask_path is not None and s.label == 1]
    leaked = _identities(train_files) & _identities(test_files)
    if leaked:
        sys.exit(f"split leaks {len(leaked)} files or contents from test into training")
    split = {
        "dataset": "magnetic_tile",
        "description": __doc__.split("Metrics")[0].strip(),
        "k": args.k,
        "seed": args.seed,
        "train_normal": [str(s.path) for s in normals],
        "train_anomalies": [{"image": str(s.path), "mask": str(s.mask_path), "type": s.defect_type} for s in train_anomalies],
        "test": [
            {"image": str(s.path), "mask": str(s.mask_path) if s.mask_path else None, "label": s.label, "type": s.defect_type}
            for s in test_samples
        ],
    }
    (out / f"{tag}_split.json").write_text(json.dumps(split, indent=1))
    print(f"train: {len(normals)} normal + {len(train_anomalies)} defective; test: {len(test_samples)} "
          f"({sum(s.label == 1 for s in test_samples)} defective)", flush=True)

    config = PRNConfig(epochs=args.epochs, samples_per_epoch=args.samples_per_epoch, image_size=args.image_size, seed=args.seed)
    started = time.time()
    normal_images = [read_image(s.path) for s in normals]
    anomalies = [(read_image(s.path), read_mask(s.mask_path)) for s in train_anomalies]

    def progress(stage: str, done: int, total: int) -> None:
        if stage != "train" or done % 10 == 0 or done == total:
            print(f"[{time.time() - started:7.1f}s] {stage} {done}/{total}", flush=True)

    detector = PRN(config).fit(normal_images, anomalies, progress=progress, checkpoint_dir=out / f"{tag}_checkpoint", resume=True)
    train_seconds = time.time() - started
    detector.save(out / f"{tag}_model", overwrite=True)

    started = time.time()
    maps, masks, scores, labels, verdicts = [], [], [], [], []
    for start in range(0, len(test_samples), 32):
        chunk = test_samples[start : start + 32]
        images = [read_image(s.path) for s in chunk]
        result = detector.predict(images, [str(s.path) for s in chunk])
        verdicts.extend(bool(v) for v in result.is_anomalous)
        for sample, image, anomaly_map, score in zip(chunk, images, result.anomaly_maps, result.image_scores):
            shape = image.shape[:2]
            maps.append(resize_map(anomaly_map, shape))
            masks.append(read_mask(sample.mask_path, shape) if sample.label == 1 else np.zeros(shape, dtype=bool))
            scores.append(float(score))
            labels.append(int(sample.label))
        print(f"predicted {min(start + 32, len(test_samples))}/{len(test_samples)}", flush=True)
    predict_seconds = time.time() - started
    metrics = {**pixel_metrics(maps, masks), **image_metrics(np.array(scores), np.array(labels)),
               **verdict_metrics(np.array(verdicts), np.array(labels))}
    report = {
        "dataset": "magnetic_tile",
        "k": args.k,
        "metrics": metrics,
        "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 1),
        "test_images": len(test_samples),
        "train_normal": len(normals),
        "train_anomalies": len(train_anomalies),
        "threshold": result.threshold,
        "threshold_rule": result.threshold_rule,
        "losses": detector.losses,
        "config": config.to_json(),
        "machine": f"{platform.processor() or platform.machine()}, torch threads {args.threads}",
        "scores": {str(s.path): score for s, score in zip(test_samples, scores)},
    }
    (out / f"{tag}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "scores"}, indent=1))


if __name__ == "__main__":
    main()
