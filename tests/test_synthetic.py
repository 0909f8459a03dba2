"""Tests for defectscope.data.synthetic: exact masks, determinism, recurring defects, writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defectscope.data import (
    DEFECT_KINDS,
    mvtec_category,
    read_image,
    read_mask,
    synthetic_images,
    write_mvtec_category,
)
from defectscope.errors import ConfigError


@pytest.mark.parametrize("kind", ["texture", "object"])
@pytest.mark.parametrize("defect", [None, *DEFECT_KINDS, "recurring", 7])
def test_mask_is_exactly_the_changed_pixels(kind: str, defect: str | int | None) -> None:
    clean, clean_masks = synthetic_images(5, kind=kind, size=64, seed=2)
    images, masks = synthetic_images(
        5, kind=kind, size=64, seed=2, defective=(1, 3, 4), defect=defect
    )
    for index in range(5):
        assert images[index].shape == (64, 64, 3) and images[index].dtype == np.uint8
        assert masks[index].shape == (64, 64) and masks[index].dtype == bool
        assert not clean_masks[index].any()
        changed = np.any(images[index] != clean[index], axis=-1)
        assert np.array_equal(masks[index], changed)
        assert masks[index].any() == (index in (1, 3, 4))


def test_object_defects_stay_on_the_object() -> None:
    clean, _ = synthetic_images(6, kind="object", size=64, seed=5)
    _, masks = synthetic_images(6, kind="object", size=64, seed=5, defective=range(6))
    for image, mask in zip(clean, masks):
        object_pixels = image.min(axis=-1) >= 110
        assert not (mask & ~object_pixels).any()


def test_deterministic_for_a_seed() -> None:
    first = synthetic_images(4, kind="object", size=48, defective=(0, 2), seed=11)
    second = synthetic_images(4, kind="object", size=48, defective=(0, 2), seed=11)
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert np.array_equal(a, b)
    other, _ = synthetic_images(4, kind="object", size=48, defective=(0, 2), seed=12)
    assert not np.array_equal(first[0][1], other[1])


def test_normal_images_vary_but_look_alike() -> None:
    images, _ = synthetic_images(3, kind="texture", size=64, seed=0)
    assert not np.array_equal(images[0], images[1])
    means = [image.mean(axis=(0, 1)) for image in images]
    assert np.abs(means[0] - means[1]).max() < 10


def test_recurring_defect_is_identical_everywhere() -> None:
    images, masks = synthetic_images(
        6, kind="object", size=64, seed=4, defective=(1, 2, 5), defect="recurring"
    )
    assert np.array_equal(masks[1], masks[2]) and np.array_equal(masks[1], masks[5])
    patch = images[1][masks[1]]
    assert np.array_equal(images[2][masks[2]], patch)
    assert np.array_equal(images[5][masks[5]], patch)
    assert masks[1].sum() >= 20


def test_defect_seed_fixes_the_defect_across_calls() -> None:
    options = {"kind": "texture", "size": 64, "defect": 9}
    a_images, a_masks = synthetic_images(2, seed=0, defective=(0,), **options)
    b_images, b_masks = synthetic_images(3, seed=1, defective=(2,), **options)
    assert np.array_equal(a_masks[0], b_masks[2])
    assert np.array_equal(a_images[0][a_masks[0]], b_images[2][b_masks[2]])
    _, c_masks = synthetic_images(1, kind="texture", size=64, seed=0, defective=(0,), defect=10)
    assert not np.array_equal(a_masks[0], c_masks[0])


@pytest.mark.parametrize(
    "arguments",
    [
        {"kind": "sphere"},
        {"defective": (5,)},
        {"defect": "dent"},
        {"size": 8},
        {"seed": -1},
    ],
)
def test_bad_parameters(arguments: dict) -> None:
    with pytest.raises(ConfigError):
        synthetic_images(3, **{"defective": (0,), **arguments})


@pytest.mark.parametrize("suffix", ["_mask", ""])
def test_write_mvtec_category_round_trip(tmp_path: Path, suffix: str) -> None:
    root = write_mvtec_category(
        tmp_path / "toy",
        kind="texture",
        n_train=3,
        n_test_good=2,
        n_test_defect=4,
        size=32,
        seed=1,
        mask_suffix=suffix,
    )
    category = mvtec_category(root)
    assert len(category.train) == 3 and len(category.test) == 6 and category.has_masks
    defective = [s for s in category.test if s.label == 1]
    assert len(defective) == 4
    assert all(s.defect_type in DEFECT_KINDS for s in defective)
    images, masks = synthetic_images(9, kind="texture", size=32, seed=1, defective=range(5, 9))
    assert np.array_equal(read_image(category.train[0].path), images[0])
    written_masks = sorted(int(read_mask(s.mask_path).sum()) for s in defective)
    assert written_masks == sorted(int(m.sum()) for m in masks[5:])


def test_write_mvtec_category_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("another run")
    with pytest.raises(FileExistsError):
        write_mvtec_category(tmp_path, n_train=1, n_test_good=1, n_test_defect=1, size=32)
    assert (tmp_path / "keep.txt").read_text() == "another run"
