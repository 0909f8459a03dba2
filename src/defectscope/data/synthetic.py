"""Synthetic inspection images with pasted defects and exact masks, for tests that run anywhere.

Two kinds of product:

* ``"texture"``: a stationary surface made of a base colour, stripes (fixed frequency and
  direction, random phase per image), smooth low-frequency noise and fine grain. Every image is a
  new realisation of the same texture; values stay within 40..215.
* ``"object"``: a rounded shape (a superellipse) with radial shading on a plain dark background,
  with small per-image jitter of position, size, rotation and brightness. The object stays within
  110..230 and the background within 15..75, so the two always differ.

Defects (``DEFECT_KINDS``): ``scratch`` (thin dark polyline), ``spot`` (dark ellipse), ``blotch``
(irregular colour stain), ``cutout`` (a missing piece: background shows through on objects, a dark
hole on textures). On objects, defects are confined to the object. The returned mask is exactly
the set of pixels whose value differs from the same image rendered without the defect.

Everything is deterministic: image ``i`` depends only on ``(seed, i)`` and its defect only on
``(seed, i)`` or the defect seed, so adding or removing defective indices never changes the
normal images.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from defectscope.errors import ConfigError

__all__ = ["DEFECT_KINDS", "synthetic_images", "write_mvtec_category"]

DEFECT_KINDS: tuple[str, ...] = ("scratch", "spot", "blotch", "cutout")
"""Defect kinds that ``synthetic_images`` can paste."""

_PRODUCT_KINDS = ("texture", "object")
_STREAM_STYLE, _STREAM_IMAGE, _STREAM_DEFECT, _STREAM_RECURRING = 0, 1, 2, 3
_RECURRING_COLOURS = np.array(
    [[246, 40, 40], [40, 246, 70], [50, 80, 246], [246, 210, 30]], dtype=np.float64
)
_ABOVE_PRODUCT = 236
"""Every recurring colour has one channel at or above this, brighter than any product pixel."""


@dataclass(frozen=True)
class _Style:
    """Appearance shared by every image of one call (drawn from the seed)."""

    base_colour: np.ndarray
    stripe_angle: float
    stripe_cycles: float
    stripe_amplitude: float
    object_colour: np.ndarray
    background_colour: np.ndarray
    object_exponent: float
    object_aspect: float
    object_angle: float


@dataclass(frozen=True)
class _Rendered:
    """One normal image and, for objects, the layers needed to paste a cut-out."""

    image: np.ndarray
    object_mask: np.ndarray | None
    background: np.ndarray | None


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


def _draw_style(seed: int) -> _Style:
    rng = _rng(seed, _STREAM_STYLE)
    gray = rng.uniform(105, 150)
    return _Style(
        base_colour=gray + rng.uniform(-12, 12, size=3),
        stripe_angle=float(rng.uniform(0, np.pi)),
        stripe_cycles=float(rng.uniform(6, 12)),
        stripe_amplitude=float(rng.uniform(10, 16)),
        object_colour=rng.uniform(150, 185) + rng.uniform(-15, 15, size=3),
        background_colour=rng.uniform(35, 55) + rng.uniform(-6, 6, size=3),
        object_exponent=float(rng.uniform(2.0, 3.5)),
        object_aspect=float(rng.uniform(0.8, 1.0)),
        object_angle=float(rng.uniform(0, np.pi)),
    )


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (size, size) float64."""
    coords = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(coords, coords, indexing="ij")


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise (periodic boundary)."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    std = float(field.std())
    return field / std if std > 0 else field


def _render_texture(style: _Style, rng: np.random.Generator, size: int) -> _Rendered:
    y, x = _grid(size)
    direction = np.cos(style.stripe_angle) * x + np.sin(style.stripe_angle) * y
    phase = rng.uniform(0, 2 * np.pi)
    wave = 2 * np.pi * style.stripe_cycles * direction / size + phase
    stripes = style.stripe_amplitude * np.sin(wave)
    smooth = 9.0 * _smooth_noise(rng, size, sigma=size / 16)
    grain = rng.normal(0.0, 4.0, size=(size, size, 3))
    value = style.base_colour + (stripes + smooth)[..., None] + grain
    image = np.clip(np.rint(value), 40, 215).astype(np.uint8)
    return _Rendered(image=image, object_mask=None, background=None)


def _superellipse(
    y: np.ndarray, x: np.ndarray, centre: tuple[float, float], radii: tuple[float, float],
    angle: float, exponent: float,
) -> np.ndarray:
    """Boolean mask of a rotated superellipse ``|u/a|^p + |v/b|^p <= 1``."""
    dy, dx = y - centre[0], x - centre[1]
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    return (np.abs(u / radii[0]) ** exponent + np.abs(v / radii[1]) ** exponent) <= 1.0


def _render_object(style: _Style, rng: np.random.Generator, size: int) -> _Rendered:
    y, x = _grid(size)
    offset = rng.uniform(-0.03, 0.03, size=2) * size
    centre = (size / 2 + offset[0], size / 2 + offset[1])
    radius = size * (0.32 + rng.uniform(-0.015, 0.015))
    radii = (radius, radius * style.object_aspect)
    angle = style.object_angle + rng.uniform(-0.08, 0.08)
    object_mask = _superellipse(y, x, centre, radii, angle, style.object_exponent)
    distance = np.hypot(y - centre[0], x - centre[1]) / radius
    shading = 1.0 - 0.18 * np.clip(distance, 0, 1.2) ** 2
    brightness = rng.uniform(-5, 5)
    smooth = 4.0 * _smooth_noise(rng, size, sigma=size / 20)
    object_layer = (style.object_colour + brightness) * shading[..., None] + smooth[..., None]
    object_layer = object_layer + rng.normal(0.0, 3.0, size=(size, size, 3))
    gradient = 8.0 * (y / size - 0.5)
    background = style.background_colour + gradient[..., None]
    background = background + rng.normal(0.0, 3.0, size=(size, size, 3))
    object_u8 = np.clip(np.rint(object_layer), 110, 230).astype(np.uint8)
    background_u8 = np.clip(np.rint(background), 15, 75).astype(np.uint8)
    image = np.where(object_mask[..., None], object_u8, background_u8)
    return _Rendered(image=image, object_mask=object_mask, background=background_u8)


def _segment_distance(
    y: np.ndarray, x: np.ndarray, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """Distance from every pixel centre to the segment ``start``-``end`` (points as (y, x))."""
    delta = end - start
    length_sq = float(delta @ delta) or 1.0
    t = np.clip(((y - start[0]) * delta[0] + (x - start[1]) * delta[1]) / length_sq, 0.0, 1.0)
    return np.hypot(y - (start[0] + t * delta[0]), x - (start[1] + t * delta[1]))


def _defect_region(
    kind: str, rng: np.random.Generator, size: int, centre: tuple[float, float]
) -> np.ndarray:
    """Boolean region of one defect of ``kind`` around ``centre`` (y, x)."""
    y, x = _grid(size)
    if kind == "scratch":
        points = [np.array(centre, dtype=np.float64)]
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(2, 4))):
            heading += rng.uniform(-0.5, 0.5)
            step = rng.uniform(0.08, 0.15) * size
            points.append(points[-1] + step * np.array([np.sin(heading), np.cos(heading)]))
        half_width = max(0.75, rng.uniform(0.006, 0.012) * size)
        segments = zip(points, points[1:])
        distance = np.min([_segment_distance(y, x, a, b) for a, b in segments], axis=0)
        return distance <= half_width
    if kind == "spot":
        radii = (max(2.0, rng.uniform(0.03, 0.07) * size), max(2.0, rng.uniform(0.03, 0.07) * size))
        return _superellipse(y, x, centre, radii, rng.uniform(0, np.pi), 2.0)
    if kind == "blotch":
        radius = max(3.0, rng.uniform(0.07, 0.11) * size)
        falloff = 1.0 - np.hypot(y - centre[0], x - centre[1]) / radius
        wobble = 0.35 * _smooth_noise(rng, size, sigma=max(1.0, size / 40))
        region = falloff + wobble > 0.25
        return region if region.any() else falloff > 0
    if kind == "cutout":
        radii = (max(3.0, rng.uniform(0.07, 0.12) * size), max(3.0, rng.uniform(0.05, 0.1) * size))
        return _superellipse(y, x, centre, radii, rng.uniform(0, np.pi), 4.0)
    raise ConfigError(f"unknown defect kind '{kind}'; expected one of {', '.join(DEFECT_KINDS)}")


def _defect_centre(
    rng: np.random.Generator, size: int, kind: str, rendered: _Rendered | None
) -> tuple[float, float]:
    """A centre on the product: anywhere central for textures, on (or at the edge of) objects."""
    if rendered is None or rendered.object_mask is None:
        return (rng.uniform(0.25, 0.75) * size, rng.uniform(0.25, 0.75) * size)
    y, x = np.nonzero(rendered.object_mask)
    cy, cx = y.mean() + 0.5, x.mean() + 0.5
    if kind == "cutout":
        angle = rng.uniform(0, 2 * np.pi)
        return (cy + 0.3 * size * np.sin(angle), cx + 0.3 * size * np.cos(angle))
    return (cy + rng.uniform(-0.15, 0.15) * size, cx + rng.uniform(-0.15, 0.15) * size)


def _paint(
    kind: str, rng: np.random.Generator, rendered: _Rendered, region: np.ndarray
) -> np.ndarray:
    """The image with ``region`` repainted as a ``kind`` defect (relative to the local colour)."""
    original = rendered.image.astype(np.int16)
    painted = original.copy()
    if kind == "scratch":
        painted[region] = original[region] - 85
    elif kind == "spot":
        painted[region] = (original[region] * 0.3).astype(np.int16)
    elif kind == "blotch":
        tint = rng.choice([-1, 1], size=3) * rng.uniform(35, 70, size=3)
        painted[region] = original[region] + np.rint(tint).astype(np.int16)
    elif kind == "cutout":
        if rendered.background is not None:
            painted[region] = rendered.background[region]
        else:
            painted[region] = 12
    return np.clip(painted, 0, 255).astype(np.uint8)


def _recurring_patch(defect_seed: int, size: int, is_object: bool) -> tuple[np.ndarray, np.ndarray]:
    """A fixed region and opaque saturated pixel values, identical wherever it is pasted."""
    rng = _rng(defect_seed, _STREAM_RECURRING)
    kind = str(rng.choice(["scratch", "spot", "blotch"]))
    spread = 0.12 if is_object else 0.25
    offset = rng.uniform(-spread, spread, size=2)
    centre = (size * (0.5 + offset[0]), size * (0.5 + offset[1]))
    region = _defect_region(kind, rng, size, centre)
    colour = _RECURRING_COLOURS[int(rng.integers(len(_RECURRING_COLOURS)))]
    pattern = 10.0 * _smooth_noise(rng, size, sigma=max(1.0, size / 32))
    values = np.clip(np.rint(colour + pattern[..., None]), 0, 255)
    bright = int(np.argmax(colour))
    values[..., bright] = np.maximum(values[..., bright], _ABOVE_PRODUCT)
    return region, values.astype(np.uint8)


def _make_changed(original: np.ndarray, painted: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Force every pixel of ``region`` to differ from ``original`` (a safeguard; rarely needed)."""
    unchanged = region & np.all(painted == original, axis=-1)
    if unchanged.any():
        source = original[unchanged].astype(np.int16)
        painted[unchanged] = np.where(source < 128, source + 64, source - 64).astype(np.uint8)
    return painted


def _generate(
    n: int, kind: str, size: int, defective: Iterable[int], seed: int, defect: str | int | None
) -> tuple[list[np.ndarray], list[np.ndarray], list[str | None]]:
    """Images, masks and the defect kind of each image (None for normal ones)."""
    if kind not in _PRODUCT_KINDS:
        raise ConfigError(f"unknown synthetic kind '{kind}'; expected 'texture' or 'object'")
    if n < 0:
        raise ConfigError(f"the number of images must be at least 0, got {n}")
    if size < 16:
        raise ConfigError(f"synthetic images must be at least 16 pixels wide, got {size}")
    if seed < 0:
        raise ConfigError(f"the seed must be a non-negative integer, got {seed}")
    defect_set = {int(i) for i in defective}
    outside = sorted(i for i in defect_set if not 0 <= i < n)
    if outside:
        raise ConfigError(f"defective indices {outside} are outside 0..{n - 1}")
    recurring: tuple[np.ndarray, np.ndarray, str] | None = None
    if isinstance(defect, bool) or not (defect is None or isinstance(defect, (int, str))):
        raise ConfigError(
            f"defect must be None, 'recurring', a defect kind or a seed, got {defect!r}"
        )
    if defect == "recurring" or isinstance(defect, int):
        defect_seed = seed if defect == "recurring" else int(defect)
        if defect_seed < 0:
            raise ConfigError(f"the defect seed must be a non-negative integer, got {defect_seed}")
        region, values = _recurring_patch(defect_seed, size, kind == "object")
        recurring = (region, values, "recurring")
    elif defect is not None and defect not in DEFECT_KINDS:
        raise ConfigError(
            f"unknown defect '{defect}'; expected None, 'recurring', a seed or one of "
            f"{', '.join(DEFECT_KINDS)}"
        )
    style = _draw_style(seed)
    render = _render_texture if kind == "texture" else _render_object
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    kinds: list[str | None] = []
    for index in range(n):
        rendered = render(style, _rng(seed, _STREAM_IMAGE, index), size)
        mask = np.zeros((size, size), dtype=bool)
        defect_kind: str | None = None
        image = rendered.image
        if index in defect_set:
            if recurring is not None:
                region, values, defect_kind = recurring
                painted = image.copy()
                painted[region] = values[region]
            else:
                rng = _rng(seed, _STREAM_DEFECT, index)
                defect_kind = str(defect) if defect is not None else str(rng.choice(DEFECT_KINDS))
                region = np.zeros((size, size), dtype=bool)
                while not region.any():
                    centre = _defect_centre(rng, size, defect_kind, rendered)
                    region = _defect_region(defect_kind, rng, size, centre)
                    if rendered.object_mask is not None:
                        region &= rendered.object_mask
                painted = _paint(defect_kind, rng, rendered, region)
            image = _make_changed(rendered.image, painted, region)
            mask = np.any(image != rendered.image, axis=-1)
        images.append(image)
        masks.append(mask)
        kinds.append(defect_kind)
    return images, masks, kinds


def synthetic_images(
    n: int,
    *,
    kind: str = "texture",
    size: int = 128,
    defective: Iterable[int] = (),
    seed: int = 0,
    defect: str | int | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` synthetic (size, size, 3) uint8 RGB images and their exact bool masks.

    ``kind`` is "texture" or "object"; images at the indices in ``defective`` get a defect, the
    others an all-False mask. ``defect`` None draws a random kind and shape per image; a name from
    DEFECT_KINDS fixes the kind; "recurring" (or an int defect seed) pastes one IDENTICAL defect,
    same region and same pixel values, into every defective image. Deterministic for a seed.
    """
    images, masks, _ = _generate(n, kind, size, defective, seed, defect)
    return images, masks


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_mvtec_category(
    out_dir: str | os.PathLike[str],
    *,
    kind: str = "object",
    n_train: int = 8,
    n_test_good: int = 4,
    n_test_defect: int = 4,
    size: int = 128,
    seed: int = 0,
    mask_suffix: str = "_mask",
    defect: str | int | None = None,
) -> Path:
    """Write a synthetic MVTec AD category into ``out_dir`` (created; must be absent or empty).

    Layout: ``train/good/000.png``, ``test/good/000.png``, ``test/<defect kind>/000.png`` and
    ``ground_truth/<defect kind>/000<mask_suffix>.png`` (0/255). Returns ``out_dir``.
    """
    root = Path(out_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"refusing to write a synthetic category into non-empty '{root}'")
    total = n_train + n_test_good + n_test_defect
    first_defect = n_train + n_test_good
    images, masks, kinds = _generate(
        total, kind, size, range(first_defect, total), seed, defect
    )
    root.mkdir(parents=True, exist_ok=True)
    for number, index in enumerate(range(n_train)):
        _save_png(images[index], root / "train" / "good" / f"{number:03d}.png")
    for number, index in enumerate(range(n_train, first_defect)):
        _save_png(images[index], root / "test" / "good" / f"{number:03d}.png")
    counters: dict[str, int] = {}
    for index in range(first_defect, total):
        defect_type = kinds[index] or "defect"
        number = counters.get(defect_type, 0)
        counters[defect_type] = number + 1
        _save_png(images[index], root / "test" / defect_type / f"{number:03d}.png")
        mask = masks[index].astype(np.uint8) * 255
        _save_png(mask, root / "ground_truth" / defect_type / f"{number:03d}{mask_suffix}.png")
    return root
