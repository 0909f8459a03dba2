"""Segmentation IoU of binary masks, at a method's own threshold and at the best (oracle) one.

Definition (as in the U-Flow paper's mIoU): the IoU is computed per image,
IoU_i = |P_i & G_i| / |P_i | G_i|, where an image whose prediction and ground truth are both
empty scores 1 (a correct "nothing here"); the result is the mean of IoU_i over ALL test images,
normal ones included. So a method that marks false regions on normal images is penalised, and
one that finds nothing on a defective image scores 0 there.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike


def _as_list(arrays: ArrayLike | Sequence[ArrayLike], name: str) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        if arrays.ndim == 2:
            return [arrays]
        if arrays.ndim != 3:
            raise ValueError(f"{name} must be (N, H, W) or a sequence of (H, W) arrays, got {arrays.shape}")
        return list(arrays)
    return [np.asarray(a) for a in arrays]


def _paired(first: ArrayLike | Sequence[ArrayLike], second: ArrayLike | Sequence[ArrayLike],
            names: tuple[str, str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    left, right = _as_list(first, names[0]), _as_list(second, names[1])
    if len(left) != len(right):
        raise ValueError(f"{names[0]} has {len(left)} images but {names[1]} has {len(right)}")
    if not left:
        raise ValueError("IoU needs at least one image")
    for index, (a, b) in enumerate(zip(left, right)):
        if a.shape != b.shape:
            raise ValueError(f"image {index}: {names[0]} is {a.shape} but {names[1]} is {b.shape}")
    return left, right


def image_ious(masks_pred: ArrayLike | Sequence[ArrayLike], masks_gt: ArrayLike | Sequence[ArrayLike]) -> np.ndarray:
    """Per-image IoU (N,) of binary masks; 1 where both masks are empty."""
    preds, gts = _paired(masks_pred, masks_gt, ("masks_pred", "masks_gt"))
    ious = np.empty(len(preds), dtype=np.float64)
    for index, (pred, gt) in enumerate(zip(preds, gts)):
        pred, gt = pred.astype(bool), gt.astype(bool)
        union = np.count_nonzero(pred | gt)
        ious[index] = 1.0 if union == 0 else np.count_nonzero(pred & gt) / union
    return ious


def iou_auto(masks_pred: ArrayLike | Sequence[ArrayLike], masks_gt: ArrayLike | Sequence[ArrayLike]) -> float:
    """Mean over all images of the per-image IoU of predicted masks (see the module docstring)."""
    return float(image_ious(masks_pred, masks_gt).mean())


def iou_oracle_threshold(
    anomaly_maps: ArrayLike | Sequence[ArrayLike],
    masks_gt: ArrayLike | Sequence[ArrayLike],
    *,
    n_thresholds: int = 1000,
) -> tuple[float, float]:
    """(best mean IoU, its threshold) over one threshold shared by all images (mask = map >= t).

    Candidate thresholds: ``n_thresholds`` quantiles of the pooled map values (distinct values
    only) plus one above the maximum (all masks empty). Counts at each candidate are exact.
    """
    maps, gts = _paired(anomaly_maps, masks_gt, ("anomaly_maps", "masks_gt"))
    if n_thresholds < 1:
        raise ValueError(f"n_thresholds must be >= 1, got {n_thresholds}")
    pooled = np.concatenate([m.ravel().astype(np.float64) for m in maps])
    if np.isnan(pooled).any():
        raise ValueError("anomaly_maps contain NaN")
    candidates = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, n_thresholds)))
    candidates = np.append(candidates, np.nextafter(pooled.max(), np.inf))
    total_iou = np.zeros(candidates.size, dtype=np.float64)
    for values, gt in zip(maps, gts):
        values = values.astype(np.float64).ravel()
        gt = gt.astype(bool).ravel()
        all_sorted = np.sort(values)
        positive_sorted = np.sort(values[gt])
        predicted = values.size - np.searchsorted(all_sorted, candidates, side="left")
        hit = positive_sorted.size - np.searchsorted(positive_sorted, candidates, side="left")
        union = predicted + positive_sorted.size - hit
        total_iou += np.where(union == 0, 1.0, hit / np.maximum(union, 1))
    mean_iou = total_iou / len(maps)
    best = int(np.argmax(mean_iou))
    return float(mean_iou[best]), float(candidates[best])


def iou_oracle(anomaly_maps: ArrayLike | Sequence[ArrayLike], masks_gt: ArrayLike | Sequence[ArrayLike]) -> float:
    """Best mean IoU reachable with one threshold for the whole category (same IoU definition)."""
    return iou_oracle_threshold(anomaly_maps, masks_gt)[0]
