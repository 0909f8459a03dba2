"""Zero-shot on unseen products: aspect ratio, tiling and the border rule (synthetic, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from defectscope.backbones import get_backbone
from defectscope.backbones._common import input_shape, reflect_pad
from defectscope.errors import BackboneError, ConfigError
from defectscope.methods.musc import (
    MuSc,
    MuScConfig,
    _match_interior,
    border_classes,
    calibrate_border,
    crop_tile,
    side_classes,
    tile_boxes,
)
from defectscope.methods.smoothing import edge_gain, equalise_edges, gaussian_blur, upsample
from defectscope.metrics import pixel_metrics
from defectscope.pipeline import _mask_at
from defectscope.report.overlay import resize_map

pytestmark = pytest.mark.filterwarnings("ignore:mutual scoring of only")


def periodic_texture(
    rng: np.random.Generator, height: int, width: int, period: float = 6.0, shading: float = 0.0
) -> np.ndarray:
    """A fine periodic texture (product of two gratings, random phase) with pixel noise and, with
    ``shading``, a smooth random brightness variation (visible at low resolution), RGB uint8."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 2)
    value = 128 + 60 * np.sin(2 * np.pi * x / period + phase[0]) * np.sin(2 * np.pi * y / period + phase[1])
    value += rng.normal(0, 6, (height, width))
    if shading:
        coarse = Image.fromarray(rng.uniform(0, 255, (5, 5)).astype(np.uint8)).resize((width, height), Image.BILINEAR)
        value += (np.asarray(coarse, np.float64) - 128) * shading
    gray = np.clip(value, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def with_spot(image: np.ndarray, centre: tuple[int, int], radius: float, value: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``image`` with a dark disk, and the disk's mask."""
    y, x = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    mask = (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2
    out = image.copy()
    out[mask] = value
    return out, mask


def test_input_shape_keeps_the_median_aspect_and_area() -> None:
    strips = [np.zeros((100, 300, 3), np.uint8)] * 3 + [np.zeros((100, 100, 3), np.uint8)]
    assert input_shape(strips, 160, 32) == (96, 288)
    assert input_shape([np.zeros((50, 50), np.uint8)], 224, 32) == (224, 224)
    assert input_shape([np.zeros((10, 1000), np.uint8)], 64, 32) == (32, 640)


def test_strip_keeps_its_aspect_in_maps_overlays_and_metrics() -> None:
    rng = np.random.default_rng(0)
    images = [periodic_texture(rng, 64, 192) for _ in range(10)]
    images[3], mask = with_spot(images[3], (32, 160), 6)
    masks = [np.zeros((64, 192), bool)] * 10
    masks[3] = mask
    result = MuSc(MuScConfig(image_size=160)).predict(images)
    assert result.anomaly_maps.shape == (10, 96, 288)
    assert int(np.argmax(result.image_scores)) == 3
    shown = resize_map(result.anomaly_maps[3], (64, 192))
    row, col = np.unravel_index(int(np.argmax(shown)), shown.shape)
    assert abs(row - 32) <= 8 and abs(col - 160) <= 8
    resized = np.stack([_mask_at(m, result.anomaly_maps.shape[-2:]) for m in masks])
    assert resized.shape == (10, 96, 288) and resized[3].any()
    assert pixel_metrics(result.anomaly_maps, resized)["pixel_auroc"] > 0.95
    square = MuSc(MuScConfig(image_size=160, keep_aspect=False)).predict(images[:4])
    assert square.anomaly_maps.shape == (4, 160, 160)


def test_tiles_cover_the_image_and_the_stitched_map() -> None:
    image = np.arange(100 * 60).reshape(100, 60).astype(np.uint8)
    crops = [crop_tile(image, 3, 0.25, r, c) for r in range(3) for c in range(3)]
    assert crops[0][0, 0] == image[0, 0] and crops[-1][-1, -1] == image[-1, -1]
    assert all(abs(c.shape[0] - 40) <= 1 and abs(c.shape[1] - 24) <= 1 for c in crops)
    boxes = tile_boxes((32, 48), 3, 0.25)
    covered = np.zeros((boxes[-1][1], boxes[-1][3]), int)
    for top, bottom, left, right in boxes:
        covered[top:bottom, left:right] += 1
    assert covered.shape == (80, 120) and covered.min() >= 1 and covered.max() == 4
    with pytest.raises(ConfigError, match="tiles"):
        MuScConfig(tiles=0)


def test_a_defect_smaller_than_a_patch_is_found_only_with_tiles() -> None:
    rng = np.random.default_rng(1)
    images = [periodic_texture(rng, 384, 384, period=5.0, shading=0.4) for _ in range(12)]
    images[7], mask = with_spot(images[7], (250, 120), 1.5)
    masks = np.zeros((12, 384, 384), bool)
    masks[7] = mask
    outcomes = {}
    for tiles in (1, 3):
        # The shading gives the batch several looks, so the low MSM interval suits it (as the
        # magnetic tiles, docs/BENCHMARKS.md); the point here is the tiling.
        config = MuScConfig(image_size=64, tiles=tiles, smoothing_sigma=1.0, lower=0.0, upper=0.3)
        result = MuSc(config).predict(images)
        order = np.argsort(-result.image_scores)
        maps = result.anomaly_maps
        outcomes[tiles] = (int(order[0]), maps.shape)
        if tiles == 3:
            shown = resize_map(maps[7], (384, 384))
            row, col = np.unravel_index(int(np.argmax(shown)), shown.shape)
            assert abs(row - 250) <= 24 and abs(col - 120) <= 24
    assert outcomes[3][0] == 7, outcomes
    assert outcomes[1][0] != 7, outcomes
    assert outcomes[1][1] == (12, 64, 64) and outcomes[3][1] == (12, 160, 160)


def test_codegraph_refuses_tiles() -> None:
    from defectscope.methods.codegraph import CoDeGraphConfig

    with pytest.raises(ConfigError, match="tiles=2 is invalid"):
        CoDeGraphConfig(tiles=2)


def test_reflect_border_keeps_the_grid_and_refuses_bad_margins() -> None:
    backbone = get_backbone("efficientnet-lite0", image_size=64, border="reflect")
    batch = backbone.preprocess([np.full((40, 120, 3), 90, np.uint8)], (32, 96))
    features = backbone.extract(batch)
    assert features.grid == (4, 12) and features.layers[1].shape[-2:] == (4, 12)
    flat = get_backbone("efficientnet-lite0", image_size=64, border="zero").extract(batch)
    assert not torch.allclose(features.layers[0], flat.layers[0])
    padded = reflect_pad(torch.arange(6.0).view(1, 1, 2, 3), 4)
    assert padded.shape == (1, 1, 10, 11)
    with pytest.raises(BackboneError, match="border_pad"):
        get_backbone("efficientnet-lite0", border="reflect", border_pad=20)
    with pytest.raises(BackboneError, match="border rule"):
        get_backbone("efficientnet-lite0", border="mirror")


def test_border_calibration_moves_the_peaks_of_normal_textures_off_the_border() -> None:
    rng = np.random.default_rng(2)
    images = [periodic_texture(rng, 160, 160, period=7.0) for _ in range(16)]
    raw = MuSc(MuScConfig(image_size=160, border_depth=0)).patch_scores(images)
    grid = raw.grid
    ring = border_classes(grid, 1) != 3
    calibrated = calibrate_border(raw.patch_scores, grid, 2)

    def share(scores: torch.Tensor) -> float:
        return float(ring[scores.argmax(dim=1)].float().mean())

    assert share(raw.patch_scores) > 0.5
    assert share(calibrated) < share(raw.patch_scores) - 0.3
    interior = border_classes(grid, 2) == 8
    assert torch.equal(calibrated[:, interior], raw.patch_scores[:, interior])
    assert torch.equal(calibrate_border(raw.patch_scores, grid, 0), raw.patch_scores)


def test_side_classes_split_each_ring_by_its_nearest_edge() -> None:
    classes = side_classes((6, 8), 2).view(6, 8)
    assert classes[0, 3] == 0 and classes[5, 3] == 1 and classes[3, 0] == 2 and classes[3, 7] == 3
    assert classes[1, 3] == 4 and classes[2, 1] == 6 and classes[2, 3] == 8
    assert int((classes == 8).sum()) == 2 * 4


def test_border_calibration_evens_out_one_raised_side() -> None:
    # Noise maps whose top row runs high (a scan edge on one side only): pooled over the four
    # sides the ring is barely above the interior, so only the per-side pass brings the peaks back.
    generator = torch.Generator().manual_seed(1)
    grid = (20, 20)
    scores = torch.randn(400, 400, generator=generator)
    top = side_classes(grid, 1) == 0
    scores[:, top] = 2.0 + 1.5 * scores[:, top]

    def top_share(values: torch.Tensor) -> float:
        return float(top[values.argmax(dim=1)].float().mean())

    area = float(top.float().mean())
    pooled_only = _match_interior(scores, border_classes(grid, 2), 8)
    assert top_share(pooled_only) > 5 * area
    assert top_share(calibrate_border(scores, grid, 2)) < 0.4 * top_share(pooled_only)


def test_equalised_edges_make_blurred_noise_vary_alike_everywhere() -> None:
    generator = torch.Generator().manual_seed(3)
    grid, size, sigma = (14, 14), (112, 112), 4.0
    noise = torch.randn(600, 14 * 14, generator=generator)
    maps = gaussian_blur(upsample(noise, grid, size), sigma)
    spread = maps.std(dim=0)
    assert float(spread[0, 0] / spread[56, 56]) > 1.12  # the blur keeps more swing in a corner
    evened = equalise_edges(maps, grid, sigma).std(dim=0)
    assert abs(float(evened[0, 0] / evened[56, 56]) - 1) < 0.08
    assert abs(float(evened[0, 56] / evened[56, 56]) - 1) < 0.08
    gain = edge_gain(grid, size, sigma)
    assert gain.shape == size and float(gain[0, 0]) > float(gain[0, 56]) > 1.0 > float(gain.min())


def test_border_calibration_keeps_a_border_defect_on_top() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = 1.0 + 0.05 * torch.rand(6, 256, generator=generator)
    classes = border_classes((16, 16), 2)
    scores[:, classes != 8] += 0.3
    scores[4, 0] += 1.0
    calibrated = calibrate_border(scores, (16, 16), 2)
    assert torch.equal(calibrate_border(scores[:, :100], (10, 10), 2), scores[:, :100])
    assert int(calibrated.amax(dim=1).argmax()) == 4 and int(calibrated[4].argmax()) == 0
    assert float(calibrated[:, classes != 8].median()) <= float(calibrated[:, classes == 8].median()) + 0.01
