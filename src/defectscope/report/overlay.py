"""Heat-map overlays, thumbnails and PNG / JPEG output.

Colour scale: an overlay maps ``vmin`` to the cold end and ``vmax`` to the hot end of the
colour map, clipping outside that range. Pass the SAME ``vmin``/``vmax`` for every image of a
batch (for example :func:`batch_color_range`, percentiles over all maps) so that equal colours
mean equal anomaly values across overlays; normalising each map on its own would paint the
hottest spot of a perfectly good part as red as a real defect.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from defectscope.report.atomic import atomic_write_bytes

DEFAULT_COLORMAP = "turbo"
CONTOUR_RGB = (255, 255, 255)
_PERCENTILE_SAMPLE = 4_000_000


def _source_coordinates(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centred bilinear sampling: lower index, upper index and upper weight."""
    scale = in_size / out_size
    coords = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    coords = np.clip(coords, 0.0, in_size - 1)
    lower = np.floor(coords).astype(np.intp)
    upper = np.minimum(lower + 1, in_size - 1)
    weight = (coords - lower).astype(np.float32)
    return lower, upper, weight


def resize_map(anomaly_map: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a map (or a stack ``(..., H, W)``) to ``size_hw`` by bilinear interpolation.

    Pixel centres are aligned as in ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` without antialiasing, with edge values repeated. Returns float32.
    """
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.ndim < 2:
        raise ValueError(f"resize_map needs an array of at least 2 dimensions, got shape {anomaly_map.shape}")
    out_h, out_w = int(size_hw[0]), int(size_hw[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"resize_map needs a positive size, got {size_hw}")
    in_h, in_w = anomaly_map.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return anomaly_map.copy()
    top, bottom, weight_y = _source_coordinates(out_h, in_h)
    left, right, weight_x = _source_coordinates(out_w, in_w)
    rows = anomaly_map[..., top, :] * (1.0 - weight_y)[:, None] + anomaly_map[..., bottom, :] * weight_y[:, None]
    resized = rows[..., left] * (1.0 - weight_x) + rows[..., right] * weight_x
    return resized.astype(np.float32, copy=False)


def batch_color_range(anomaly_maps: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """A colour range shared by a whole batch: the ``low`` and ``high`` percentiles of all maps.

    Large batches are subsampled with a fixed stride (deterministic) to bound memory.
    """
    values = np.asarray(anomaly_maps, dtype=np.float32).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    if values.size > _PERCENTILE_SAMPLE:
        values = values[:: values.size // _PERCENTILE_SAMPLE + 1]
    vmin, vmax = np.percentile(values, [low, high])
    if vmax <= vmin:
        vmax = vmin + max(abs(float(vmin)) * 1e-6, 1e-12)
    return float(vmin), float(vmax)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a binary mask (pixel-centre aligned)."""
    mask = np.asarray(mask).astype(bool)
    in_h, in_w = mask.shape
    out_h, out_w = size_hw
    if (in_h, in_w) == (out_h, out_w):
        return mask
    rows = np.minimum(((np.arange(out_h) + 0.5) * in_h / out_h).astype(np.intp), in_h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * in_w / out_w).astype(np.intp), in_w - 1)
    return mask[rows[:, None], cols[None, :]]


def mask_contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boundary pixels of a binary mask (inside pixels with a neighbour outside), ``thickness`` wide."""
    region = np.asarray(mask).astype(bool)
    eroded = region.copy()
    for _ in range(max(1, thickness)):
        padded = np.pad(eroded, 1, mode="constant", constant_values=False)
        eroded = (
            eroded
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return region & ~eroded


def colorize(values: np.ndarray, *, vmin: float, vmax: float, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Map values to RGB uint8 colours with a fixed range ``[vmin, vmax]`` (clipped)."""
    return _lookup(colormap)[_colour_index(values, vmin, vmax)]


def _colour_index(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """uint8 index into the 256-colour table: round(255 clip((v - vmin) / (vmax - vmin), 0, 1)),
    NaN -> 0 (float32 throughout, in place on one working array)."""
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ValueError(f"colour range must be finite, got vmin={vmin}, vmax={vmax}")
    if vmax < vmin:
        raise ValueError(f"colour range is inverted: vmin={vmin} > vmax={vmax}")
    values = np.asarray(values, dtype=np.float32)
    span = float(vmax) - float(vmin)
    if span > 0:
        normalised = np.subtract(values, np.float32(vmin))
        np.divide(normalised, np.float32(span), out=normalised)
        np.clip(normalised, 0.0, 1.0, out=normalised)
    else:
        normalised = (values > vmin).astype(np.float32)
    np.nan_to_num(normalised, copy=False, nan=0.0)
    np.multiply(normalised, 255.0, out=normalised)
    np.rint(normalised, out=normalised)
    return normalised.astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _lookup(colormap: str) -> np.ndarray:
    """The colour map's 256 RGB uint8 colours (read-only; computed once per map)."""
    lookup = (matplotlib.colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    lookup.setflags(write=False)
    return lookup


@functools.lru_cache(maxsize=16)
def _weighted_lookup(colormap: str, alpha: float) -> np.ndarray:
    """The colour map's 256 colours as float32 times ``alpha`` (read-only)."""
    lookup = _lookup(colormap).astype(np.float32) * np.float32(alpha)
    lookup.setflags(write=False)
    return lookup


def heatmap_overlay(
    image_rgb_uint8: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    alpha: float = 0.5,
    mask: np.ndarray | None = None,
    colormap: str = DEFAULT_COLORMAP,
    contour_rgb: tuple[int, int, int] = CONTOUR_RGB,
) -> np.ndarray:
    """Blend a colour-mapped anomaly map over an image; returns (H, W, 3) uint8.

    The map (any resolution) is resized bilinearly to the image size. ``vmin``/``vmax`` fix
    the colour scale and should be shared across the batch (see module docstring). ``alpha`` is
    the weight of the heat map. When ``mask`` (any resolution, bool) is given, its outline is
    drawn in ``contour_rgb``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    image = _as_rgb_uint8(image_rgb_uint8)
    height, width = image.shape[:2]
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.ndim != 2:
        raise ValueError(f"expected an (H, W) anomaly map, got shape {anomaly_map.shape}")
    index = _colour_index(resize_map(anomaly_map, (height, width)), vmin, vmax)
    # image (1 - alpha) + colour alpha + 0.5 in float32, as colorize() followed by the blend would
    # compute it, with the colours' alpha-weighted values looked up from a 256-entry table.
    blended = np.multiply(image, np.float32(1.0 - alpha), dtype=np.float32)
    blended += _weighted_lookup(colormap, float(alpha))[index]
    blended += np.float32(0.5)
    np.clip(blended, 0, 255, out=blended)
    overlay = blended.astype(np.uint8)
    if mask is not None:
        mask_array = np.asarray(mask)
        if mask_array.ndim != 2:
            raise ValueError(f"expected an (H, W) mask, got shape {mask_array.shape}")
        thickness = max(1, round(min(height, width) / 256))
        contour = mask_contour(resize_mask(mask_array, (height, width)), thickness)
        overlay[contour] = np.asarray(contour_rgb, dtype=np.uint8)
    return overlay


def _to_pil(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 or bool image, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(array, mode="L")
    if array.ndim == 3 and array.shape[2] == 3:
        return Image.fromarray(array, mode="RGB")
    if array.ndim == 3 and array.shape[2] == 4:
        return Image.fromarray(array, mode="RGBA")
    raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")


def make_thumbnail(image: np.ndarray, width: int = 160, resample: Image.Resampling = Image.Resampling.LANCZOS) -> np.ndarray:
    """Shrink an image (uint8 or bool) to ``width`` pixels wide, keeping its aspect; never enlarges.

    Bool masks are resized nearest-neighbour and returned as bool; images use ``resample``
    (Lanczos by default; Pillow's bilinear also averages over the whole footprint when shrinking,
    at about half the cost).
    """
    array = np.asarray(image)
    height, current_width = array.shape[:2]
    if current_width <= width:
        return array
    new_height = max(1, round(height * width / current_width))
    if array.dtype == bool:
        return resize_mask(array, (new_height, width))
    resized = _to_pil(array).resize((width, new_height), resample)
    return np.asarray(resized)


def encode_image(array: np.ndarray, fmt: str = "PNG", quality: int = 85, optimize: bool = True) -> bytes:
    """Encode a uint8/bool image as PNG or JPEG bytes (JPEG drops any alpha channel;
    ``optimize`` computes its Huffman tables per image: a few % smaller, a little slower)."""
    picture = _to_pil(array)
    buffer = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        if picture.mode == "RGBA":
            picture = picture.convert("RGB")
        picture.save(buffer, format="JPEG", quality=quality, optimize=optimize)
    else:
        picture.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Save a uint8 (or bool, as 0/255) image as PNG, atomically."""
    return atomic_write_bytes(path, encode_image(array, "PNG"))


def save_jpeg(path: str | Path, array: np.ndarray, quality: int = 90) -> Path:
    """Save a uint8 image as JPEG at ``quality``, atomically (for pictures meant to be looked at:
    a 512-pixel overlay encodes in about 2 ms and 36 KB, against 350 ms and 270 KB as PNG)."""
    return atomic_write_bytes(path, encode_image(array, "JPEG", quality=quality, optimize=False))


def colorbar_image(width: int = 256, height: int = 12, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """A horizontal colour bar (cold left, hot right) as (height, width, 3) uint8."""
    row = colorize(np.linspace(0.0, 1.0, width, dtype=np.float32), vmin=0.0, vmax=1.0, colormap=colormap)
    return np.repeat(row[None, :, :], height, axis=0)
