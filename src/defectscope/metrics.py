"""Exact image- and pixel-level anomaly detection metrics.

All metrics treat higher scores as more anomalous and handle tied scores exactly: pixels
(or images) with equal scores are always thresholded together, as scikit-learn's
``roc_curve`` / ``precision_recall_curve`` do. AUROC and AP therefore match
``sklearn.metrics.roc_auc_score`` / ``average_precision_score`` on any input.

A metric that is undefined because only one class is present (an all-normal category, a
test set without defective pixels, or one without normal pixels) is reported as ``None``;
:func:`format_metric` renders it as ``"n/a"``.

Pixel metrics pool all pixels of all images. The per-region overlap (PRO) curve uses
connected ground-truth regions found per image with :func:`scipy.ndimage.label`, by
default with 8-connectivity (diagonal neighbours join a region), as in the MVTec AD
evaluation code.

Speed: rather than one argsort of every pixel, the normal pixels are copied and sorted by
value only (split by image into one part per CPU, sorted in parallel threads), while the
defective pixels are sorted with their region id packed into one 64-bit key. Every metric
is then evaluated at the distinct defective-pixel scores, which is exact: between two such
scores only normal pixels change side, which moves the ROC and PRO curves horizontally and
can only lower precision and F1. Normal-pixel counts at those scores come from binary
search in the sorted parts. Scores keep their dtype (small integer and float16 maps are
widened to float32 losslessly), so results never depend on a lossy downcast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

__all__ = ["MetricDict", "format_metric", "image_metrics", "pixel_metrics", "verdict_metrics"]

MetricDict = dict[str, float | None]

_NA = "n/a"
_PARALLEL_MIN_NEGATIVES = 2_000_000
_MAX_SORT_PARTS = 8
_SIGN_BIT = np.uint32(0x80000000)
_LOW32 = np.uint64(0xFFFFFFFF)
_LOSSLESS_TO_F32 = {np.dtype(t) for t in (np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.float16)}
_PACKABLE = {np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.uint32)}


@dataclass(frozen=True)
class _Curve:
    """Cumulative counts at each distinct positive score, in descending score order."""

    tp: NDArray[np.int64]
    fp_ge: NDArray[np.int64]
    fp_gt: NDArray[np.int64]
    pro: NDArray[np.float64] | None
    n_pos: int
    n_neg: int


def format_metric(value: float | None, digits: int = 3) -> str:
    """Format a metric value with ``digits`` decimals, or ``"n/a"`` when it is ``None``."""
    if value is None:
        return _NA
    return f"{value:.{digits}f}"


def image_metrics(scores: ArrayLike, labels: ArrayLike) -> MetricDict:
    """Image-level AUROC, average precision and maximal F1 of anomaly ``scores``.

    ``labels`` are 1/True for anomalous images. Values are floats in [0, 1], or ``None``
    for all three when only one class is present.
    """
    s = _score_array(np.asarray(scores).ravel())
    y = _binary_array(np.asarray(labels).ravel(), "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.size} values but labels has {y.size}")
    if s.size == 0:
        raise ValueError("image_metrics needs at least one score")
    _check_not_nan(s)
    neg, pos = np.sort(s[~y]), s[y]
    if neg.size == 0 or pos.size == 0:
        return {"image_auroc": None, "image_ap": None, "image_f1_max": None}
    values, tp, _ = _positive_groups(pos, None, None)
    fp_ge, fp_gt = _count_at_least([neg], values)
    curve = _Curve(tp=tp, fp_ge=fp_ge, fp_gt=fp_gt, pro=None, n_pos=int(pos.size), n_neg=int(neg.size))
    auroc, ap, f1 = _roc_pr_metrics(curve)
    return {"image_auroc": auroc, "image_ap": ap, "image_f1_max": f1}


def verdict_metrics(is_anomalous: ArrayLike | None, labels: ArrayLike, review: ArrayLike | None = None) -> MetricDict:
    """How a method's own verdicts fare: ``verdict_false_alarm_rate`` (share of normal images
    called anomalous), ``verdict_recall`` (share of defective images called anomalous; a
    defective image sent to review does not count), ``verdict_review_share`` (share of all
    images sent to review, 0 without a review band) and ``verdict_missed`` (share of defective
    images called normal). Each is ``None`` when there is no verdict or no image of its class."""
    y = _binary_array(np.asarray(labels).ravel(), "labels")
    if is_anomalous is None:
        return {"verdict_false_alarm_rate": None, "verdict_recall": None, "verdict_review_share": None, "verdict_missed": None}
    flagged = _binary_array(np.asarray(is_anomalous).ravel(), "verdicts")
    if flagged.shape != y.shape:
        raise ValueError(f"got {flagged.size} verdicts for {y.size} labels")
    doubt = np.zeros_like(flagged) if review is None else _binary_array(np.asarray(review).ravel(), "review flags")
    if doubt.shape != y.shape:
        raise ValueError(f"got {doubt.size} review flags for {y.size} labels")
    if np.any(doubt & flagged):
        raise ValueError("an image cannot be both anomalous and sent to review")
    normal, defective = flagged[~y], flagged[y]
    called_normal = ~(flagged | doubt)
    return {
        "verdict_false_alarm_rate": float(normal.mean()) if normal.size else None,
        "verdict_recall": float(defective.mean()) if defective.size else None,
        "verdict_review_share": float(doubt.mean()) if doubt.size else None,
        "verdict_missed": float(called_normal[y].mean()) if defective.size else None,
    }


def pixel_metrics(
    anomaly_maps: ArrayLike | Sequence[ArrayLike],
    masks: ArrayLike | Sequence[ArrayLike],
    *,
    pro_fpr_limit: float = 0.3,
    connectivity: int = 8,
) -> MetricDict:
    """Pixel-level AUROC, AP, maximal F1 and normalised AUPRO, pooled over all pixels.

    ``anomaly_maps`` is an (N, H, W) array or a sequence of 2-D arrays (sizes may differ),
    ``masks`` the matching ground truth (bool or 0/1). AUPRO integrates the mean
    per-region overlap over the normal-pixel FPR from 0 to ``pro_fpr_limit`` and divides
    by ``pro_fpr_limit``. ``connectivity`` (8 or 4) defines the ground-truth regions.
    All four values are ``None`` when there is no defective or no normal pixel.
    """
    if not 0.0 < pro_fpr_limit <= 1.0:
        raise ValueError(f"pro_fpr_limit must be in (0, 1], got {pro_fpr_limit}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    maps_list, masks_list = _pair_images(anomaly_maps, masks)
    n_pos_each = [int(np.count_nonzero(k)) for k in masks_list]
    n_pos = sum(n_pos_each)
    if n_pos == 0 or n_pos == sum(k.size for k in masks_list):
        for m in maps_list:
            _check_not_nan(m)
        return {"pixel_auroc": None, "pixel_ap": None, "pixel_f1_max": None, "pixel_aupro": None}
    curve = _pixel_curve(maps_list, masks_list, n_pos_each, connectivity)
    auroc, ap, f1 = _roc_pr_metrics(curve)
    return {
        "pixel_auroc": auroc,
        "pixel_ap": ap,
        "pixel_f1_max": f1,
        "pixel_aupro": _aupro(curve, pro_fpr_limit),
    }


def _score_array(x: NDArray) -> NDArray:
    """Scores in a dtype whose sort order and ties equal those of the input (exactly)."""
    if x.dtype in _LOSSLESS_TO_F32:
        return x.astype(np.float32)
    if x.dtype.kind not in "iuf":
        raise ValueError(f"scores must be real numbers, got dtype {x.dtype}")
    return x


def _binary_array(y: NDArray, name: str) -> NDArray[np.bool_]:
    """Validate a bool / 0-1 array and return it as bool."""
    if y.dtype == np.bool_:
        return y
    if y.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be bool or 0/1, got dtype {y.dtype}")
    b = y != 0
    if np.any(b & (y != 1)):
        raise ValueError(f"{name} must contain only 0 and 1")
    return b


def _check_not_nan(x: NDArray) -> None:
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise ValueError("scores contain NaN")


def _pair_images(
    anomaly_maps: ArrayLike | Sequence[ArrayLike], masks: ArrayLike | Sequence[ArrayLike]
) -> tuple[list[NDArray], list[NDArray[np.bool_]]]:
    """Split maps and masks into matching lists of 2-D arrays."""
    if isinstance(anomaly_maps, (list, tuple)):
        maps_list = [np.asarray(m) for m in anomaly_maps]
    else:
        arr = np.asarray(anomaly_maps)
        if arr.ndim != 3:
            raise ValueError(f"anomaly_maps must be (N, H, W) or a list of 2-D maps, got shape {arr.shape}")
        maps_list = list(arr)
    if isinstance(masks, (list, tuple)):
        masks_raw = [np.asarray(m) for m in masks]
    else:
        masks_raw = list(np.asarray(masks))
    if len(maps_list) != len(masks_raw):
        raise ValueError(f"{len(maps_list)} anomaly maps but {len(masks_raw)} masks")
    if not maps_list:
        raise ValueError("pixel_metrics needs at least one anomaly map")
    for i, (m, k) in enumerate(zip(maps_list, masks_raw)):
        if m.ndim != 2 or m.shape != k.shape:
            raise ValueError(f"image {i}: anomaly map shape {m.shape} does not match mask shape {k.shape}")
    dtype = np.result_type(*[m.dtype for m in maps_list])
    maps_list = [_score_array(m.astype(dtype, copy=False)) for m in maps_list]
    masks_list = [_binary_array(k, "masks") for k in masks_raw]
    return maps_list, masks_list


def _image_groups(n_neg_each: list[int], parts: int) -> list[range]:
    """Split image indices into ``parts`` contiguous runs with about equal normal-pixel counts."""
    cum = np.cumsum(n_neg_each)
    targets = cum[-1] * np.arange(1, parts) / parts
    cuts = [0, *np.searchsorted(cum, targets, side="left").tolist(), len(n_neg_each)]
    return [range(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _sorted_normals(maps: list[NDArray], masks: list[NDArray[np.bool_]], counts: list[int]) -> NDArray:
    """Sorted scores of all normal pixels of the given images (NaN rejected)."""
    out = np.empty(sum(counts), dtype=maps[0].dtype)
    a = 0
    for m, k, n in zip(maps, masks, counts):
        np.compress(~k.ravel(), m.ravel(), out=out[a : a + n])
        a += n
    out.sort()
    _check_not_nan(out[-1:])
    return out


def _defect_pixels(
    maps: list[NDArray], masks: list[NDArray[np.bool_]], counts: list[int], connectivity: int
) -> tuple[NDArray, NDArray[np.uint32]]:
    """Scores of all defective pixels and their global 1-based region ids."""
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    n_pos = sum(counts)
    pos = np.empty(n_pos, dtype=maps[0].dtype)
    region = np.empty(n_pos, dtype=np.uint32)
    b = 0
    offset = 0
    for m, k, n in zip(maps, masks, counts):
        if n == 0:
            continue
        flat = k.ravel()
        np.compress(flat, m.ravel(), out=pos[b : b + n])
        lab, n_lab = ndimage.label(k, structure=structure)
        region[b : b + n] = np.compress(flat, lab.ravel())
        region[b : b + n] += np.uint32(offset)
        offset += n_lab
        b += n
    _check_not_nan(pos)
    return pos, region


def _pixel_curve(maps: list[NDArray], masks: list[NDArray[np.bool_]], n_pos_each: list[int], connectivity: int) -> _Curve:
    """Sort normal pixels (in parallel threads) while grouping the defective ones, then count."""
    n_neg_each = [k.size - n for k, n in zip(masks, n_pos_each)]
    groups = _image_groups(n_neg_each, _n_sort_parts(sum(n_neg_each)))

    def normals(g: range) -> NDArray:
        return _sorted_normals([maps[i] for i in g], [masks[i] for i in g], [n_neg_each[i] for i in g])

    def defects() -> tuple[NDArray, NDArray[np.int64], NDArray[np.float64] | None]:
        pos, region = _defect_pixels(maps, masks, n_pos_each, connectivity)
        n_regions = int(region.max())
        sizes = np.bincount(region, minlength=n_regions + 1).astype(np.float64)
        sizes[0] = np.inf
        return _positive_groups(pos, region, 1.0 / (sizes * n_regions))

    if len(groups) > 1:
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            futures = [pool.submit(normals, g) for g in groups]
            values, tp, pro = defects()
            neg_parts = [f.result() for f in futures]
    else:
        neg_parts = [normals(groups[0])]
        values, tp, pro = defects()
    fp_ge, fp_gt = _count_at_least(neg_parts, values)
    return _Curve(tp=tp, fp_ge=fp_ge, fp_gt=fp_gt, pro=pro, n_pos=sum(n_pos_each), n_neg=sum(n_neg_each))


def _n_sort_parts(n_neg: int) -> int:
    """Number of threads used to sort normal pixels: one per available CPU for large inputs."""
    if n_neg < _PARALLEL_MIN_NEGATIVES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_SORT_PARTS))


def _to_ordered_u32(x: NDArray) -> NDArray[np.uint32]:
    """Map float32/int32/uint32 values to uint32 keys with the same order and ties."""
    if x.dtype == np.uint32:
        return x.copy()
    if x.dtype == np.int32:
        return x.view(np.uint32) ^ _SIGN_BIT
    bits = (x + np.float32(0.0)).view(np.uint32)
    negative = bits >= _SIGN_BIT
    return np.where(negative, ~bits, bits | _SIGN_BIT)


def _from_ordered_u32(keys: NDArray[np.uint32], dtype: np.dtype) -> NDArray:
    """Inverse of :func:`_to_ordered_u32`."""
    if dtype == np.uint32:
        return keys.copy()
    if dtype == np.int32:
        return (keys ^ _SIGN_BIT).view(np.int32)
    was_positive = keys >= _SIGN_BIT
    return np.where(was_positive, keys & ~_SIGN_BIT, ~keys).view(np.float32)


def _positive_groups(
    pos: NDArray, region: NDArray[np.uint32] | None, weights: NDArray[np.float64] | None
) -> tuple[NDArray, NDArray[np.int64], NDArray[np.float64] | None]:
    """Distinct positive scores (descending), cumulative positive counts and mean PRO there."""
    reg_sorted = None
    if weights is None or region is None:
        sorted_desc = np.sort(pos)[::-1]
    elif pos.dtype in _PACKABLE:
        key = _to_ordered_u32(pos).astype(np.uint64) << np.uint64(32)
        key |= region
        key.sort()
        key = key[::-1]
        hi = (key >> np.uint64(32)).astype(np.uint32)
        reg_sorted = (key & _LOW32).astype(np.intp)
        del key
        sorted_desc = hi
    else:
        order = np.argsort(pos)[::-1]
        sorted_desc = pos[order]
        reg_sorted = region[order]
        del order
    ends = np.flatnonzero(sorted_desc[1:] != sorted_desc[:-1])
    ends = np.append(ends, sorted_desc.size - 1)
    values = sorted_desc[ends]
    if sorted_desc.dtype != pos.dtype:
        values = _from_ordered_u32(values, pos.dtype)
    tp = ends.astype(np.int64) + 1
    pro = None
    if reg_sorted is not None and weights is not None:
        pro = np.cumsum(weights[reg_sorted])[ends]
    return values, tp, pro


def _count_at_least(neg_parts: list[NDArray], values: NDArray) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Numbers of normal samples with score >= and > each value (values descending)."""
    queries = values[::-1]
    ge = np.zeros(values.size, dtype=np.int64)
    gt = np.zeros(values.size, dtype=np.int64)
    for part in neg_parts:
        if part.size == 0:
            continue
        left = np.searchsorted(part, queries, side="left")
        right = left.copy()
        inside = left < part.size
        tie = np.zeros(values.size, dtype=bool)
        tie[inside] = part[left[inside]] == queries[inside]
        if tie.any():
            right[tie] = np.searchsorted(part, queries[tie], side="right")
        ge += part.size - left
        gt += part.size - right
    return ge[::-1].copy(), gt[::-1].copy()


def _roc_pr_metrics(c: _Curve) -> tuple[float, float, float]:
    """AUROC (Mann-Whitney with half credit for ties), AP and maximal F1."""
    d_tp = np.diff(c.tp, prepend=0)
    twice_area = int(np.sum(d_tp * (2 * c.n_neg - c.fp_ge - c.fp_gt)))
    auroc = twice_area / (2 * c.n_pos * c.n_neg)
    tp = c.tp.astype(np.float64)
    predicted = tp + c.fp_ge
    ap = float(np.sum(d_tp * (tp / predicted))) / c.n_pos
    f1 = float(np.max(2.0 * tp / (predicted + c.n_pos)))
    return _unit(auroc), _unit(ap), _unit(f1)


def _aupro(c: _Curve, limit: float) -> float:
    """Area under the PRO-vs-FPR curve up to ``limit``, divided by ``limit``."""
    if c.pro is None:
        raise ValueError("AUPRO needs per-region weights")
    g = c.tp.size
    x = np.empty(2 * g + 2, dtype=np.float64)
    y = np.empty(2 * g + 2, dtype=np.float64)
    x[0] = y[0] = 0.0
    x[1:-1:2] = c.fp_gt / c.n_neg
    y[1] = 0.0
    y[3:-1:2] = c.pro[:-1]
    x[2:-1:2] = c.fp_ge / c.n_neg
    y[2:-1:2] = c.pro
    x[-1] = 1.0
    y[-1] = c.pro[-1]
    j = int(np.searchsorted(x, limit, side="right"))
    area = float(np.sum(np.diff(x[:j]) * (y[1:j] + y[: j - 1]))) / 2.0
    if j < x.size:
        x0, y0, x1, y1 = x[j - 1], y[j - 1], x[j], y[j]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_lim) / 2.0
    return _unit(area / limit)


def _unit(v: float) -> float:
    """Clamp rounding noise into [0, 1] and return a Python float."""
    return float(min(1.0, max(0.0, v)))


def binary_mask_metrics(
    masks_pred: ArrayLike | Sequence[ArrayLike],
    masks_gt: ArrayLike | Sequence[ArrayLike],
    anomaly_maps: ArrayLike | Sequence[ArrayLike],
) -> MetricDict:
    """IoU of a method's own binary masks and the best reachable with one threshold.

    ``pixel_iou_auto``: mean over all test images of the per-image IoU of the predicted masks
    (an image where both masks are empty scores 1, as in the U-Flow paper's mIoU);
    ``pixel_iou_oracle``: the same mean IoU at the single best threshold of ``anomaly_maps``
    for the whole category (searched over 1000 quantiles of the pooled values).
    """
    from defectscope.segmentation_iou import iou_auto, iou_oracle

    return {"pixel_iou_auto": iou_auto(masks_pred, masks_gt), "pixel_iou_oracle": iou_oracle(anomaly_maps, masks_gt)}
