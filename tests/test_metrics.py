"""Tests for defectscope.metrics against scikit-learn and slow direct references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from defectscope import metrics
from defectscope.metrics import format_metric, image_metrics, pixel_metrics

TOL = 1e-6
SEEDS = [0, 1, 2, 3]


def f1_max_reference(scores: np.ndarray, labels: np.ndarray) -> float:
    """F1 at every distinct threshold (predict anomalous when score >= t), maximised."""
    scores = scores.astype(np.float64).ravel()
    labels = labels.astype(bool).ravel()
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return float(best)


def aupro_reference(maps: list[np.ndarray], masks: list[np.ndarray], limit: float, connectivity: int = 8) -> float:
    """Loop over every distinct score as a threshold; trapezoid of PRO over FPR up to ``limit``."""
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    regions = []
    normal_scores = []
    for m, k in zip(maps, masks):
        k = k.astype(bool)
        lab, n = ndimage.label(k, structure=structure)
        regions += [m[lab == i].astype(np.float64) for i in range(1, n + 1)]
        normal_scores.append(m[~k].astype(np.float64))
    normal = np.concatenate(normal_scores)
    all_scores = np.concatenate([m.ravel().astype(np.float64) for m in maps])
    xs, ys = [0.0], [0.0]
    for t in np.unique(all_scores)[::-1]:
        xs.append(float(np.mean(normal >= t)))
        ys.append(float(np.mean([np.mean(r >= t) for r in regions])))
    area = 0.0
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


def blob_masks(rng: np.random.Generator, n: int, h: int, w: int, n_blobs: int = 3) -> np.ndarray:
    """Random rectangular and single-pixel defects, several per image, some images clean."""
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if i % 4 == 3:
            continue
        for _ in range(rng.integers(1, n_blobs + 1)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            dy, dx = rng.integers(1, 5), rng.integers(1, 5)
            masks[i, y : y + dy, x : x + dx] = True
    return masks


def score_variants(rng: np.random.Generator, shape: tuple[int, ...], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Scores that are continuous, heavily tied, integer, constant and mixed-sign with -0.0."""
    shifted = rng.random(shape) + 0.3 * labels
    signed = np.round(rng.normal(size=shape), 1)
    signed[signed == 0] = rng.choice([0.0, -0.0], size=int(np.sum(signed == 0)))
    return {
        "continuous_f32": shifted.astype(np.float32),
        "continuous_f64": shifted,
        "rounded_f32": np.round(shifted * 4).astype(np.float32) / 4,
        "integer_i64": rng.integers(0, 5, size=shape),
        "integer_u8": rng.integers(0, 3, size=shape).astype(np.uint8),
        "integer_i32": rng.integers(-3, 3, size=shape).astype(np.int32),
        "constant": np.full(shape, 0.7, dtype=np.float32),
        "signed_zero_f32": signed.astype(np.float32),
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_image_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.4
    for name, scores in score_variants(rng, (200,), labels).items():
        res = image_metrics(scores, labels.astype(int))
        assert res["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=TOL), name
        assert res["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=TOL), name
        assert res["image_f1_max"] == pytest.approx(f1_max_reference(scores, labels), abs=TOL), name
        assert all(type(v) is float and 0.0 <= v <= 1.0 for v in res.values()), name


@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 8, 24, 20)
    for name, maps in score_variants(rng, masks.shape, masks).items():
        res = pixel_metrics(maps, masks)
        y, s = masks.ravel(), maps.ravel()
        assert res["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL), name
        assert res["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=TOL), name
        assert res["pixel_f1_max"] == pytest.approx(f1_max_reference(s, y), abs=TOL), name
        assert all(type(v) is float and 0.0 <= v <= 1.0 for v in res.values()), name


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("connectivity", [8, 4])
def test_aupro_matches_slow_reference(seed: int, connectivity: int) -> None:
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 4, 12, 10)
    for name, maps in score_variants(rng, masks.shape, masks).items():
        for limit in (0.3, 0.05, 1.0):
            got = pixel_metrics(maps, masks, pro_fpr_limit=limit, connectivity=connectivity)["pixel_aupro"]
            want = aupro_reference(list(maps), list(masks), limit, connectivity)
            assert got == pytest.approx(want, abs=TOL), (name, limit)


def test_list_of_differently_sized_maps() -> None:
    rng = np.random.default_rng(7)
    shapes = [(10, 12), (7, 5), (16, 16)]
    masks = [blob_masks(rng, 1, h, w)[0] for h, w in shapes]
    masks[1][:] = False
    maps = [(rng.random(s) + 0.5 * k).astype(np.float32) for s, k in zip(shapes, masks)]
    res = pixel_metrics(maps, [k.astype(np.uint8) for k in masks])
    y = np.concatenate([k.ravel() for k in masks])
    s = np.concatenate([m.ravel() for m in maps])
    assert res["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert res["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert res["pixel_f1_max"] == pytest.approx(f1_max_reference(s, y), abs=TOL)
    assert res["pixel_aupro"] == pytest.approx(aupro_reference(maps, masks, 0.3), abs=TOL)


def test_parallel_sort_path_gives_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    masks = blob_masks(rng, 6, 30, 30)
    maps = np.round(rng.random(masks.shape) * 50 + 10 * masks).astype(np.float32)
    serial = pixel_metrics(maps, masks)
    monkeypatch.setattr(metrics, "_PARALLEL_MIN_NEGATIVES", 1)
    monkeypatch.setattr(metrics, "_n_sort_parts", lambda n: 3)
    parallel = pixel_metrics(maps, masks)
    assert parallel == pytest.approx(serial, abs=1e-12)
    assert parallel["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL)


def test_hand_checked_aupro() -> None:
    # One row; regions A = pixels 0-1 (size 2) and B = pixel 5; normal pixels score 0.8, 0.2, 0.3.
    maps = np.array([[[0.9, 0.1, 0.8, 0.2, 0.3, 0.5]]])
    masks = np.array([[[1, 1, 0, 0, 0, 1]]], dtype=bool)
    # t=0.9 -> (FPR 0, PRO 1/4); 0.8 -> (1/3, 1/4); 0.5 -> (1/3, 3/4); 0.3 -> (2/3, 3/4); 0.2 -> (1, 3/4); 0.1 -> (1, 1)
    assert pixel_metrics(maps, masks)["pixel_aupro"] == pytest.approx(0.25, abs=1e-12)
    full = pixel_metrics(maps, masks, pro_fpr_limit=1.0)["pixel_aupro"]
    assert full == pytest.approx(1 / 3 * 0.25 + 2 / 3 * 0.75, abs=1e-12)
    # Limit 0.5 falls on the flat stretch between FPR 1/3 and 2/3: area = 1/3*1/4 + 1/6*3/4.
    half = pixel_metrics(maps, masks, pro_fpr_limit=0.5)["pixel_aupro"]
    assert half == pytest.approx((1 / 12 + 1 / 8) / 0.5, abs=1e-12)


def test_perfect_and_inverted_maps() -> None:
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 4, 16, 16)
    perfect = masks.astype(np.float32)
    res = pixel_metrics(perfect, masks)
    assert res["pixel_aupro"] == pytest.approx(1.0, abs=1e-12)
    assert res["pixel_auroc"] == 1.0 and res["pixel_ap"] == 1.0 and res["pixel_f1_max"] == 1.0
    inverted = (~masks).astype(np.float32) * (1 + rng.random(masks.shape)).astype(np.float32)
    res = pixel_metrics(inverted, masks)
    assert res["pixel_aupro"] == pytest.approx(0.0, abs=1e-12)
    assert res["pixel_auroc"] == pytest.approx(0.0, abs=1e-12)


def test_connectivity_changes_regions() -> None:
    masks = np.array([[[1, 1, 0], [0, 0, 1], [0, 0, 0]]], dtype=bool)
    maps = np.array([[[0.05, 0.05, 0.3], [0.4, 0.5, 0.9], [0.6, 0.2, 0.1]]])
    # 8-connectivity: one region of 3 pixels, 1/3 of it above every normal score -> PRO 1/3.
    assert pixel_metrics(maps, masks)["pixel_aupro"] == pytest.approx(1 / 3, abs=1e-12)
    # 4-connectivity: regions {2 px, 0 found} and {1 px, found} -> PRO 1/2.
    assert pixel_metrics(maps, masks, connectivity=4)["pixel_aupro"] == pytest.approx(0.5, abs=1e-12)


def test_degenerate_inputs_are_none() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random(20)
    assert image_metrics(scores, np.zeros(20)) == {"image_auroc": None, "image_ap": None, "image_f1_max": None}
    assert image_metrics(scores, np.ones(20, dtype=bool)) == {
        "image_auroc": None,
        "image_ap": None,
        "image_f1_max": None,
    }
    maps = rng.random((3, 8, 8)).astype(np.float32)
    for mask in (np.zeros((3, 8, 8), dtype=bool), np.ones((3, 8, 8), dtype=bool)):
        res = pixel_metrics(maps, mask)
        assert set(res) == {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}
        assert all(v is None for v in res.values())


def test_format_metric() -> None:
    assert format_metric(None) == "n/a"
    assert format_metric(0.98765) == "0.988"
    assert format_metric(1.0, digits=1) == "1.0"


def test_invalid_inputs_raise() -> None:
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(maps, masks[:, :3])
    with pytest.raises(ValueError, match="0 and 1"):
        pixel_metrics(maps, masks * 2)
    with pytest.raises(ValueError, match="pro_fpr_limit"):
        pixel_metrics(maps, masks, pro_fpr_limit=0.0)
    with pytest.raises(ValueError, match="connectivity"):
        pixel_metrics(maps, masks, connectivity=6)
    bad = maps.copy()
    bad[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(bad, masks)
    with pytest.raises(ValueError, match="labels"):
        image_metrics([0.1, 0.2], [0, 1, 1])


def test_verdict_metrics_rates_and_undefined_cases():
    from defectscope.metrics import verdict_metrics

    labels = np.array([0, 0, 0, 0, 1, 1])
    flagged = np.array([True, False, False, False, True, False])
    assert verdict_metrics(flagged, labels) == {
        "verdict_false_alarm_rate": 0.25, "verdict_recall": 0.5, "verdict_review_share": 0.0, "verdict_missed": 0.5}
    assert verdict_metrics(flagged[:4], labels[:4])["verdict_recall"] is None
    assert verdict_metrics(flagged[:4], labels[:4])["verdict_false_alarm_rate"] == 0.25
    assert set(verdict_metrics(None, labels).values()) == {None}
    with pytest.raises(ValueError, match="5 verdicts for 6 labels"):
        verdict_metrics(flagged[:5], labels)
    # three outcomes: review is neither a false alarm nor a detection, and not a miss either
    review = np.array([False, True, False, False, False, True])
    assert verdict_metrics(flagged, labels, review) == {
        "verdict_false_alarm_rate": 0.25, "verdict_recall": 0.5, "verdict_review_share": 2 / 6, "verdict_missed": 0.0}
    with pytest.raises(ValueError, match="both anomalous and sent to review"):
        verdict_metrics(flagged, labels, flagged)
