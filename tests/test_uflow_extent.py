"""U-Flow mask extent rules (methods/uflow/extent.py) on small synthetic maps and latents."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from defectscope.errors import ConfigError
from defectscope.methods.uflow import UFlowConfig, nfa
from defectscope.methods.uflow.extent import ExtentRule, calibration_level, extent_mask, level_components_touching
from defectscope.segmentation_iou import image_ious

DEFAULT_RULE = UFlowConfig().extent_rule()
HEIGHT_RULE = UFlowConfig(extent_cut_rule="height").extent_rule()


def _normal_energy(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Smooth normal-looking values of -log(likelihood) around 0.5."""
    return 0.5 + 0.05 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.0) / 0.14


def _normal_map(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A normal anomaly map, 1 - likelihood as U-Flow's."""
    return 1.0 - np.exp(-_normal_energy(rng, size))


def _planted(rng: np.random.Generator, strength: float = 4.0, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map, true disk, blocky detection): a disk of radius 8 whose energy spreads well beyond it
    (blurred with sigma 4, as the backbone's receptive field and the map smoothing do), the map
    1 - exp(-energy) saturating near 1 inside, and a detection made of two 16-pixel cells."""
    ys, xs = np.mgrid[0:size, 0:size]
    truth = (ys - 30) ** 2 + (xs - 36) ** 2 <= 8 ** 2
    bump = ndimage.gaussian_filter(truth.astype(float), 4.0)
    amap = 1.0 - np.exp(-(_normal_energy(rng, size) + strength * bump / bump.max()))
    detected = np.zeros((size, size), dtype=bool)
    detected[16:48, 32:48] = True
    return amap, truth, detected


def test_calibration_level_is_a_quantile_of_the_normal_maps() -> None:
    maps = np.random.default_rng(0).random((3, 8, 8))
    assert calibration_level(maps, 1.0) == maps.max()
    assert calibration_level(maps, 0.5) == pytest.approx(np.median(maps))
    assert calibration_level(maps, 0.99) <= calibration_level(maps, 0.999) <= maps.max()
    with pytest.raises(ValueError):
        calibration_level(np.zeros((0, 4, 4)), 0.5)


def test_rule_settings_are_checked() -> None:
    for bad in ({"quantile": 0.0}, {"quantile": 1.5}, {"fraction": 1.0}, {"fraction": -0.1},
                {"base_quantile": 1.0}, {"otsu": True, "fraction": 0.3}):
        with pytest.raises(ValueError):
            ExtentRule(**bad)
    with pytest.raises(ValueError, match="base"):
        extent_mask(ExtentRule(1.0, 0.5, base_quantile=0.5), np.ones((4, 4), bool), np.ones((4, 4)), 0.5)
    for bad in ({"extent_quantile": 0.0}, {"extent_cut": 1.0}, {"extent_cut_rule": "peak"}):
        with pytest.raises(ConfigError, match="extent"):
            UFlowConfig(**bad)


@pytest.mark.parametrize("rule", [DEFAULT_RULE, HEIGHT_RULE])
@pytest.mark.parametrize("strength", [2.0, 4.0, 8.0])
def test_a_planted_region_gets_its_own_outline_however_strong(strength: float, rule: ExtentRule) -> None:
    rng = np.random.default_rng(1)
    normals = np.stack([_normal_map(rng) for _ in range(4)])
    amap, truth, detected = _planted(rng, strength)
    mask = extent_mask(rule, detected, amap, calibration_level(normals, rule.quantile))
    iou = image_ious(mask[None], truth[None])[0]
    assert iou >= 0.7
    whole = level_components_touching(detected, amap, calibration_level(normals, 1.0))
    assert iou >= image_ious(whole[None], truth[None])[0] + 0.3  # the old rule: the whole component


@pytest.mark.parametrize("rule", [ExtentRule(), DEFAULT_RULE, HEIGHT_RULE, ExtentRule(0.9, 0.5),
                                  ExtentRule(1.0, 0.5, log=True, base_quantile=0.5)])
def test_no_mask_without_a_detection_and_none_away_from_it(rule: ExtentRule) -> None:
    rng = np.random.default_rng(2)
    amap, _, detected = _planted(rng)
    amap[2:6, 2:6] = 0.95  # bright, above every level, but never detected
    normals = np.stack([_normal_map(rng) for _ in range(2)])
    level, base = calibration_level(normals, rule.quantile), calibration_level(normals, 0.5)
    assert not extent_mask(rule, np.zeros_like(detected), amap, level, base).any()
    mask = extent_mask(rule, detected, amap, level, base)
    assert mask.any() and not mask[2:6, 2:6].any()
    assert np.all(mask <= level_components_touching(detected, amap, level))


def test_on_pure_noise_latents_the_share_of_images_with_a_mask_stays_below_the_level() -> None:
    config = UFlowConfig()
    rng = np.random.default_rng(3)
    masked, runs = 0, 40
    for _ in range(runs):
        latents = [rng.standard_normal((8, 16, 16)), rng.standard_normal((16, 8, 8))]
        detected = nfa.detect(latents, 64, epsilon=config.epsilon, max_region_fraction=config.max_region_fraction)
        amap = _normal_map(rng)
        masked += extent_mask(DEFAULT_RULE, detected, amap, calibration_level(amap, config.extent_quantile)).any()
    assert masked <= 0.05 * runs  # the bound is epsilon false regions per image; the test is conservative


def test_a_faint_region_keeps_its_component_and_a_strong_one_is_cut_from_the_base() -> None:
    rng = np.random.default_rng(4)
    normals = np.stack([_normal_map(rng) for _ in range(4)])
    level, base = calibration_level(normals, 1.0), calibration_level(normals, 0.5)
    rule = ExtentRule(1.0, 0.5, log=True, base_quantile=0.5)
    for strength, keeps_all in ((0.3, True), (8.0, False)):
        amap, _, detected = _planted(rng, strength)
        whole = level_components_touching(detected, amap, level)
        mask = extent_mask(rule, detected, amap, level, base)
        assert whole.any() and np.array_equal(mask, whole) == keeps_all


def test_otsu_cut_splits_a_region_at_its_own_value_gap() -> None:
    amap = np.full((32, 32), 0.1)
    amap[8:24, 8:24] = 0.6  # rim
    amap[12:20, 12:20] = 0.99  # core
    detected = np.zeros_like(amap, dtype=bool)
    detected[15, 15] = True
    mask = extent_mask(ExtentRule(1.0, log=True, otsu=True), detected, amap, 0.5)
    assert mask.sum() == 64 and mask[12:20, 12:20].all()
