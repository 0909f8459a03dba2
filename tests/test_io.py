"""Tests for defectscope.data.io: conversions, precise errors, and inputs left untouched."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from defectscope.data import IMAGE_EXTENSIONS, check_images, read_image, read_mask
from defectscope.data.batch import read_batch
from defectscope.errors import ConfigError, DatasetError, ImageReadError
from image_helpers import write_large_png


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


def _assert_unchanged(path: Path, before: tuple[bytes, int]) -> None:
    assert _snapshot(path) == before, f"{path} was modified"


def _rgb(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _expect_read_error(path: Path, *phrases: str, reader=read_image) -> str:
    """Read ``path``, expect ImageReadError naming the file and ``phrases``; file unchanged."""
    before = _snapshot(path) if path.is_file() else None
    with pytest.raises(ImageReadError) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message
    for phrase in phrases:
        assert phrase in message
    assert "\n" not in message
    if before is not None:
        _assert_unchanged(path, before)
    return message


def test_image_extensions_are_lower_case_suffixes() -> None:
    assert IMAGE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def test_truncated_images_stay_refused_globally() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ----------------------------------------------------------------------------- bad input


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    message = _expect_read_error(path, "empty", "0 bytes")
    assert message == f"cannot read image '{path}': the file is empty (0 bytes)"


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_image(tmp_path: Path, fmt: str, suffix: str) -> None:
    data = _encoded(_rgb(64, 64), fmt)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    message = _expect_read_error(path, "truncated")
    assert message == f"cannot read image '{path}': the file is truncated"


def test_jpeg_missing_only_its_end_marker_is_refused(tmp_path: Path) -> None:
    data = _encoded(_rgb(64, 64), "JPEG")
    path = tmp_path / "no_eoi.jpg"
    path.write_bytes(data[:-2])
    _expect_read_error(path, "truncated")


def test_png_cut_inside_its_header(tmp_path: Path) -> None:
    path = tmp_path / "header.png"
    path.write_bytes(_encoded(_rgb(), "PNG")[:20])
    _expect_read_error(path, "truncated")


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _expect_read_error(path, "not an image")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.png"
    message = _expect_read_error(path, "does not exist")
    assert not path.exists()
    assert message == f"cannot read image '{path}': the file does not exist"


def test_folder_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "images.png"
    folder.mkdir()
    _expect_read_error(folder, "folder")


def test_damaged_png_data(tmp_path: Path) -> None:
    data = bytearray(_encoded(_rgb(64, 64), "PNG"))
    start = data.index(b"IDAT") + 40
    data[start : start + 60] = bytes(60)
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    _expect_read_error(path, "cannot read image")


def test_png_missing_only_its_end_chunk_is_refused(tmp_path: Path) -> None:
    data = _encoded(_rgb(), "PNG")
    path = tmp_path / "no_iend.png"
    path.write_bytes(data[:-12])
    _expect_read_error(path, "truncated")


def test_image_beyond_pillows_bomb_limit_is_refused_in_one_sentence(tmp_path: Path) -> None:
    # 20000 x 20000 = 400 M pixels: Pillow's Image.open itself raises DecompressionBombError,
    # which used to escape the reader as a traceback.
    path = write_large_png(tmp_path / "huge.png", 20000, 20000, header_only=True)
    message = _expect_read_error(path, "400,000,000 pixels", f"{8192 * 8192:,} pixels defectscope decodes")
    assert "DOS" not in message


def test_large_image_is_refused_from_its_header_before_decoding(tmp_path: Path, monkeypatch) -> None:
    # 12000 x 12000 = 144 M pixels: under Pillow's error limit, so it used to be decoded.
    path = write_large_png(tmp_path / "large.png", 12000, 12000)
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original(self))
    _expect_read_error(path, "12000 x 12000 pixels", "DEFECTSCOPE_MAX_IMAGE_PIXELS")
    assert decoded == []


def test_pixel_cap_can_be_changed_by_environment(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "small.png"
    path.write_bytes(_encoded(_rgb(24, 32), "PNG"))
    assert read_image(path).shape == (24, 32, 3)
    monkeypatch.setenv("DEFECTSCOPE_MAX_IMAGE_PIXELS", str(24 * 32 - 1))
    _expect_read_error(path, "32 x 24 pixels", "767 pixels")
    _expect_read_error(path, "32 x 24 pixels", reader=read_mask)
    monkeypatch.setenv("DEFECTSCOPE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ConfigError, match="DEFECTSCOPE_MAX_IMAGE_PIXELS='lots'"):
        read_image(path)


def test_oversized_images_are_skipped_and_listed_by_read_batch(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(_encoded(_rgb(), "PNG"))
    huge = write_large_png(tmp_path / "huge.png", 20000, 20000, header_only=True)
    large = write_large_png(tmp_path / "large.png", 12000, 12000, header_only=True)
    images, kept, skipped = read_batch([huge, good, large], skip_unreadable=True)
    assert kept == [good] and len(images) == 1
    assert [p for p, _ in skipped] == [huge, large]
    assert all(str(p) in reason and "pixels defectscope decodes" in reason for p, reason in skipped)
    with pytest.raises(ImageReadError, match="huge.png"):
        read_batch([good, huge], skip_unreadable=False)


def test_unreadable_mask_says_mask(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(_encoded(np.zeros((32, 32), np.uint8), "PNG")[:60])
    message = _expect_read_error(path, reader=read_mask)
    assert message.startswith(f"cannot read mask '{path}'")


def test_mask_of_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "000_mask.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(path)
    before = _snapshot(path)
    with pytest.raises(DatasetError) as info:
        read_mask(path, expected_shape=(40, 50))
    message = str(info.value)
    assert str(path) in message and "30x20" in message and "50x40" in message
    _assert_unchanged(path, before)


def test_check_images_raises_on_first_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "a.png"
    good.write_bytes(_encoded(_rgb(), "PNG"))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(_encoded(_rgb(64, 64), "JPEG")[:300])
    worse = tmp_path / "c.png"
    worse.write_bytes(b"")
    snapshots = {p: _snapshot(p) for p in (good, bad, worse)}
    with pytest.raises(ImageReadError, match="b.jpg"):
        check_images([good, bad, worse])
    readable, unreadable = check_images([good, bad, worse], skip_unreadable=True)
    assert readable == [good]
    assert [p for p, _ in unreadable] == [bad, worse]
    assert "truncated" in unreadable[0][1] and str(bad) in unreadable[0][1]
    assert "empty" in unreadable[1][1] and str(worse) in unreadable[1][1]
    for path, before in snapshots.items():
        _assert_unchanged(path, before)


def test_check_images_all_good(tmp_path: Path) -> None:
    paths = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        path.write_bytes(_encoded(_rgb(seed=index), "PNG"))
        paths.append(str(path))
    assert check_images(paths) == ([Path(p) for p in paths], [])


# ----------------------------------------------------------------------------- conversions


def _save_and_read(tmp_path: Path, image: Image.Image, name: str, **save_args) -> np.ndarray:
    path = tmp_path / name
    image.save(path, **save_args)
    before = _snapshot(path)
    array = read_image(path)
    _assert_unchanged(path, before)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    assert array.flags.writeable
    return array


@pytest.mark.parametrize("name", ["rgb.png", "rgb.bmp", "rgb.tif", "rgb.tiff", "RGB.PNG"])
def test_lossless_rgb_formats_round_trip(tmp_path: Path, name: str) -> None:
    rgb = _rgb()
    assert np.array_equal(_save_and_read(tmp_path, Image.fromarray(rgb), name), rgb)


def test_jpeg_rgb(tmp_path: Path) -> None:
    rgb = np.full((16, 16, 3), (200, 60, 30), np.uint8)
    array = _save_and_read(tmp_path, Image.fromarray(rgb), "x.jpeg", quality=95)
    assert np.abs(array.astype(int) - rgb).max() <= 4


def test_grayscale(tmp_path: Path) -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    array = _save_and_read(tmp_path, Image.fromarray(gray), "gray.png")
    assert all(np.array_equal(array[..., c], gray) for c in range(3))


def test_one_bit(tmp_path: Path) -> None:
    bits = np.zeros((8, 8), bool)
    bits[2:5, 3:6] = True
    array = _save_and_read(tmp_path, Image.fromarray(bits), "bits.png")
    assert np.array_equal(array[..., 0], bits.astype(np.uint8) * 255)


def test_palette(tmp_path: Path) -> None:
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[:5] = (255, 0, 0)
    rgb[5:] = (0, 0, 255)
    palette_image = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert palette_image.mode == "P"
    assert np.array_equal(_save_and_read(tmp_path, palette_image, "pal.png"), rgb)


def test_palette_with_transparency_is_composited_on_black(tmp_path: Path) -> None:
    palette_image = Image.new("P", (6, 4), 1)
    palette_image.putpalette([0, 0, 0, 200, 100, 50, 10, 220, 30] + [0] * (256 * 3 - 9))
    palette_image.paste(2, (0, 0, 3, 4))
    array = _save_and_read(tmp_path, palette_image, "paltrans.png", transparency=2)
    assert np.array_equal(array[:, :3], np.zeros((4, 3, 3), np.uint8))
    assert np.array_equal(array[:, 3:], np.full((4, 3, 3), (200, 100, 50), np.uint8))


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[255, 0, 128], [255, 255, 0]]
    array = _save_and_read(tmp_path, Image.fromarray(rgba), "alpha.png")
    assert array[0, 0].tolist() == [200, 100, 50]
    assert array[0, 1].tolist() == [0, 0, 0]
    assert array[0, 2].tolist() == [100, 50, 25]


def test_opaque_rgba_is_unchanged(tmp_path: Path) -> None:
    rgba = np.dstack([_rgb(), np.full((24, 32), 255, np.uint8)])
    array = _save_and_read(tmp_path, Image.fromarray(rgba), "opaque.png")
    assert np.array_equal(array, rgba[..., :3])


def test_gray_with_alpha(tmp_path: Path) -> None:
    pixels = np.dstack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 255, np.uint8)])
    la = Image.fromarray(pixels)
    assert la.mode == "LA"
    assert np.all(_save_and_read(tmp_path, la, "la.png") == 100)


def test_sixteen_bit_png_scaled_by_bit_depth(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 1000, 30000, 40000, 65280, 65535]], np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    array = _save_and_read(tmp_path, image, "deep.png")
    gray = array[0, :, 0].astype(int)
    assert np.all(np.diff(gray) >= 0)
    assert gray[0] == 0 and gray[-1] == 255
    assert gray.tolist() == np.rint(values[0].astype(float) * 255 / 65535).astype(int).tolist()
    assert gray[4] == 117


def test_sixteen_bit_uses_full_range_not_clipping(tmp_path: Path) -> None:
    values = np.array([[1000, 2000, 4000, 8000]], np.uint16)
    array = _save_and_read(tmp_path, Image.fromarray(values), "dim.png")
    assert array[0, :, 0].tolist() == [4, 8, 16, 31]


def test_sixteen_bit_big_endian_tiff(tmp_path: Path) -> None:
    values = np.array([[0, 30000, 65535]], dtype=">u2")
    image = Image.fromarray(values)
    assert image.mode == "I;16B"
    array = _save_and_read(tmp_path, image, "big.tif")
    assert array[0, :, 0].tolist() == [0, 117, 255]


def test_float_tiff_in_unit_range(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0]], np.float32)
    array = _save_and_read(tmp_path, Image.fromarray(values), "float.tif")
    assert array[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (16, 8), (0, 0, 0, 0))
    cmyk.paste((0, 255, 255, 0), (0, 0, 8, 8))
    cmyk.paste((0, 0, 0, 128), (8, 0, 16, 8))
    array = _save_and_read(tmp_path, cmyk, "print.jpg", quality=100)
    assert np.abs(array[4, 2].astype(int) - [255, 0, 0]).max() <= 6
    assert np.abs(array[4, 12].astype(int) - [127, 127, 127]).max() <= 6


def test_cmyk_tiff(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (4, 4), (255, 0, 0, 0))
    assert np.array_equal(_save_and_read(tmp_path, cmyk, "print.tif")[0, 0], [0, 255, 255])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:4, :4] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    array = _save_and_read(tmp_path, image, "rotated.jpg", exif=exif.tobytes(), quality=100)
    assert array.shape == (40, 20, 3)
    assert array[:4, -4:].mean() > 200
    assert array[:4, :4].mean() < 50


def test_mask_threshold_and_modes(tmp_path: Path) -> None:
    values = np.array([[0, 127, 128, 255]], np.uint8)
    path = tmp_path / "soft.png"
    Image.fromarray(values).save(path)
    assert read_mask(path).tolist() == [[False, False, True, True]]
    rgb_path = tmp_path / "rgb_mask.png"
    Image.fromarray(np.repeat(values[..., None], 3, axis=2)).save(rgb_path)
    assert read_mask(rgb_path, expected_shape=(1, 4)).tolist() == [[False, False, True, True]]
    deep_path = tmp_path / "deep_mask.png"
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(deep_path)
    assert read_mask(deep_path).tolist() == [[False, True]]
    assert read_mask(path).dtype == bool
