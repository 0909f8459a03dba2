"""The crop proxy (bench/pose_proxy.py, docs/POSE_CROP.md): no padding, masks aligned."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from pose_proxy import (  # noqa: E402
    crop_category,
    crop_coefficients,
    crop_points,
    crop_turned,
    crop_window,
    draw_pose,
)

from defectscope.data.layouts import Category, Sample  # noqa: E402

SHAPES = [(40, 60), (116, 290), (611, 261), (128, 127), (300, 300)]


@pytest.mark.parametrize("shape", SHAPES)
def test_window_lies_inside_the_photograph_at_every_angle(shape):
    height, width = shape
    out = max(8, round(0.8 * min(shape) / math.sqrt(2)))
    for seed in range(8):
        _, scale, shift = draw_pose(np.random.default_rng(seed))
        for scale_ in (scale, 0.8, 1.25):
            side, offset, factor = crop_window(height, width, scale_, shift, out)
            for angle in np.arange(0.0, 360.0, 11.25):
                points = crop_points(height, width, float(angle), side, offset, out)
                # a bilinear tap of the box-reduced image reaches half a reduced pixel (factor / 2
                # source pixels) past the sample point; every point lies a whole one inside
                reach = factor
                assert points[:, 0].min() >= reach and points[:, 0].max() <= width - reach
                assert points[:, 1].min() >= reach and points[:, 1].max() <= height - reach


@pytest.mark.parametrize("shape", SHAPES)
def test_no_output_pixel_comes_from_outside(shape):
    # PIL fills what lies outside the source with 0: a flat photograph of 200 must stay 200
    flat = np.full(shape + (3,), 200, dtype=np.uint8)
    out = max(8, round(0.8 * min(shape) / math.sqrt(2)))
    for seed in range(10):
        angle, scale, shift = draw_pose(np.random.default_rng(seed))
        for scale_ in (scale, 0.8):
            cut = crop_turned(flat, angle, scale_, shift, out)
            assert cut.shape == (out, out, 3) and cut.min() == 200


def test_the_sentinel_check_sees_a_window_that_is_too_large():
    # the same check fails for a window as large as the photograph's side turned by 45 degrees
    flat = Image.fromarray(np.full((60, 60), 200, dtype=np.uint8))
    coefficients = crop_coefficients(60, 60, 45.0, 60.0, (0.0, 0.0), 60)
    cut = np.asarray(flat.transform((60, 60), Image.AFFINE, coefficients, resample=Image.BILINEAR))
    assert cut.min() == 0


def test_masks_stay_binary_and_aligned_with_the_image():
    rng = np.random.default_rng(3)
    image = np.full((300, 220, 3), 40, dtype=np.uint8)
    mask = np.zeros((300, 220), dtype=np.uint8)
    for top, left in ((120, 90), (150, 60), (100, 120)):
        image[top : top + 30, left : left + 25] = 230
        mask[top : top + 30, left : left + 25] = 255
    for seed in range(12):
        angle, scale, shift = draw_pose(rng)
        cut_image = crop_turned(image, angle, scale, shift, 124)
        cut_mask = crop_turned(mask, angle, scale, shift, 124, nearest=True)
        assert cut_mask.shape == cut_image.shape[:2]
        assert set(np.unique(cut_mask)) <= {0, 255}
        bright = cut_image[..., 0] > 135
        marked = cut_mask > 127
        assert marked.any()
        # the same pixels, up to the one-pixel rim that bilinear sampling blurs
        disagree = (bright != marked).sum()
        assert disagree <= 0.25 * marked.sum(), (seed, disagree, marked.sum())


def test_aligned_crop_at_angle_zero_is_a_plain_crop():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (100, 120), dtype=np.uint8)
    # window of 40 source pixels to 40 output pixels, centre offset (-3, 5): left 37, top 35
    coefficients = crop_coefficients(100, 120, 0.0, 40.0, (-3.0, 5.0), 40)
    for source in (array, grey):
        for resample in (Image.BILINEAR, Image.NEAREST):
            cut = np.asarray(Image.fromarray(source).transform((40, 40), Image.AFFINE, coefficients, resample=resample))
            assert np.array_equal(cut, source[35:75, 37:77])


def test_crop_window_shortens_the_shift_only_as_needed():
    # at the smallest scale the window fills the disc's square: no shift is left
    side, offset, _ = crop_window(200, 200, 0.8, (0.08, -0.08), 100)
    assert offset == (0.0, 0.0) or max(map(abs, offset)) < 1e-6
    # at the largest scale the drawn shift (16 px) fits and is kept
    side, offset, _ = crop_window(200, 200, 1.25, (0.08, -0.08), 100)
    assert offset == pytest.approx((16.0, -16.0))
    half, radius = side / 2, 100 - 2
    assert (abs(offset[0]) + half) ** 2 + (abs(offset[1]) + half) ** 2 <= radius**2 + 1e-6


def test_crop_category_writes_its_own_folder_and_relabels_lost_defects(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    samples = []
    for index in range(4):
        image = np.full((90, 90, 3), 100, dtype=np.uint8)
        mask = np.zeros((90, 90), dtype=np.uint8)
        if index == 1:
            mask[40:50, 40:50] = 255  # centre: stays in every window
        if index == 2:
            mask[0:4, 0:4] = 255  # a corner: outside the inscribed disc, leaves every window
        Image.fromarray(image).save(source / f"{index}.png")
        mask_path = None
        if index in (1, 2):
            Image.fromarray(mask).save(source / f"{index}_mask.png")
            mask_path = source / f"{index}_mask.png"
        samples.append(Sample(source / f"{index}.png", 1 if index in (1, 2) else 0, mask_path, "spot" if index in (1, 2) else None))
    category = Category("toy", source, "mvtec", [], samples, True)
    turned, counts = crop_category(category, seed=0, turned=True, cache=tmp_path / "cache")
    aligned, counts_aligned = crop_category(category, seed=0, turned=False, cache=tmp_path / "cache")
    assert counts == counts_aligned == {"defective": 2, "left_window": 1, "lost": [2]}
    assert [s.label for s in turned.test] == [0, 1, 0, 0]
    assert turned.root != aligned.root and "crop-seed0" in str(turned.root)
    for sample in turned.test + aligned.test:
        assert Image.open(sample.path).size == (51, 51)  # round(0.8 * 90 / sqrt 2)


def test_crop_category_drops_the_images_it_is_told_to(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    samples = []
    for index in range(3):
        Image.fromarray(np.full((40, 40), 90 + index, dtype=np.uint8)).save(source / f"{index}.png")
        samples.append(Sample(source / f"{index}.png", 0))
    category = Category("toy", source, "mvtec", [], samples, False)
    kept, counts = crop_category(category, turned=False, cache=tmp_path / "cache", drop={1})
    assert [int(np.asarray(Image.open(s.path)).mean()) for s in kept.test] == [90, 92]
    assert counts == {"defective": 0, "left_window": 0, "lost": []}


def test_a_photograph_too_small_for_the_window_is_named(tmp_path):
    Image.fromarray(np.zeros((3, 40), dtype=np.uint8)).save(tmp_path / "thin.png")
    category = Category("toy", tmp_path, "mvtec", [], [Sample(tmp_path / "thin.png", 0)], False)
    with pytest.raises(ValueError, match="thin.png: an image of 40 x 3 pixels is too small"):
        crop_category(category, cache=tmp_path / "cache")


def test_the_crop_proxys_side_by_side_table_names_aligned_and_turned():
    from suite import side_by_side

    row = {"image_auroc": 0.9, "pixel_auroc": 0.8, "pixel_ap": 0.5}
    crop = side_by_side({"bottle": row}, {"bottle": row}, ("aligned", "turned")).splitlines()
    assert crop[0] == ("| category | I-AUROC aligned | I-AUROC turned | P-AUROC aligned | P-AUROC turned "
                       "| P-AP aligned | P-AP turned |")
    assert "pose" not in crop[0] and crop[2] == "| bottle | 90.0 | 90.0 | 80.0 | 80.0 | 50.0 | 50.0 |"
    # the pose proxy's table keeps its header
    assert side_by_side({"bottle": row}, {"bottle": row}).splitlines()[0] == (
        "| category | I-AUROC | I-AUROC pose | P-AUROC | P-AUROC pose | P-AP | P-AP pose |")
