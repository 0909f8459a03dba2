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
    partial = path.with_name(path.name + ".part.png")
    Image.fromarray(array).save(partial)
    os.replace(partial, path)


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
            image = np.asarray(Image.open(sample.path))
            if image.ndim == 3 and image.shape[2] == 4:
                image = image[..., :3]
            _write_png(warp(image, angle, scale, shift, pad), image_path)
        if mask_path is not None and not mask_path.exists():
            mask = np.asarray(Image.open(sample.mask_path).convert("L")) > 127
            warped = warp(mask.astype(np.uint8) * 255, angle, scale, shift, pad, nearest=True)
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
