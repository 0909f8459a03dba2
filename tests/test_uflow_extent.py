"""U-Flow mask extent rules (methods/uflow/extent.py) on small synthetic maps and latents."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from defectscope.errors import ConfigError
from defectscope.methods.uflow import UFlowConfig, nfa
from defectscope.methods.uflow.extent import ExtentRule, calibration_level, extent_mask, level_components_touching
from defectscope.segmentation_iou import image_ious

DEFAULT_RULE = ExtentRule(UFlowConfig().extent_quantile, UFlowConfig().extent_cut, log=True)


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
    for bad in ({"quantile": 0.0}, {"quantile": 1.5}, {"fraction": 1.0}, {"fraction": -0.1}):
        with pytest.raises(ValueError):
            ExtentRule(**bad)
    for bad in ({"extent_quantile": 0.0}, {"extent_cut": 1.0}):
        with pytest.raises(ConfigError, match="extent"):
            UFlowConfig(**bad)


@pytest.mark.parametrize("strength", [2.0, 4.0, 8.0])
def test_a_planted_region_gets_its_own_outline_however_strong(strength: float) -> None:
    rng = np.random.default_rng(1)
    normals = np.stack([_normal_map(rng) for _ in range(4)])
    amap, truth, detected = _planted(rng, strength)
    mask = extent_mask(DEFAULT_RULE, detected, amap, calibration_level(normals, DEFAULT_RULE.quantile))
    iou = image_ious(mask[None], truth[None])[0]
    assert iou >= 0.7
    whole = level_components_touching(detected, amap, calibration_level(normals, 1.0))
    assert iou >= image_ious(whole[None], truth[None])[0] + 0.3  # the old rule: the whole component


@pytest.mark.parametrize("rule", [ExtentRule(), DEFAULT_RULE, ExtentRule(0.9, 0.5)])
def test_no_mask_without_a_detection_and_none_away_from_it(rule: ExtentRule) -> None:
    rng = np.random.default_rng(2)
    amap, _, detected = _planted(rng)
    amap[2:6, 2:6] = 0.95  # bright, above every level, but never detected
    level = calibration_level(np.stack([_normal_map(rng) for _ in range(2)]), rule.quantile)
    assert not extent_mask(rule, np.zeros_like(detected), amap, level).any()
    mask = extent_mask(rule, detected, amap, level)
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
