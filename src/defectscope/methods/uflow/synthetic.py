"""Synthetic defects of varied size, shape and strength, to choose U-Flow's mask rule on training
images only (``bench/bench_uflow_mask.py``).

PRN's generator (:func:`defectscope.methods.prn.generate.pseudo_defect`) pastes Perlin blobs of a
few per cent of the image, blended at alpha 0.5 to 1: strong, mid-sized defects. A mask rule chosen
on those alone is never tested on the large, the thin or the faint defects real products have.
:func:`varied_defect` draws, with equal odds, one of four shapes, each one connected region clipped
to the estimated foreground:

- ``blob``: a jagged ellipse of 0.3 % to 6 % of the image (log-uniform), aspect 1 to 2;
- ``large``: the same of 8 % to 30 %, aspect 1 to 2.5 (flat interiors, long rims);
- ``elongated``: 0.5 % to 6 %, aspect 4 to 12;
- ``thin``: a smooth random curve 1 to 3 % of the side wide and 20 % to 80 % of it long (scratches,
  cracks),

and fills it with one of three contents, blended with one alpha drawn uniformly in [0.2, 1] (faint
to opaque): a procedural texture, a moved patch of another normal image (both as PRN does), or the
image itself with its brightness and contrast changed (stains, discolouration). The returned mask
is exactly the blended region: outside it the image is unchanged.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from defectscope.methods.prn.generate import estimate_foreground, procedural_texture

SHAPES = ("blob", "large", "elongated", "thin")
FILLS = ("texture", "patch", "shift")
ALPHA_RANGE = (0.2, 1.0)


def _centre(allowed: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    ys, xs = np.nonzero(allowed)
    index = int(rng.integers(len(ys)))
    return float(ys[index]), float(xs[index])


def jagged_ellipse(shape: tuple[int, int], centre: tuple[float, float], area: float, aspect: float,
                   rng: np.random.Generator) -> np.ndarray:
    """An ellipse of about ``area`` pixels and ``aspect`` (long / short axis), randomly rotated,
    its radius modulated by a few random low harmonics (up to about +-25 %)."""
    short = math.sqrt(area / (math.pi * aspect))
    long = aspect * short
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    angle = rng.uniform(0.0, math.pi)
    dy, dx = ys - centre[0], xs - centre[1]
    along = (dx * math.cos(angle) + dy * math.sin(angle)) / long
    across = (-dx * math.sin(angle) + dy * math.cos(angle)) / short
    rho, theta = np.hypot(along, across), np.arctan2(across, along)
    radius = np.ones(shape)
    for order in range(2, 6):
        amplitude = rng.uniform(0.0, 0.25 / order)
        radius += amplitude * np.cos(order * theta + rng.uniform(0.0, 2.0 * math.pi))
    return rho <= radius


def thin_curve(shape: tuple[int, int], centre: tuple[float, float], length: float, width: float,
               rng: np.random.Generator) -> np.ndarray:
    """A smooth random curve of ``length`` pixels through ``centre``, ``width`` pixels wide."""
    steps = max(2, int(length))
    heading = rng.uniform(0.0, 2.0 * math.pi)
    turns = np.cumsum(rng.normal(0.0, 0.08, size=steps))
    headings = heading + turns - turns[steps // 2]
    ys = np.cumsum(np.sin(headings))
    xs = np.cumsum(np.cos(headings))
    ys += centre[0] - ys[steps // 2]
    xs += centre[1] - xs[steps // 2]
    inside = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
    line = np.zeros(shape, dtype=bool)
    line[ys[inside].astype(int), xs[inside].astype(int)] = True
    line[int(centre[0]), int(centre[1])] = True
    return ndimage.distance_transform_edt(~line) <= width / 2.0


def defect_shape(kind: str, shape: tuple[int, int], allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask of one defect of ``kind`` (one of :data:`SHAPES`) inside ``allowed``; never empty."""
    side = min(shape)
    pixels = shape[0] * shape[1]
    centre = _centre(allowed, rng)
    if kind == "blob":
        mask = jagged_ellipse(shape, centre, pixels * math.exp(rng.uniform(math.log(0.003), math.log(0.06))),
                              rng.uniform(1.0, 2.0), rng)
    elif kind == "large":
        mask = jagged_ellipse(shape, centre, pixels * rng.uniform(0.08, 0.3), rng.uniform(1.0, 2.5), rng)
    elif kind == "elongated":
        mask = jagged_ellipse(shape, centre, pixels * math.exp(rng.uniform(math.log(0.005), math.log(0.06))),
                              rng.uniform(4.0, 12.0), rng)
    elif kind == "thin":
        mask = thin_curve(shape, centre, side * rng.uniform(0.2, 0.8), max(2.0, side * rng.uniform(0.01, 0.03)), rng)
    else:
        raise ValueError(f"unknown synthetic defect shape {kind!r}; choose from {SHAPES}")
    clipped = mask & allowed
    if not clipped.any():
        clipped = np.zeros(shape, dtype=bool)
        clipped[int(centre[0]), int(centre[1])] = True
    return clipped


def _fill(kind: str, normal: np.ndarray, others: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The content blended into the defect: float64 (H, W, 3)."""
    shape = normal.shape[:2]
    if kind == "patch" and others:
        other = others[int(rng.integers(len(others)))]
        other = np.rot90(other, int(rng.integers(1, 4))) if other.shape[0] == other.shape[1] else other[::-1, ::-1]
        moved = np.roll(other, (int(rng.integers(shape[0])), int(rng.integers(shape[1]))), axis=(0, 1))
        return moved.astype(np.float64) * rng.uniform(0.6, 1.4)
    if kind == "shift":
        image = normal.astype(np.float64)
        mean = image.mean(axis=(0, 1))
        contrast = rng.uniform(0.3, 1.7)
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(30.0, 100.0) * rng.uniform(0.5, 1.0, size=3)
        return (image - mean) * contrast + mean + shift
    return procedural_texture(shape, rng).astype(np.float64)


def varied_defect(
    normal: np.ndarray,
    rng: np.random.Generator,
    *,
    other_images: Sequence[np.ndarray] = (),
    foreground: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """One synthetic defect on the RGB uint8 image ``normal`` -> (image, mask, "shape/fill").

    ``other_images`` (same size as ``normal``) feed the "patch" fill (without them a texture is
    used); ``foreground`` (default: PRN's :func:`estimate_foreground`) bounds the defect.
    """
    normal = np.asarray(normal)
    if normal.ndim != 3 or normal.shape[2] != 3 or normal.dtype != np.uint8:
        raise ValueError(f"varied_defect needs an RGB uint8 image, got {normal.dtype} {normal.shape}")
    shape = normal.shape[:2]
    allowed = estimate_foreground(normal) if foreground is None else np.asarray(foreground, dtype=bool)
    if not allowed.any():
        allowed = np.ones(shape, dtype=bool)
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    fill = FILLS[int(rng.integers(len(FILLS)))]
    if fill == "patch" and not other_images:
        fill = "texture"
    mask = defect_shape(kind, shape, allowed, rng)
    content = _fill(fill, normal, other_images, rng)
    alpha = rng.uniform(*ALPHA_RANGE)
    blended = np.clip(np.rint((1.0 - alpha) * normal + alpha * content), 0, 255).astype(np.uint8)
    output = normal.copy()
    output[mask] = blended[mask]
    return output, mask, f"{kind}/{fill}"
