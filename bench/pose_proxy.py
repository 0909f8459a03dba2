"""The pose-and-look proxy: the shared categories with a seeded pose per image, and mixed looks.

This is a *proxy*, built from the dev data in ../shared (every figure measured on it is a dev
figure): the real problem (a part lying at any angle, a mesh at any angle and scale) is only
imitated by rotating, scaling and shifting images whose parts were photographed aligned.

Per image (numpy seed from the run seed, the category name and the image's index):
- rotation by an angle drawn uniformly from [0, 360) degrees: every shared category is a texture
  (paper types, magnetic tiles) or a round part seen from above (bottle, hazelnut_toy), so any
  angle is a plausible pose;
- scale drawn log-uniformly from [0.8, 1.25];
- shift drawn uniformly from +-8 % of each side;
- no empty corners: the image is first padded by mirroring (textures) or by repeating its
  edge pixels (the parts on plain backgrounds: bottle, hazelnut_toy, whose border is
  background), then mapped back to its own size (bilinear);
- masks: the same pad and map, nearest neighbour, stored as 0/255 (so they stay binary).

Mixed looks: the normal images of two shared categories in the ratio 3:1 with the defective
images of the major one (e.g. two paper types), the "several looks of normal" case.

The transformed files are written once under a cache folder (PNG, lossless) and reused; the
functions return :class:`defectscope.data.layouts.Category` objects that the library's evaluate
path reads like any other category.
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from defectscope.data.layouts import Category, Sample

CACHE = Path(os.environ.get("POSE_DATA", "/tmp/pose-data"))
EDGE_PADDED = ("bottle", "hazelnut_toy")
"""Parts on a plain background: padded by repeating the edge (the background), not mirrored."""
SCALE_RANGE = (0.8, 1.25)
SHIFT = 0.08
MIXES = (("pa_bdp01_tl", "pa_gla01_tl"), ("pa_flr01_tl", "pa_btn01_rl"))
"""(major, minor) pairs of the mixed-looks batches."""


def draw_pose(rng: np.random.Generator) -> tuple[float, float, tuple[float, float]]:
    """(angle in degrees, scale, (shift x, shift y) as fractions of the width and height)."""
    angle = float(rng.uniform(0.0, 360.0))
    scale = float(math.exp(rng.uniform(math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1]))))
    shift = (float(rng.uniform(-SHIFT, SHIFT)), float(rng.uniform(-SHIFT, SHIFT)))
    return angle, scale, shift


def _margin(height: int, width: int, scale: float, shift: tuple[float, float]) -> int:
    """Padding that covers every source point an output pixel can map to."""
    reach = (0.5 * math.hypot(height, width) + math.hypot(shift[0] * width, shift[1] * height)) / scale
    return int(math.ceil(reach - 0.5 * min(height, width))) + 2


def warp(array: np.ndarray, angle: float, scale: float, shift: tuple[float, float], pad: str, nearest: bool = False) -> np.ndarray:
    """Rotate ``array`` (H, W[, C]) by ``angle`` degrees about its centre, scale it, shift it, and
    return it at its own size; the source is padded first (``pad``: numpy's "reflect" or "edge")
    so that no output pixel falls outside it."""
    height, width = array.shape[:2]
    margin = _margin(height, width, scale, shift)
    widths = ((margin, margin), (margin, margin)) + (((0, 0),) if array.ndim == 3 else ())
    padded = np.pad(array, widths, mode=pad)
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    tx, ty = shift[0] * width, shift[1] * height
    # output (x, y) -> source: u = R(-theta) (v - c - t) / s + c, plus the margin
    a, b = cos / scale, sin / scale
    d, e = -sin / scale, cos / scale
    ox, oy = cx + tx, cy + ty
    coefficients = (a, b, cx + margin - a * ox - b * oy, d, e, cy + margin - d * ox - e * oy)
    resample = Image.NEAREST if nearest else Image.BILINEAR
    out = Image.fromarray(padded).transform((width, height), Image.AFFINE, coefficients, resample=resample)
    return np.asarray(out)


def _seed(seed: int, name: str, index: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 7919 + index) % (2**32)


def _write_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part.png")  # two runs filling one cache do not collide
    Image.fromarray(array).save(partial)
    os.replace(partial, path)


def _read_image(path: Path) -> np.ndarray:
    """A test image as stored (grey or RGB), an alpha channel dropped."""
    image = np.asarray(Image.open(path))
    return image[..., :3] if image.ndim == 3 and image.shape[2] == 4 else image


def _read_mask(path: Path) -> np.ndarray:
    """A defect mask as 0/255 uint8 (pixels above 127 count as defect)."""
    return (np.asarray(Image.open(path).convert("L")) > 127).astype(np.uint8) * 255


def pose_category(category: Category, seed: int = 0, cache: Path = CACHE) -> Category:
    """The category's test images with one seeded pose each (files written once under ``cache``)."""
    pad = "edge" if category.name in EDGE_PADDED else "reflect"
    folder = cache / f"seed{seed}" / category.name
    samples = []
    for index, sample in enumerate(category.test):
        angle, scale, shift = draw_pose(np.random.default_rng(_seed(seed, category.name, index)))
        image_path = folder / "images" / f"{index:04d}.png"
        mask_path = folder / "masks" / f"{index:04d}.png" if sample.mask_path is not None else None
        if not image_path.exists():
            image = _read_image(sample.path)
            _write_png(warp(image, angle, scale, shift, pad), image_path)
        if mask_path is not None and not mask_path.exists():
            warped = warp(_read_mask(sample.mask_path), angle, scale, shift, pad, nearest=True)
            _write_png(np.where(warped > 127, 255, 0).astype(np.uint8), mask_path)
        samples.append(Sample(image_path, sample.label, mask_path, sample.defect_type))
    return Category(category.name, folder, category.layout, [], samples, category.has_masks)


def mixed_category(major: Category, minor: Category, seed: int = 0, ratio: int = 3) -> Category:
    """Normal test images of ``major`` and of ``minor`` in the ratio ``ratio``:1 (a seeded choice
    of the minor's), with the defective test images of ``major``."""
    normal = [s for s in major.test if s.label == 0]
    others = [s for s in minor.test if s.label == 0]
    count = max(1, round(len(normal) / ratio))
    rng = np.random.default_rng(_seed(seed, f"{major.name}+{minor.name}", 0))
    chosen = [others[i] for i in sorted(rng.choice(len(others), min(count, len(others)), replace=False))]
    defective = [s for s in major.test if s.label == 1]
    name = f"mix_{major.name.removeprefix('pa_')}+{minor.name.removeprefix('pa_')}"
    return Category(name, major.root, major.layout, [], normal + chosen + defective, major.has_masks and minor.has_masks)


def mixed_categories(categories: list[Category], seed: int = 0) -> list[Category]:
    """The mixed-looks batches of :data:`MIXES` whose two categories are in ``categories``."""
    by_name = {c.name: c for c in categories}
    return [mixed_category(by_name[a], by_name[b], seed) for a, b in MIXES if a in by_name and b in by_name]


# --- the small-part proxy (docs/PARTCROP.md) -------------------------------------------------
SMALL_SIDE = (0.30, 0.45)
"""The part's side as a share of the image side (drawn uniformly per image)."""
SMALL_NOISE = 2.0
"""Sensor noise added to the placed image (standard deviation, grey levels) ..."""
SMALL_GRADIENT = 4.0
"""... and a linear illumination gradient of this many grey levels from edge to edge, in a
random direction, so that the canvas is plain but not perfectly flat."""


def border_colour(image: np.ndarray, width: int | None = None) -> np.ndarray:
    """The median colour of the image's outer band (``width`` pixels; default 2 % of the side)."""
    height, wide = image.shape[:2]
    band = width or max(2, round(0.02 * min(height, wide)))
    pixels = np.concatenate([
        image[:band].reshape(-1, *image.shape[2:]), image[-band:].reshape(-1, *image.shape[2:]),
        image[:, :band].reshape(-1, *image.shape[2:]), image[:, -band:].reshape(-1, *image.shape[2:]),
    ])
    return np.median(pixels, axis=0).round().astype(np.uint8)


def draw_small(rng: np.random.Generator) -> tuple[float, float, tuple[float, float]]:
    """(side share, angle in degrees, (x, y) position of the turned part's top-left corner as a
    share of the free room)."""
    side = float(rng.uniform(*SMALL_SIDE))
    angle = float(rng.uniform(0.0, 360.0))
    return side, angle, (float(rng.uniform()), float(rng.uniform()))


def place_small(array: np.ndarray, side: float, angle: float, where: tuple[float, float], fill, nearest: bool = False) -> np.ndarray:
    """``array`` (H, W[, C]) shrunk to ``side`` of its size, turned by ``angle`` degrees and put
    on a canvas of its own size filled with ``fill``; ``where`` places it inside the free room,
    so the turned part never leaves the canvas."""
    height, width = array.shape[:2]
    image = Image.fromarray(array)
    small = (max(2, round(side * width)), max(2, round(side * height)))
    resample = Image.NEAREST if nearest else Image.BILINEAR
    shrunk = image.resize(small, Image.NEAREST if nearest else Image.LANCZOS)
    fill_value = tuple(int(v) for v in np.atleast_1d(fill)) if array.ndim == 3 else int(np.atleast_1d(fill)[0])
    turned = shrunk.rotate(angle, resample=resample, expand=True, fillcolor=fill_value)
    canvas = Image.new(image.mode, (width, height), fill_value)
    left = int(where[0] * max(0, width - turned.width))
    top = int(where[1] * max(0, height - turned.height))
    canvas.paste(turned, (left, top))
    return np.asarray(canvas)


def small_category(category: Category, seed: int = 0, cache: Path = CACHE) -> Category:
    """The category's test images as small parts: each (seeded per image) shrunk to 30-45 % of
    its side, turned by any angle and placed at a random position on a canvas of its own size
    filled with its own border colour (no corner that differs from the background), then a faint
    illumination gradient and sensor noise over the whole image; masks placed alike (nearest
    neighbour, 0/255). Files written once under ``cache``."""
    folder = cache / f"small-seed{seed}" / category.name
    samples = []
    for index, sample in enumerate(category.test):
        side, angle, where = draw_small(np.random.default_rng(_seed(seed, "small:" + category.name, index)))
        image_path = folder / "images" / f"{index:04d}.png"
        mask_path = folder / "masks" / f"{index:04d}.png" if sample.mask_path is not None else None
        if not image_path.exists():
            image = np.asarray(Image.open(sample.path).convert("RGB"))
            placed = place_small(image, side, angle, where, border_colour(image)).astype(np.float64)
            light = np.random.default_rng(_seed(seed, "small-light:" + category.name, index))
            height, width = placed.shape[:2]
            direction = light.uniform(0.0, 2.0 * math.pi)
            yy, xx = np.mgrid[:height, :width]
            ramp = (math.cos(direction) * (xx / max(1, width - 1) - 0.5) + math.sin(direction) * (yy / max(1, height - 1) - 0.5))
            placed += SMALL_GRADIENT * ramp[..., None] + light.normal(0.0, SMALL_NOISE, placed.shape)
            _write_png(np.clip(np.round(placed), 0, 255).astype(np.uint8), image_path)
        if mask_path is not None and not mask_path.exists():
            mask = (np.asarray(Image.open(sample.mask_path).convert("L")) > 127).astype(np.uint8) * 255
            placed = place_small(mask, side, angle, where, 0, nearest=True)
            _write_png(np.where(placed > 127, 255, 0).astype(np.uint8), mask_path)
        samples.append(Sample(image_path, sample.label, mask_path, sample.defect_type))
    return Category(category.name, folder, category.layout, [], samples, category.has_masks)


# --- the crop proxy (docs/POSE_CROP.md) ------------------------------------------------------
# The mirror proxy above pads what a turn uncovers; here nothing is padded. Every image keeps the
# draws of the mirror proxy (same seed: angle, scale, shift) and an axis-aligned square window is
# cut from the turned photograph. The window lies inside the disc inscribed in the photograph
# (radius: half its shorter side, less a margin), and a rectangle turned about its centre by any
# angle contains that disc, so the window is inside the turned photograph whatever the angle:
# the turned crop and the aligned crop (angle 0, same scale and shift) see fields of view of the
# same size, and every output pixel is sampled from the photograph.
CROP_ZOOM_OUT = SCALE_RANGE[0]
"""The window's side is the disc's inscribed square times ``CROP_ZOOM_OUT / scale``: the whole
square at the smallest scale (0.8), 64 % of its side at the largest (1.25)."""
CROP_MAX_SIDE = 512
"""Largest output side (pixels) of a category's crops."""


def crop_output_side(sizes: list[tuple[int, int]]) -> int:
    """One output side per category: the window's side at scale 1 on the median image (the
    median shorter side / sqrt(2) * 0.8), at most :data:`CROP_MAX_SIDE`."""
    shorter = float(np.median([min(width, height) for width, height in sizes]))
    return int(max(8, min(CROP_MAX_SIDE, round(CROP_ZOOM_OUT * shorter / math.sqrt(2.0)))))


def crop_window(height: int, width: int, scale: float, shift: tuple[float, float], out: int) -> tuple[float, tuple[float, float], int]:
    """(window side in source pixels, (dx, dy) offset of its centre from the photograph's centre,
    the source reduction factor) for a photograph of ``height`` x ``width``.

    The reduction factor k (an integer, 1 unless the window is more than twice the output side)
    is the box reduction applied to the photograph before bilinear sampling, against aliasing
    (what remains for the bilinear step is a reduction by less than 2);
    the disc keeps a margin of k + 1 source pixels so that no bilinear tap of the reduced image
    reaches past its edge. The shift (fractions of the width and height, as the mirror proxy
    draws it) is shortened until the window's far corner lies inside the disc."""
    full = (min(height, width) / 2.0) / math.sqrt(0.5)  # inscribed square of the whole disc, ignoring the margin
    estimate = full * CROP_ZOOM_OUT / scale
    factor = int(estimate / out) if estimate >= 2 * out else 1
    radius = min(height, width) / 2.0 - (factor + 1)
    if radius <= 1:
        raise ValueError(f"an image of {width} x {height} pixels is too small for the crop proxy")
    side = radius * math.sqrt(2.0) * CROP_ZOOM_OUT / scale
    half = side / 2.0
    dx, dy = shift[0] * width, shift[1] * height
    # largest t in [0, 1] with (t |dx| + half)^2 + (t |dy| + half)^2 <= radius^2
    ax, ay = abs(dx), abs(dy)
    qa, qb, qc = ax * ax + ay * ay, 2.0 * half * (ax + ay), 2.0 * half * half - radius * radius
    t = 1.0 if qa == 0 else min(1.0, max(0.0, (-qb + math.sqrt(max(0.0, qb * qb - 4 * qa * qc))) / (2 * qa)))
    return side, (t * dx, t * dy), factor


def crop_coefficients(height: int, width: int, angle: float, side: float, offset: tuple[float, float], out: int, factor: int = 1) -> tuple[float, ...]:
    """PIL affine coefficients: output pixel centre (x + 0.5, y + 0.5) of an ``out`` x ``out``
    crop -> the source point (continuous coordinates, pixel i spans [i, i + 1)) of the photograph
    reduced by ``factor``. The window (centre: photograph centre + ``offset``, side ``side``) is
    axis-aligned in the frame of the photograph turned by ``angle`` degrees about its centre; a
    positive angle is a clockwise turn on screen, as the mirror proxy's."""
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    step = side / out
    cx, cy = width / 2.0, height / 2.0
    left, top = offset[0] - side / 2.0, offset[1] - side / 2.0
    coefficients = (
        cos * step, sin * step, cx + cos * left + sin * top,
        -sin * step, cos * step, cy - sin * left + cos * top,
    )
    return tuple(c / factor for c in coefficients)


def crop_points(height: int, width: int, angle: float, side: float, offset: tuple[float, float], out: int) -> np.ndarray:
    """(out * out, 2) source points (x, y) the crop samples, in the unreduced photograph's
    continuous coordinates (for checks)."""
    a, b, c, d, e, f = crop_coefficients(height, width, angle, side, offset, out)
    yy, xx = np.mgrid[:out, :out] + 0.5
    return np.stack([a * xx + b * yy + c, d * xx + e * yy + f], axis=-1).reshape(-1, 2)


def crop_turned(array: np.ndarray, angle: float, scale: float, shift: tuple[float, float], out: int, nearest: bool = False) -> np.ndarray:
    """The ``out`` x ``out`` window of ``array`` (H, W[, C], uint8) turned by ``angle`` degrees;
    images bilinear (after a box reduction when the window is over twice the output side), masks
    (``nearest``) sampled at the same points of the full-size array."""
    height, width = array.shape[:2]
    side, offset, factor = crop_window(height, width, scale, shift, out)
    image = Image.fromarray(array)
    if nearest:
        factor = 1
    elif factor > 1:
        image = image.reduce(factor)
    coefficients = crop_coefficients(height, width, angle, side, offset, out, factor)
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(image.transform((out, out), Image.AFFINE, coefficients, resample=resample))


def crop_category(category: Category, seed: int = 0, turned: bool = True, cache: Path = CACHE, drop: set[int] | None = None) -> tuple[Category, dict]:
    """The category's test images as crops (files written once under ``cache``, in a folder of
    their own: ``crop-seed{seed}/turned`` or ``crop-seed{seed}/aligned``), and the counts
    ``{"defective": n, "left_window": m, "lost": [indices]}``: m defective images whose whole
    defect lies outside the window, which become normal (label 0, empty mask). Turned: the mirror
    proxy's angle, scale and shift for that image; aligned: the same scale and shift at angle 0.
    ``drop``: indices of the category's test images to leave out of the returned batch (the
    counts still cover every image)."""
    folder = cache / f"crop-seed{seed}" / ("turned" if turned else "aligned") / category.name
    sizes = [Image.open(sample.path).size for sample in category.test]
    out = crop_output_side(sizes)
    samples, counts, lost = [], {"defective": 0, "left_window": 0}, []
    for index, sample in enumerate(category.test):
        angle, scale, shift = draw_pose(np.random.default_rng(_seed(seed, category.name, index)))
        angle = angle if turned else 0.0
        image_path = folder / "images" / f"{index:04d}.png"
        mask_path = folder / "masks" / f"{index:04d}.png" if sample.mask_path is not None else None
        if not image_path.exists():
            image = _read_image(sample.path)
            try:
                cut = crop_turned(image, angle, scale, shift, out)
            except ValueError as error:
                raise ValueError(f"{sample.path}: {error}") from None
            _write_png(cut, image_path)
        label, defect_type = sample.label, sample.defect_type
        if mask_path is not None:
            if not mask_path.exists():
                cut = crop_turned(_read_mask(sample.mask_path), angle, scale, shift, out, nearest=True)
                _write_png(np.where(cut > 127, 255, 0).astype(np.uint8), mask_path)
            if sample.label == 1:
                counts["defective"] += 1
                if not (np.asarray(Image.open(mask_path)) > 127).any():
                    counts["left_window"] += 1
                    lost.append(index)
                    label, defect_type = 0, None
        elif sample.label == 1:
            counts["defective"] += 1
        samples.append(Sample(image_path, label, mask_path, defect_type))
    if drop is not None:
        samples = [sample for index, sample in enumerate(samples) if index not in drop]
    counts["lost"] = lost  # type: ignore[assignment]
    return Category(category.name, folder, category.layout, [], samples, category.has_masks), counts
