"""PRN on one category with a fixed, reduced protocol; runs against any checkout since 2026-11-23.

Only the API that every PRN commit has is used (``PRN``, ``PRNConfig``, ``kshot_split``,
``mvtec_category``, ``magnetic_tile``, ``read_image``, ``read_mask``), so an old commit can be
measured by pointing PYTHONPATH at its ``src``:

    git worktree add /tmp/prn-d846317 d846317
    PYTHONPATH=/tmp/prn-d846317/src python bench/prn_bisect.py --root ../shared/datasets/paper_impurities/pa_bdp01_tl \
        --epochs 8 --out /tmp/bisect/d846317_bdp.json

Protocol (all seeded by ``--seed``):
  * MVTec-layout category: all ``train/good`` images; ``kshot_split(test, k, seed)``.
  * ``--root`` a magnetic-tile root: ``magnetic_tile(root, seed)``; ``--max-normal`` of its normal
    training tiles (``default_rng(seed)``, sorted); ``kshot_split`` with k per class; with
    ``--only-type Crack`` the test set is the remaining tiles of that class plus ``--normal-test``
    normal test tiles (every n-th one), i.e. a thin-defect subset.
Metrics: pixel AP / AUROC pooled over the test images with the maps resized bilinearly to each
image's own size (masks: value > 127), image AUROC (scikit-learn), verdict false-alarm rate and
recall when the checkout's ``predict`` gives verdicts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from defectscope.data import magnetic_tile, mvtec_category, read_image, read_mask
from defectscope.methods.prn import PRN, PRNConfig, kshot_split


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _resize(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def load(args: argparse.Namespace):
    root = Path(args.root)
    if (root / "MT_Free").is_dir():
        category = magnetic_tile(root, seed=args.seed)
    else:
        category = mvtec_category(root)
    normals = list(category.train)
    if args.max_normal and len(normals) > args.max_normal:
        chosen = np.sort(np.random.default_rng(args.seed).choice(len(normals), args.max_normal, replace=False))
        normals = [normals[int(i)] for i in chosen]
    anomalies, test = kshot_split(category.test, k=args.k, seed=args.seed)
    if args.only_type:
        defects = [s for s in test if s.label == 1 and s.defect_type == args.only_type]
        good = [s for s in test if s.label == 0]
        if args.normal_test:
            good = good[:: max(1, len(good) // args.normal_test)][: args.normal_test]
        test = good + defects
    return normals, anomalies, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-normal", type=int, default=0)
    parser.add_argument("--only-type", default=None)
    parser.add_argument("--normal-test", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE (JSON value) for PRNConfig")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    normals, anomalies, test = load(args)
    settings = {"seed": args.seed}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    for item in args.param:
        key, _, text = item.partition("=")
        settings[key] = _value(text)
    known = {f.name for f in dataclasses.fields(PRNConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SystemExit(f"this checkout's PRNConfig has no settings {unknown}")
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    config = PRNConfig(**settings)

    started = time.time()
    detector = PRN(config).fit([read_image(s.path) for s in normals], [(read_image(s.path), read_mask(s.mask_path)) for s in anomalies])
    train_seconds = time.time() - started
    started = time.time()
    scores, labels, verdicts, pixel_scores, pixel_labels = [], [], [], [], []
    for start in range(0, len(test), 16):
        chunk = test[start : start + 16]
        images = [read_image(s.path) for s in chunk]
        result = detector.predict(images, [str(s.path) for s in chunk])
        flags = getattr(result, "is_anomalous", None)
        verdicts.extend([None] * len(chunk) if flags is None else [bool(v) for v in flags])
        for sample, image, anomaly_map, score in zip(chunk, images, result.anomaly_maps, result.image_scores):
            shape = image.shape[:2]
            mask = read_mask(sample.mask_path, shape) if sample.label == 1 else np.zeros(shape, dtype=bool)
            pixel_scores.append(_resize(anomaly_map, shape).ravel())
            pixel_labels.append(mask.ravel())
            scores.append(float(score))
            labels.append(int(sample.label))
    predict_seconds = time.time() - started
    labels_a = np.array(labels)
    pixels = np.concatenate(pixel_labels)
    maps = np.concatenate(pixel_scores)
    report = {
        "root": args.root,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
        "protocol": {"k": args.k, "max_normal": args.max_normal, "only_type": args.only_type, "normal_test": args.normal_test},
        "train_normal": len(normals),
        "train_defective": len(anomalies),
        "test": len(test),
        "test_defective": int(labels_a.sum()),
        "pixel_ap": float(average_precision_score(pixels, maps)),
        "pixel_auroc": float(roc_auc_score(pixels, maps)),
        "image_auroc": float(roc_auc_score(labels_a, scores)),
        "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 1),
    }
    if verdicts and verdicts[0] is not None:
        flags = np.array(verdicts, dtype=bool)
        report["far"] = float(flags[labels_a == 0].mean())
        report["recall"] = float(flags[labels_a == 1].mean())
        report["threshold"] = float(result.threshold)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
