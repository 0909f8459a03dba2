"""A contrario detection (U-Flow NFA) and the IoU helpers: pure functions on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defectscope.methods.uflow import nfa
from defectscope.segmentation_iou import image_ious, iou_auto, iou_oracle, iou_oracle_threshold

CHANNELS, SIDE = 32, 16


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((CHANNELS, SIDE, SIDE))


def _planted(seed: int, shift: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    latent = _noise(seed)
    truth = np.zeros((SIDE, SIDE), dtype=bool)
    truth[5:11, 4:10] = True
    latent[:, truth] += shift
    return latent, truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


@pytest.mark.parametrize("method", ["region", "region-half", "region-capped", "block"])
def test_pure_noise_gives_at_most_one_false_region_per_image_on_average(method: str) -> None:
    counts = []
    for seed in range(50):
        latent = _noise(seed)
        if method == "region":
            log_nfa = nfa.region_log_nfa_map(latent)
        elif method == "region-half":  # U-Flow's default cap
            log_nfa = nfa.region_log_nfa_map(latent, max_region_fraction=0.5)
        elif method == "region-capped":
            log_nfa = nfa.region_log_nfa_map(latent, max_region_fraction=0.05)
        else:
            log_nfa = nfa.block_log_nfa_map(latent)
        counts.append(nfa.count_regions(log_nfa, epsilon=1.0))
    assert np.mean(counts) <= 1.0


def test_region_nfa_on_noise_is_mostly_silent() -> None:
    false_images = sum(nfa.detect([_noise(seed)], SIDE).any() for seed in range(50))
    assert false_images <= 5


@pytest.mark.parametrize("method", ["region", "block"])
def test_planted_shifted_block_is_detected(method: str) -> None:
    for seed in range(3):
        latent, truth = _planted(seed)
        mask = nfa.detect([latent], SIDE, method=method)
        assert _iou(mask, truth) > 0.5, f"seed {seed}: IoU {_iou(mask, truth):.2f}"


def test_detection_is_upsampled_to_the_input_size_and_combines_scales() -> None:
    latent, truth = _planted(0)
    coarse = _noise(99)[:, ::2, ::2]
    mask = nfa.detect([latent, coarse], 4 * SIDE)
    big_truth = np.kron(truth, np.ones((4, 4), dtype=bool))
    assert mask.shape == (4 * SIDE, 4 * SIDE)
    assert _iou(mask, big_truth) > 0.5


def test_smaller_epsilon_detects_less() -> None:
    latent, _ = _planted(1, shift=1.0)
    loose = nfa.detect([latent], SIDE, epsilon=1e3)
    strict = nfa.detect([latent], SIDE, epsilon=1e-30)
    assert loose.sum() >= strict.sum()
    assert not (strict & ~loose).any()


def test_region_log_nfa_of_a_single_extreme_pixel_matches_the_formula() -> None:
    latent = np.zeros((CHANNELS, 5, 5))
    latent[:, 2, 2] = 6.0
    statistic = CHANNELS * 36.0
    from scipy import stats

    expected = nfa.log_number_of_tests(25) + stats.chi2.logsf(statistic, CHANNELS)
    assert nfa.region_log_nfa_map(latent)[2, 2] == pytest.approx(float(expected))
    assert float(nfa.log_polyomino_count(1)) >= 0.0
    assert math.exp(float(nfa.log_polyomino_count(4))) >= 19


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        nfa.detect([_noise(0)], SIDE, epsilon=0)
    with pytest.raises(ValueError):
        nfa.detect([_noise(0)], SIDE, method="pixels")
    with pytest.raises(ValueError):
        nfa.block_log_nfa_map(_noise(0), window=2)


def test_iou_auto_counts_empty_pairs_as_one() -> None:
    gt = np.zeros((3, 4, 4), dtype=bool)
    gt[0, :2, :2] = True
    pred = np.zeros_like(gt)
    pred[0, :2, :] = True
    pred[2, 0, 0] = True
    assert image_ious(pred, gt).tolist() == [0.5, 1.0, 0.0]
    assert iou_auto(pred, gt) == pytest.approx(0.5)


def test_iou_oracle_finds_the_best_threshold_and_bounds_any_fixed_one() -> None:
    rng = np.random.default_rng(0)
    gt = np.zeros((4, 16, 16), dtype=bool)
    gt[0, 2:6, 2:6] = True
    gt[1, 8:12, 3:9] = True
    maps = rng.random(gt.shape) * 0.5 + gt * 0.6
    best, threshold = iou_oracle_threshold(maps, gt)
    assert best == pytest.approx(1.0)
    assert iou_auto(maps >= threshold, gt) == pytest.approx(best)
    for t in (0.2, 0.55, 0.8, 2.0):
        assert iou_auto(maps >= t, gt) <= iou_oracle(maps, gt) + 1e-12


def test_iou_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError):
        iou_auto(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError):
        iou_oracle(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))


def test_region_nfa_refuses_too_small_grids_clearly() -> None:
    from defectscope.errors import ConfigError
    from defectscope.methods.uflow.nfa import region_log_nfa_map

    with pytest.raises(ConfigError, match="at least 3x3"):
        region_log_nfa_map(np.zeros((4, 2, 2)))


def test_level_components_keep_only_regions_touching_a_detection() -> None:
    from defectscope.methods.uflow.extent import level_components_touching

    amap = np.zeros((10, 10))
    amap[1:4, 1:4] = 0.9   # touched by the detection below
    amap[6:9, 6:9] = 0.8   # above the level but never detected
    amap[2, 5] = 0.95      # isolated bright pixel, not connected (4-neighbourhood) to either
    detected = np.zeros((10, 10), dtype=bool)
    detected[0:3, 0:3] = True  # a blocky coarse detection overlapping the first region
    mask = level_components_touching(detected, amap, 0.5)
    expected = np.zeros((10, 10), dtype=bool)
    expected[1:4, 1:4] = True
    assert np.array_equal(mask, expected)
    assert not level_components_touching(np.zeros((10, 10), bool), amap, 0.5).any()
    with pytest.raises(ValueError, match="shape"):
        level_components_touching(detected, amap[:5], 0.5)


def test_capping_the_region_size_shrinks_the_number_of_tests_and_skips_larger_regions() -> None:
    full = nfa.log_number_of_tests(256)
    half = nfa.log_number_of_tests(256, max_size=128)
    assert half < full and half == pytest.approx(full - 128 * math.log(nfa.POLYOMINO_GROWTH), rel=0.02)
    latent, truth = _planted(0)
    capped = nfa.region_log_nfa_map(latent, max_region_fraction=0.5)
    uncapped = nfa.region_log_nfa_map(latent)
    assert _iou(capped <= 0, truth) > 0.5  # the planted block is smaller than half the grid
    assert np.count_nonzero(capped <= 0) >= np.count_nonzero(uncapped <= 0)
    with pytest.raises(ValueError, match="max_region_fraction"):
        nfa.region_log_nfa_map(latent, max_region_fraction=0.0)


def test_region_nfa_from_the_statistic_equals_the_one_from_latents() -> None:
    latent = np.random.default_rng(4).standard_normal((6, 9, 9))
    from_latent = nfa.region_log_nfa_map(latent, 2, 0.5)
    from_statistic = nfa.region_log_nfa_from_statistic((latent ** 2).sum(axis=0), 6, 2, 0.5)
    assert np.array_equal(from_latent, from_statistic)
