"""Image and mask reading that never guesses and never modifies the input.

Every reader fully decodes the file (``Image.load()``) so that a truncated file fails here with
one clear sentence instead of later as a grey stripe in an anomaly map. Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default (False) and never changed.

Conversion rules (all images become ``(H, W, 3)`` uint8 RGB):

* EXIF orientation is applied first, so the array is what an image viewer shows.
* ``1``, ``L``, ``P``, ``RGB``, ``YCbCr``: plain conversion to RGB.
* Alpha (``RGBA``, ``LA``, ``PA``, palette with a transparent colour, premultiplied modes): the
  image is composited on black, i.e. ``rgb * alpha / 255``. Colour values under fully transparent
  pixels are arbitrary in most files; compositing makes them a defined, reproducible black.
  An image whose alpha is fully opaque is returned unchanged.
* ``CMYK``: converted with the embedded ICC profile when there is one (to sRGB), otherwise with
  the standard formula ``R = 255 * (1 - C) * (1 - K)``. Adobe's inverted CMYK JPEGs are handled by
  Pillow's decoder.
* ``LAB``: converted to sRGB with LittleCMS.
* 16-bit (``I;16``, ``I;16B``, ``I;16L``, ...): scaled by the full 16-bit range,
  ``round(v * 255 / 65535)``, so 65535 maps to 255 and order is preserved. PNG stores data scaled to
  its full bit depth by specification, so this is the actual range of the data.
* ``I`` (32-bit integer): scaled by its bit depth when the file states it (TIFF BitsPerSample /
  SampleFormat); otherwise by the 16-bit range when all values lie in 0..65535 (how 16-bit data
  usually arrives in this mode), else by the image's own minimum..maximum.
* ``F`` (32-bit float): values in 0..1 are scaled by 255; any other range by the image's own
  minimum..maximum. NaN becomes 0.

Size: the pixel count is read from the header before anything is decoded, and an image above
:data:`MAX_IMAGE_PIXELS` (``DEFECTSCOPE_MAX_IMAGE_PIXELS`` overrides it) is refused in one sentence
that names the file, so an oversized or hostile file never reaches the decoder.

Per-image contrast stretching is only a last resort (the two cases above): it would make scores
incomparable between images, which is why bit-depth scaling comes first.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from defectscope.errors import ConfigError, DatasetError, ImageReadError

__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "check_images", "max_image_pixels", "read_image", "read_mask"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
"""Lower-case suffixes recognised as images; compare with ``path.suffix.lower()``."""

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image decoded, in pixels (width x height), checked from the header before decoding.

8192 x 8192 decodes to 192 MiB of RGB; every method resizes its input to at most 2048 px per
side, so a larger file only costs memory. Set ``DEFECTSCOPE_MAX_IMAGE_PIXELS`` to change it."""

MAX_PIXELS_VARIABLE = "DEFECTSCOPE_MAX_IMAGE_PIXELS"

_SIGNATURES: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)
_PNG_END = b"IEND\xaeB`\x82"
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I;16S"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_PROBLEM_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, Image.DecompressionBombError
)


def max_image_pixels() -> int:
    """The pixel cap in force: ``DEFECTSCOPE_MAX_IMAGE_PIXELS`` when set, else :data:`MAX_IMAGE_PIXELS`."""
    override = os.environ.get(MAX_PIXELS_VARIABLE)
    if not override:
        return MAX_IMAGE_PIXELS
    try:
        value = int(float(override))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_PIXELS_VARIABLE}={override!r} is not a positive number of pixels")
    return value


def _too_large(pixels: int, size: str = "") -> str:
    """The problem half of the sentence for an image of ``pixels`` pixels over the cap."""
    cap = max_image_pixels()
    return (
        f"the image is {size or f'{pixels:,} pixels'}, more than the {cap:,} pixels defectscope decodes "
        f"(set {MAX_PIXELS_VARIABLE} to raise the limit)"
    )


def _describe(path: Path, exc: BaseException, what: str) -> str:
    """One sentence saying why the ``what`` ("image" or "mask") at ``path`` cannot be decoded."""
    if isinstance(exc, FileNotFoundError):
        problem = "the file does not exist"
    elif isinstance(exc, IsADirectoryError):
        problem = "it is a folder, not a file"
    elif isinstance(exc, PermissionError):
        problem = "permission denied"
    elif isinstance(exc, Image.DecompressionBombError):
        # Pillow refuses these in Image.open already; its message states the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        problem = _too_large(int(found.group(1))) if found else f"the image is too large to decode safely ({exc})"
    elif isinstance(exc, UnidentifiedImageError):
        if _has_image_signature(path):
            problem = "the file is damaged or truncated (its header cannot be parsed)"
        else:
            problem = "the file is not an image (no PNG, JPEG, BMP or TIFF header found)"
    elif "truncated" in str(exc).lower():
        problem = "the file is truncated"
    else:
        detail = str(exc).strip().rstrip(".") or type(exc).__name__
        problem = f"the file is damaged ({detail})"
    return f"cannot read {what} '{path}': {problem}"


def _has_image_signature(path: Path) -> bool:
    """True when the first bytes look like a PNG, JPEG, BMP or TIFF file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return any(head.startswith(signature) for signature in _SIGNATURES)


def _png_has_end_chunk(handle: BinaryIO) -> bool:
    """True when the PNG's IEND chunk (with its CRC) is present near the end of the file.

    Pillow accepts a PNG whose pixel data is complete but whose tail is cut off; a missing end
    chunk still means the file was not written completely, so it is refused.
    """
    end = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, end - 4096))
    return _PNG_END in handle.read()


class DecodeProblem(Exception):
    """What :func:`decode_opened` refuses: ``kind`` is "too large" (``size`` is the header's
    (width, height)), "truncated" (a PNG without its end chunk) or "no pixels"."""

    def __init__(self, kind: str, size: tuple[int, int] = (0, 0)) -> None:
        super().__init__(kind)
        self.kind = kind
        self.size = size


def decode_opened(handle: BinaryIO, max_pixels: int) -> tuple[Image.Image, tuple[float, float] | None]:
    """Decode the image in ``handle`` (a file or the bytes of a request) fully, refusing more than
    ``max_pixels`` from its header before any pixel is decoded, and apply its EXIF orientation.

    Returns the image and the integer value range its header states (TIFF only, else None),
    read before the orientation step because a transposed copy no longer carries TIFF tags.
    Raises :class:`DecodeProblem`, or Pillow's error for a damaged file (one of ``_PROBLEM_ERRORS``).
    """
    with Image.open(handle) as opened:
        width, height = opened.size
        if width * height > max_pixels:
            raise DecodeProblem("too large", (width, height))
        opened.load()
        if opened.format == "PNG" and not _png_has_end_chunk(handle):
            raise DecodeProblem("truncated")
        stated = _stated_integer_range(opened)
        image = ImageOps.exif_transpose(opened)
        if image is None or image is opened:
            image = opened.copy()
    if image.width == 0 or image.height == 0:
        raise DecodeProblem("no pixels")
    return image, stated


def _open_decoded(path: Path, what: str) -> tuple[Image.Image, tuple[float, float] | None]:
    """:func:`decode_opened` of the file at ``path``; every refusal an ImageReadError naming it."""
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageReadError(f"cannot read {what} '{path}': the file is empty (0 bytes)")
        with open(path, "rb") as handle:
            return decode_opened(handle, max_image_pixels())
    except DecodeProblem as refused:
        width, height = refused.size
        problem = {
            "too large": _too_large(width * height, f"{width} x {height} pixels"),
            "truncated": "the file is truncated",
        }.get(refused.kind, "the image has no pixels")
        raise ImageReadError(f"cannot read {what} '{path}': {problem}") from None
    except ImageReadError:
        raise
    except _PROBLEM_ERRORS as exc:
        raise ImageReadError(_describe(path, exc, what)) from exc


def _stated_integer_range(image: Image.Image) -> tuple[float, float] | None:
    """The value range a TIFF declares for integer samples, or None when it says nothing."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    bits = tags.get(258)
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    if not isinstance(bits, int) or not 1 <= bits <= 32:
        return None
    sample_format = tags.get(339, 1)
    if isinstance(sample_format, tuple):
        sample_format = sample_format[0] if sample_format else 1
    if sample_format == 2:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` linearly onto 0..255 with rounding (order preserved)."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _high_depth_to_gray(image: Image.Image, stated: tuple[float, float] | None) -> np.ndarray:
    """8-bit grayscale array from a 16-bit, 32-bit integer or float image (rules in module doc)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES and mode != "I;16S":
        return _scale_to_uint8(np.asarray(image), 0.0, 65535.0)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            return _scale_to_uint8(values, 0.0, 1.0)
        return _scale_to_uint8(values, low, high)
    values = np.asarray(image).astype(np.int64)
    if stated is not None:
        return _scale_to_uint8(values, *stated)
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 65535:
        return _scale_to_uint8(values, 0.0, 65535.0)
    return _scale_to_uint8(values, float(low), float(high))


def _composite_on_black(image: Image.Image) -> np.ndarray:
    """RGB array of an image with alpha, composited on black."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
    alpha = rgba[..., 3:4]
    if bool((alpha == 255).all()):
        return rgba[..., :3].astype(np.uint8)
    return ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """RGB image from CMYK, through the embedded ICC profile when one is present."""
    profile_bytes = image.info.get("icc_profile")
    if profile_bytes:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile_bytes))
            converted = ImageCms.profileToProfile(
                image, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return image.convert("RGB")


def _to_rgb_array(
    image: Image.Image, path: Path, stated: tuple[float, float] | None
) -> np.ndarray:
    """Convert a decoded image of any supported mode to (H, W, 3) uint8 RGB."""
    mode = image.mode
    if mode == "RGB":
        rgb = np.asarray(image)
    elif mode in _SIXTEEN_BIT_MODES or mode in {"I", "F"}:
        gray = _high_depth_to_gray(image, stated)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif mode in _ALPHA_MODES or (mode in {"P", "L", "RGB"} and "transparency" in image.info):
        rgb = _composite_on_black(image)
    elif mode == "CMYK":
        rgb = np.asarray(_cmyk_to_rgb(image))
    elif mode == "LAB":
        lab_to_srgb = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        rgb = np.asarray(ImageCms.applyTransform(image, lab_to_srgb))
    else:
        try:
            rgb = np.asarray(image.convert("RGB"))
        except ValueError as exc:
            raise ImageReadError(
                f"cannot read image '{path}': its colour mode '{mode}' cannot be converted to RGB"
            ) from exc
    return np.ascontiguousarray(rgb, dtype=np.uint8).copy()


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 RGB array; raise ImageReadError if it cannot be decoded.

    See the module docstring for how 16-bit, alpha, palette, CMYK and EXIF-rotated files are
    converted. The file is opened read-only and fully decoded.
    """
    file_path = Path(path)
    image, stated = _open_decoded(file_path, "image")
    return _to_rgb_array(image, file_path, stated)


def read_mask(
    path: str | os.PathLike[str], expected_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Read a ground-truth mask as a bool (H, W) array: foreground is gray value > 127.

    The mask is converted to 8-bit grayscale first (colour masks by luminance, alpha ignored,
    16-bit masks scaled by their bit depth as in ``read_image``), so 0/255 and soft-edged masks
    both work; a mask stored as 0/1 values reads as empty. When ``expected_shape`` (H, W) is given
    and differs, DatasetError names the mask, its size and the image size.
    """
    file_path = Path(path)
    image, stated = _open_decoded(file_path, "mask")
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in {"I", "F"}:
        gray = _high_depth_to_gray(image, stated)
    else:
        if image.mode in _ALPHA_MODES or image.mode == "P":
            image = image.convert("RGB")
        gray = np.asarray(image.convert("L"))
    mask = gray > 127
    if expected_shape is not None and tuple(mask.shape) != tuple(expected_shape):
        height, width = mask.shape
        exp_height, exp_width = expected_shape
        raise DatasetError(
            f"mask '{file_path}' is {width}x{height} pixels (width x height) "
            f"but its image is {exp_width}x{exp_height}"
        )
    return mask


def check_images(
    paths: Iterable[str | os.PathLike[str]], skip_unreadable: bool = False
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Fully decode every file before heavy work starts.

    With ``skip_unreadable`` False the first bad file raises ImageReadError. Otherwise returns
    ``(readable paths, [(unreadable path, reason sentence)])``, both in input order.
    """
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for path in paths:
        file_path = Path(path)
        try:
            read_image(file_path)
        except ImageReadError as exc:
            if not skip_unreadable:
                raise
            bad.append((file_path, str(exc)))
        else:
            good.append(file_path)
    return good, bad
