"""Varied synthetic defects for choosing U-Flow's mask rule (methods/uflow/synthetic.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from defectscope.methods.uflow.synthetic import SHAPES, defect_shape, varied_defect


def _image(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = ndimage.gaussian_filter(rng.random((size, size)), 2.0)
    grey = (grey - grey.min()) / (grey.max() - grey.min())
    return np.repeat((60 + 120 * grey)[..., None], 3, axis=2).astype(np.uint8)


@pytest.mark.parametrize("kind", SHAPES)
def test_each_shape_is_one_region_of_its_size_inside_the_allowed_area(kind: str) -> None:
    shape = (128, 128)
    allowed = np.zeros(shape, dtype=bool)
    allowed[16:112, 16:112] = True
    shares = []
    for seed in range(12):
        mask = defect_shape(kind, shape, allowed, np.random.default_rng(seed))
        assert mask.any() and not (mask & ~allowed).any()
        shares.append(mask.mean())
    whole = np.ones(shape, dtype=bool)
    unclipped = [defect_shape(kind, shape, whole, np.random.default_rng(seed)).mean() for seed in range(12)]
    low, high = {"blob": (0.001, 0.09), "large": (0.04, 0.4), "elongated": (0.002, 0.09), "thin": (0.002, 0.06)}[kind]
    assert low <= min(unclipped) and max(unclipped) <= high
    if kind == "large":
        assert np.median(unclipped) > 0.08  # large defects really are large
    if kind in ("elongated", "thin"):
        mask = defect_shape(kind, shape, whole, np.random.default_rng(0))
        ys, xs = np.nonzero(mask)
        spread = np.linalg.eigvalsh(np.cov(np.stack([ys, xs])))
        assert spread[1] > 4 * spread[0]  # long and narrow


def test_a_defect_changes_only_its_mask_and_is_reproducible() -> None:
    normal = _image(0)
    others = [_image(1), _image(2)]
    kinds = set()
    for seed in range(16):
        image, mask, kind = varied_defect(normal, np.random.default_rng(seed), other_images=others)
        again, mask_again, _ = varied_defect(normal, np.random.default_rng(seed), other_images=others)
        assert np.array_equal(image, again) and np.array_equal(mask, mask_again)
        assert mask.any() and np.array_equal(image[~mask], normal[~mask])
        kinds.add(kind.split("/")[1])
    assert kinds == {"texture", "patch", "shift"}


def test_the_input_is_left_unchanged_and_bad_input_is_refused() -> None:
    normal = _image(3)
    copy = normal.copy()
    varied_defect(normal, np.random.default_rng(0))
    assert np.array_equal(normal, copy)
    with pytest.raises(ValueError, match="RGB uint8"):
        varied_defect(normal[..., 0], np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown synthetic defect shape"):
        defect_shape("star", (32, 32), np.ones((32, 32), bool), np.random.default_rng(0))
