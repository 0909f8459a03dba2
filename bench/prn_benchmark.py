"""PRN on one real category with a fixed protocol: the regression benchmark and its test use this.

Protocol (depends only on the file list, ``k``, ``seed`` and the PRN settings): an MVTec-layout
category trains on all its ``train/good`` images, a magnetic-tile root on the seeded half of
``MT_Free`` (:func:`defectscope.data.magnetic_tile`); ``kshot_split(test, k, seed)`` moves k
labelled defects per type into training, and every other test image is scored. Pixel metrics are
pooled over the test images with each map resized bilinearly to its image's own size
(:mod:`defectscope.metrics`; masks: value > 127), image metrics on the image scores, the verdict's
false-alarm rate and recall on its decisions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.data import magnetic_tile, mvtec_category, read_image, read_mask
from defectscope.errors import ConfigError
from defectscope.methods.prn.detector import PRN, PRNConfig
from defectscope.methods.prn.protocol import kshot_split
from defectscope.metrics import image_metrics, pixel_metrics, verdict_metrics
from defectscope.report.overlay import resize_map


def load_category(root: str | Path, seed: int = 0) -> Any:
    """An MVTec-layout category, or the magnetic tiles (a root holding ``MT_Free``)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"category folder '{root}' does not exist")
    return magnetic_tile(root, seed=seed) if (root / "MT_Free").is_dir() else mvtec_category(root)



def predict_test(detector: Any, test: list, batch: int = 16, log: Any = None) -> tuple[list, list, list, list, list, Any]:
    """Predict the ``test`` samples in chunks of ``batch``: (maps and ground-truth masks at each
    image's size, image scores, labels, verdict flags, the last chunk's Result); ``log`` (a
    callable) hears the progress."""
    maps, masks, scores, labels, flags, result = [], [], [], [], [], None
    for start in range(0, len(test), batch):
        chunk = test[start : start + batch]
        images = [read_image(s.path) for s in chunk]
        result = detector.predict(images, [str(s.path) for s in chunk])
        flags.extend(bool(v) for v in result.is_anomalous)
        for sample, image, anomaly_map, score in zip(chunk, images, result.anomaly_maps, result.image_scores):
            shape = image.shape[:2]
            maps.append(resize_map(anomaly_map, shape))
            masks.append(read_mask(sample.mask_path, shape) if sample.label == 1 else np.zeros(shape, dtype=bool))
            scores.append(float(score))
            labels.append(int(sample.label))
        if log is not None:
            log(f"predicted {min(start + batch, len(test))}/{len(test)}")
    return maps, masks, scores, labels, flags, result

def evaluate_category(
    root: str | Path, config: PRNConfig | None = None, *, k: int = 10, seed: int = 0, batch: int = 16
) -> dict[str, Any]:
    """Train PRN on the category at ``root`` with the protocol above and score its test images;
    returns the metrics, counts, the cut and seconds."""
    config = config or PRNConfig(seed=seed)
    category = load_category(root, seed)
    anomalies, test = kshot_split(category.test, k=k, seed=seed)
    started = time.time()
    detector = PRN(config).fit(
        [read_image(s.path) for s in category.train], [(read_image(s.path), read_mask(s.mask_path)) for s in anomalies]
    )
    train_seconds = time.time() - started
    started = time.time()
    maps, masks, scores, labels, flags, last = predict_test(detector, test, batch)
    threshold = last.threshold if last is not None else None
    metrics = {
        **pixel_metrics(maps, masks),
        **image_metrics(np.array(scores), np.array(labels)),
        **verdict_metrics(np.array(flags), np.array(labels)),
    }
    return {
        "metrics": metrics,
        "train_normal": len(category.train),
        "train_defective": len(anomalies),
        "test": len(test),
        "test_defective": int(sum(labels)),
        "threshold": threshold,
        "calibration": detector.model_info.get("calibration"),
        "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(time.time() - started, 1),
    }
