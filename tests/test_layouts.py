"""Tests for defectscope.data.layouts on small hand-made trees and, when present, the real sets."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectscope.data import (
    Category,
    Sample,
    discover,
    magnetic_tile,
    mvtec_category,
    plain_folder,
    read_mask,
)
from defectscope.errors import ConfigError, DatasetError


def _write_image(path: Path, size: tuple[int, int] = (12, 10), value: int = 90) -> Path:
    """Write a small RGB PNG/JPEG of (width, height) ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def _write_mask(path: Path, size: tuple[int, int] = (12, 10), on: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    if on:
        mask[2:5, 3:7] = 255
    Image.fromarray(mask).save(path)
    return path


def _toy_mvtec(root: Path, mask_suffix: str | None = "_mask") -> Path:
    """train/good x3, test/good x2, test/crack x2, test/hole x1; masks unless suffix is None."""
    for name in ("000", "001", "002"):
        _write_image(root / "train" / "good" / f"{name}.png")
    for name in ("000", "001"):
        _write_image(root / "test" / "good" / f"{name}.png")
    for defect_type, names in (("crack", ("000", "001")), ("hole", ("000",))):
        for name in names:
            _write_image(root / "test" / defect_type / f"{name}.png")
            if mask_suffix is not None:
                _write_mask(root / "ground_truth" / defect_type / f"{name}{mask_suffix}.png")
    return root


def _snapshot_tree(root: Path) -> dict[Path, tuple[bytes, int]]:
    return {
        p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()
    }


def _toy_magnetic_tile(root: Path, n_free: int = 10) -> Path:
    for index in range(n_free):
        _write_image(root / "MT_Free" / "Imgs" / f"f{index:02d}.jpg")
        _write_mask(root / "MT_Free" / "Imgs" / f"f{index:02d}.png", on=False)
    for class_name, count in (("Blowhole", 3), ("Uneven", 2)):
        for index in range(count):
            stem = f"{class_name.lower()}{index}"
            _write_image(root / f"MT_{class_name}" / "Imgs" / f"{stem}.jpg")
            empty = class_name == "Uneven" and index == 0
            _write_mask(root / f"MT_{class_name}" / "Imgs" / f"{stem}.png", on=not empty)
    (root / "README.md").write_text("toy\n")
    return root


# ----------------------------------------------------------------------------- MVTec AD


@pytest.mark.parametrize("suffix", ["_mask", ""])
def test_mvtec_category_reads_both_mask_conventions(tmp_path: Path, suffix: str) -> None:
    root = _toy_mvtec(tmp_path / "widget", mask_suffix=suffix)
    before = _snapshot_tree(root)
    category = mvtec_category(root)
    assert isinstance(category, Category)
    assert (category.name, category.layout, category.has_masks) == ("widget", "mvtec", True)
    assert [s.path.name for s in category.train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.mask_path is None for s in category.train)
    assert [s.label for s in category.test] == [1, 1, 0, 0, 1]
    assert [s.defect_type for s in category.test] == ["crack", "crack", None, None, "hole"]
    defective = [s for s in category.test if s.label == 1]
    expected = root / "ground_truth" / "crack" / f"000{suffix}.png"
    assert defective[0].mask_path == expected
    assert read_mask(defective[0].mask_path, expected_shape=(10, 12)).sum() == 12
    assert _snapshot_tree(root) == before


def test_mvtec_category_without_ground_truth_has_image_labels_only(tmp_path: Path) -> None:
    category = mvtec_category(_toy_mvtec(tmp_path / "widget", mask_suffix=None))
    assert category.has_masks is False
    assert all(s.mask_path is None for s in category.test)
    assert sum(s.label for s in category.test) == 3


def test_defective_image_without_mask(tmp_path: Path) -> None:
    root = _toy_mvtec(tmp_path / "widget")
    (root / "ground_truth" / "crack" / "001_mask.png").unlink()
    before = _snapshot_tree(root)
    with pytest.raises(DatasetError) as info:
        mvtec_category(root)
    message = str(info.value)
    image = root / "test" / "crack" / "001.png"
    assert f"'{image}'" in message and "no mask" in message
    assert str(root / "ground_truth" / "crack" / "001_mask.png") in message
    assert str(root / "ground_truth" / "crack" / "001.png") in message
    assert _snapshot_tree(root) == before


def test_two_candidate_masks_are_not_guessed(tmp_path: Path) -> None:
    root = _toy_mvtec(tmp_path / "widget")
    _write_mask(root / "ground_truth" / "hole" / "000.png")
    with pytest.raises(DatasetError, match="two possible masks"):
        mvtec_category(root)


def test_mask_size_mismatch_names_both_files_and_sizes(tmp_path: Path) -> None:
    root = _toy_mvtec(tmp_path / "widget")
    mask = _write_mask(root / "ground_truth" / "hole" / "000_mask.png", size=(24, 20))
    before = _snapshot_tree(root)
    with pytest.raises(DatasetError) as info:
        mvtec_category(root)
    message = str(info.value)
    assert str(mask) in message and str(root / "test" / "hole" / "000.png") in message
    assert "24x20" in message and "12x10" in message
    assert _snapshot_tree(root) == before


def test_mask_size_check_follows_exif_orientation(tmp_path: Path) -> None:
    root = _toy_mvtec(tmp_path / "widget")
    image = Image.new("RGB", (10, 12), (90, 90, 90))
    exif = image.getexif()
    exif[0x0112] = 6
    (root / "test" / "hole" / "000.png").unlink()
    image.save(root / "test" / "hole" / "000.jpg", exif=exif.tobytes())
    category = mvtec_category(root)
    assert category.test[-1].path.name == "000.jpg"


def test_training_folder_other_than_good_is_refused(tmp_path: Path) -> None:
    root = _toy_mvtec(tmp_path / "widget")
    _write_image(root / "train" / "crack" / "000.png")
    with pytest.raises(DatasetError, match="train/good"):
        mvtec_category(root)


def test_non_images_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    root = _toy_mvtec(tmp_path / "widget")
    (root / "train" / "good" / "notes.txt").write_text("x")
    _write_image(root / "train" / "good" / "._000.png")
    assert len(mvtec_category(root).train) == 3


def test_not_an_mvtec_category(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither a train/ nor a test/"):
        mvtec_category(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        mvtec_category(tmp_path / "absent")


# ----------------------------------------------------------------------------- Magnetic Tile


def test_magnetic_tile_split_is_seeded_and_documented(tmp_path: Path) -> None:
    root = _toy_magnetic_tile(tmp_path / "mtd")
    before = _snapshot_tree(root)
    category = magnetic_tile(root, seed=3, train_fraction=0.6)
    assert (category.layout, category.has_masks) == ("magnetic_tile", True)
    assert len(category.train) == 6 and all(s.label == 0 for s in category.train)
    normal_test = [s for s in category.test if s.label == 0]
    defective = [s for s in category.test if s.label == 1]
    assert len(normal_test) == 4 and len(defective) == 5
    assert {s.path for s in category.train}.isdisjoint(s.path for s in normal_test)
    assert [s.path for s in category.train] == sorted(s.path for s in category.train)
    assert Counter(s.defect_type for s in defective) == {"Blowhole": 3, "Uneven": 2}
    assert all(s.mask_path == s.path.with_suffix(".png") for s in defective)
    empty = [s for s in defective if not read_mask(s.mask_path).any()]
    assert [s.path.name for s in empty] == ["uneven0.jpg"]
    again = magnetic_tile(root, seed=3, train_fraction=0.6)
    assert again.train == category.train and again.test == category.test
    other = magnetic_tile(root, seed=4, train_fraction=0.6)
    assert other.train != category.train
    assert _snapshot_tree(root) == before


def test_magnetic_tile_defective_without_mask(tmp_path: Path) -> None:
    root = _toy_magnetic_tile(tmp_path / "mtd")
    missing = root / "MT_Blowhole" / "Imgs" / "blowhole1.png"
    missing.unlink()
    with pytest.raises(DatasetError) as info:
        magnetic_tile(root)
    assert str(root / "MT_Blowhole" / "Imgs" / "blowhole1.jpg") in str(info.value)
    assert str(missing) in str(info.value)


def test_magnetic_tile_bad_fraction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_fraction"):
        magnetic_tile(_toy_magnetic_tile(tmp_path / "mtd"), train_fraction=1.5)


# ----------------------------------------------------------------------------- plain folders


def test_plain_folder_is_recursive_sorted_and_unlabelled(tmp_path: Path) -> None:
    _write_image(tmp_path / "b.png")
    _write_image(tmp_path / "a" / "z.JPG")
    _write_image(tmp_path / "a" / "c.bmp")
    _write_image(tmp_path / ".hidden" / "x.png")
    (tmp_path / "readme.txt").write_text("x")
    samples = plain_folder(tmp_path)
    assert [s.path.relative_to(tmp_path).as_posix() for s in samples] == [
        "a/c.bmp",
        "a/z.JPG",
        "b.png",
    ]
    assert all(s == Sample(path=s.path, label=None) for s in samples)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    before = _snapshot_tree(tmp_path)
    with pytest.raises(DatasetError) as info:
        plain_folder(tmp_path)
    message = str(info.value)
    assert message.startswith(f"no images found in '{tmp_path}'")
    assert ".png" in message and ".jpg" in message and ".tiff" in message
    assert _snapshot_tree(tmp_path) == before


# ----------------------------------------------------------------------------- discover


def test_discover_single_and_multiple_categories(tmp_path: Path) -> None:
    _toy_mvtec(tmp_path / "b_widget")
    _toy_mvtec(tmp_path / "a_widget", mask_suffix="")
    (tmp_path / "docs").mkdir()
    assert [c.name for c in discover(tmp_path / "b_widget")] == ["b_widget"]
    assert [c.name for c in discover(tmp_path)] == ["a_widget", "b_widget"]


def test_discover_magnetic_tile(tmp_path: Path) -> None:
    categories = discover(_toy_magnetic_tile(tmp_path / "mtd"), seed=1)
    assert [c.layout for c in categories] == ["magnetic_tile"]
    assert categories[0].train == magnetic_tile(tmp_path / "mtd", seed=1).train


def test_discover_unknown_layout(tmp_path: Path) -> None:
    _write_image(tmp_path / "some" / "image.png")
    before = _snapshot_tree(tmp_path)
    with pytest.raises(DatasetError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert f"'{tmp_path}'" in message
    assert "MVTec AD category" in message and "Magnetic Tile" in message
    assert _snapshot_tree(tmp_path) == before


# ----------------------------------------------------------------------------- real data


def test_real_mvtec_bottle(shared_datasets: Path) -> None:
    category = mvtec_category(shared_datasets / "mvtec_bottle")
    assert len(category.train) == 209 and len(category.test) == 83
    assert sum(s.label for s in category.test) == 63 and category.has_masks
    counts = Counter(s.defect_type for s in category.test)
    assert counts == {None: 20, "broken_large": 20, "broken_small": 22, "contamination": 21}
    assert all(s.mask_path.name.endswith("_mask.png") for s in category.test if s.label)


def test_real_hazelnut_toy(shared_datasets: Path) -> None:
    category = discover(shared_datasets / "hazelnut_toy")[0]
    assert len(category.train) == 28 and len(category.test) == 23
    defective = [s for s in category.test if s.label == 1]
    assert len(defective) == 17
    assert all(s.mask_path.stem == s.path.stem for s in defective)


def test_real_magnetic_tile(shared_datasets: Path) -> None:
    category = magnetic_tile(shared_datasets / "magnetic_tile", seed=0)
    samples = category.train + category.test
    assert sum(1 for s in samples if s.label == 0) == 952
    defective = [s for s in samples if s.label == 1]
    assert len(defective) == 392 and all(s in category.test for s in defective)
    assert Counter(s.defect_type for s in defective)["Blowhole"] == 115
    assert len(category.train) == 476
