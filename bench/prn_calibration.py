"""Which normal-image scores can calibrate PRN's verdict when a category has few normal images?

On one MVTec-style category (default: the paper type pa_bdp01_tl, 24 normal training images),
with the k-shot protocol of ``evaluate --method prn`` (``kshot_split(test, k=10, seed=0)``):

* ``--mode seen``: one model trained on all normal images (no hold-back). Prints the image scores
  of its own training images, the same images scored with their own contribution removed from
  their nearest prototype (leave-one-out prototypes: the prototype of a cluster of m images
  becomes (m p - x) / (m - 1)), and the normal and defective test images' scores, with the
  false-alarm rate and recall of a cut at the largest training-image score.
* ``--mode crossfit``: ``--folds`` K fold models, each a separate PRN trained on all folds but
  one with 1/K of the samples per epoch (folds: ``default_rng([0, 7]).permutation``, every K-th
  image, as ``calibration_folds``; each fold model here has the single-model random streams,
  the library's own cross-fit gives each fold model its own, so its figures differ slightly).
  Prints each fold model's scores of its left-out fold (the calibration scores), the average
  of the fold models on the test images, and the verdict of a cut at the largest calibration
  score, with image AUROC.
* ``--mode statistic``: the library's default PRN (cross-fitted when the category has fewer than
  190 normal images). Prints its calibration scores and compares two verdict statistics at the
  same cut (the largest calibration score): the top-k mean of the fold models' averaged map (the
  detector's image score) and the mean of the fold models' own top-k means.

Run: python bench/prn_calibration.py --mode seen  (about 7 CPU minutes at 1 thread; crossfit the same)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from defectscope.data import mvtec_category
from defectscope.data.batch import read_batch
from defectscope.methods.prn import PRN, PRNConfig, kshot_split
from defectscope.methods.prn.generate import AnomalyGenerator
from defectscope.methods.prn.model import top_k_mean
from defectscope.metrics import image_metrics
from defectscope.training import _read_pairs

ROOT = Path(__file__).resolve().parents[1]


def _scores(detector: PRN, images: list[np.ndarray]) -> np.ndarray:
    return top_k_mean(detector.anomaly_maps(images), detector.config.top_k).numpy()


def _leave_one_out_scores(detector: PRN, normals: list[np.ndarray]) -> np.ndarray:
    """Each training image scored with itself taken out of its nearest prototype, per scale."""
    head = detector.heads[0]
    prototypes = [p.clone() for p in head.prototypes()]
    features = detector.features(AnomalyGenerator(normals, image_size=detector.config.image_size).normals)
    nearest = [torch.cdist(f.flatten(1), p.flatten(1)).argmin(1) for f, p in zip(features, prototypes)]
    scores = []
    for i, image in enumerate(normals):
        replaced = []
        for scale, prototype in enumerate(prototypes):
            j = int(nearest[scale][i])
            members = int((nearest[scale] == j).sum())
            changed = prototype.clone()
            if members > 1:
                changed[j] = (members * prototype[j] - features[scale][i]) / (members - 1)
            replaced.append(changed)
        head.set_prototypes(replaced)
        scores.append(float(_scores(detector, [image])[0]))
    head.set_prototypes(prototypes)
    return np.array(scores)


def _verdict(name: str, cut: float, test: np.ndarray, labels: np.ndarray) -> None:
    normal, defective = test[labels == 0], test[labels == 1]
    print(f"{name}: cut {cut:.4f}  false-alarm rate {np.mean(normal > cut):.3f} ({int(np.sum(normal > cut))} of {normal.size})"
          f"  recall {np.mean(defective > cut):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "datasets" / "paper_impurities" / "pa_bdp01_tl"))
    parser.add_argument("--mode", choices=["seen", "crossfit", "statistic"], default="seen")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.set_printoptions(precision=4, suppress=True, linewidth=110)

    category = mvtec_category(args.root)
    anomalies, test = kshot_split(list(category.test), k=10, seed=0)
    normals, _, _ = read_batch([s.path for s in category.train])
    pairs = _read_pairs(anomalies)
    test_images, _, _ = read_batch([s.path for s in test])
    labels = np.array([s.label for s in test])
    started = time.perf_counter()
    if args.mode == "seen":
        detector = PRN(PRNConfig(calibration_fraction=0, cross_fit_folds=0)).fit(normals, pairs)
        seen, loo = _scores(detector, normals), _leave_one_out_scores(detector, normals)
        test_scores = _scores(detector, test_images)
        print("training images (seen):        ", np.sort(seen))
        print("seen, leave-one-out prototypes:", np.sort(loo))
        _verdict("cut at the largest seen score", float(seen.max()), test_scores, labels)
        _verdict("cut at the largest leave-one-out score", float(loo.max()), test_scores, labels)
    elif args.mode == "statistic":
        detector = PRN(PRNConfig()).fit(normals, pairs)
        cut = float(detector.held_out_scores.max())
        print(f"calibration ({detector.model_info['calibration']}, {len(detector.heads)} models):", np.sort(detector.held_out_scores))
        per_model = [top_k_mean(detector.maps_of([head], test_images), detector.config.top_k).numpy() for head in detector.heads]
        _verdict("mean of the fold models' own scores", cut, np.mean(per_model, axis=0), labels)
        for number, scores in enumerate(per_model):
            _verdict(f"fold model {number} alone", cut, scores, labels)
        test_scores = _scores(detector, test_images)
        _verdict("top-k mean of the averaged map (the detector's score)", cut, test_scores, labels)
    else:
        order = np.random.default_rng([0, 7]).permutation(len(normals))
        folds = [sorted(int(i) for i in order[k :: args.folds]) for k in range(args.folds)]
        calibration, per_model = [], []
        for fold in folds:
            kept = [image for i, image in enumerate(normals) if i not in set(fold)]
            config = PRNConfig(calibration_fraction=0, cross_fit_folds=0, samples_per_epoch=PRNConfig.samples_per_epoch // args.folds)
            detector = PRN(config).fit(kept, pairs)
            calibration.append(_scores(detector, [normals[i] for i in fold]))
            per_model.append(_scores(detector, test_images))
        cut = float(np.concatenate(calibration).max())
        test_scores = np.mean(per_model, axis=0)
        print("calibration (each fold model on its left-out fold):", np.sort(np.concatenate(calibration)))
        for number, scores in enumerate(per_model):
            _verdict(f"fold model {number} alone", cut, scores, labels)
        _verdict("average of the fold models", cut, test_scores, labels)
    print("normal test images:   ", np.sort(test_scores[labels == 0]))
    print("defective test images:", np.sort(test_scores[labels == 1])[:12], "...")
    print(f"image AUROC {image_metrics(test_scores, labels)['image_auroc']:.4f}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
