"""Anomaly generation for PRN training: real defects (the labelled images themselves, or their
defects pasted on normal images) and pseudo defects.

All functions work on RGB uint8 images (H, W, 3) that are already at the training size, take a
``numpy.random.Generator`` for every random choice (so a seed fixes the output), and return the
exact mask of the pixels they changed.

* :func:`paste_real_defect` cuts a real defect out by its mask, augments it (flips, 90 degree
  rotations, scale 0.75 to 1.25, brightness/contrast jitter) and pastes it hard (alpha 1) onto a
  normal image, centred on a foreground pixel and clipped to the foreground. The returned mask
  is exactly the set of pasted pixels: outside it the image is unchanged, inside it every pixel
  is the defect's pixel.
* :func:`flipped_defect` gives a labelled defective image itself, mirrored at random, with its
  own mask (``AnomalyGenerator``'s ``seen_share`` of the real-defect samples).
* :func:`pseudo_defect` thresholds seeded Perlin noise into a mask and alpha-blends a procedural
  texture or a shifted, rotated patch of another normal image into it, with one alpha in
  [0.5, 1] per defect: inside the mask ``out = round((1 - alpha) * image + alpha * texture)``,
  outside it the image is unchanged.
* Other pseudo-defect families (``families`` of :func:`pseudo_defect`, chosen uniformly per
  defect; the default is the Perlin family alone): ``"thin"`` (:func:`thin_defect`, a crack-like
  curve 1 to 3 px wide and 15 to 60 % of the image side long, darker or brighter than its
  surroundings), ``"stain"`` (:func:`stain_defect`, a Perlin blob shifted by only 6 to 20 grey
  levels) and ``"missing"`` (:func:`missing_region`, a large jagged region, 4 to 30 % of the
  image, filled with a flat dark, bright or background colour, as a broken-off part) and
  ``"uneven"`` (:func:`uneven_defect`, a band cut off one side or a large rounded region, 10 to
  55 % of the image, shifted by only 4 to 14 grey levels, as uneven brightness). Each
  changes only the pixels of the mask it returns, and changes all of them.
* :func:`estimate_foreground` is the simple object estimate used to place defects "on the
  object": each pixel's colour distance to the median border colour, split by Otsu's threshold.
  When the split is weak (the two classes differ by less than 20 grey levels on average, as on
  textures), when the "foreground" covers more than 25 % of the border pixels (an object that
  fills the frame, such as a cropped tile with brightness bands) or less than 5 % of the image,
  the whole image counts as foreground.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu

from defectscope.methods.prn.config import PSEUDO_FAMILIES


def perlin_noise(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` with ``cells`` lattice cells per axis, in about [-1, 1]."""
    height, width = shape
    cells_y, cells_x = max(1, int(cells[0])), max(1, int(cells[1]))
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(cells_y + 1, cells_x + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.linspace(0.0, cells_y, height, endpoint=False)
    xs = np.linspace(0.0, cells_x, width, endpoint=False)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    cell_y, cell_x = grid_y.astype(int), grid_x.astype(int)
    frac_y, frac_x = grid_y - cell_y, grid_x - cell_x

    def corner(dy: int, dx: int) -> np.ndarray:
        gradient = gradients[cell_y + dy, cell_x + dx]
        return gradient[..., 0] * (frac_y - dy) + gradient[..., 1] * (frac_x - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    weight_y, weight_x = fade(frac_y), fade(frac_x)
    top = corner(0, 0) * (1 - weight_x) + corner(0, 1) * weight_x
    bottom = corner(1, 0) * (1 - weight_x) + corner(1, 1) * weight_x
    return (top * (1 - weight_y) + bottom * weight_y) * np.sqrt(2.0)


def fractal_noise(shape: tuple[int, int], cells: int, octaves: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of Perlin octaves (each twice the frequency, half the amplitude), scaled to [0, 1]."""
    total = np.zeros(shape, dtype=np.float64)
    amplitude = 1.0
    for octave in range(octaves):
        total += amplitude * perlin_noise(shape, (cells * 2**octave, cells * 2**octave), rng)
        amplitude *= 0.5
    low, high = total.min(), total.max()
    return (total - low) / (high - low) if high > low else np.zeros(shape)


def estimate_foreground(
    image: np.ndarray, *, min_separation: float = 20.0, max_border_fraction: float = 0.25
) -> np.ndarray:
    """Boolean foreground estimate: distance to the median border colour, Otsu-thresholded."""
    rgb = _as_rgb(image).astype(np.float64)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)
    distance = np.sqrt(((rgb - np.median(border, axis=0)) ** 2).sum(axis=-1))
    whole = np.ones(distance.shape, dtype=bool)
    if distance.max() - distance.min() < 1e-6:
        return whole
    threshold = threshold_otsu(distance)
    foreground = distance > threshold
    if not foreground.any() or foreground.all():
        return whole
    if distance[foreground].mean() - distance[~foreground].mean() < min_separation:
        return whole
    border_foreground = np.concatenate([foreground[0], foreground[-1], foreground[:, 0], foreground[:, -1]])
    if border_foreground.mean() > max_border_fraction:
        return whole
    foreground = ndimage.binary_opening(foreground, iterations=2)
    foreground = ndimage.binary_fill_holes(foreground)
    if foreground.mean() < 0.05:
        return whole
    return foreground


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an (H, W[, 3]) uint8 / bool array to (height, width) with PIL."""
    height, width = size
    if array.shape[0] == height and array.shape[1] == width:
        return array
    if array.dtype == bool:
        resized = Image.fromarray(array.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
        return np.asarray(resized) > 127
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((width, height), method))


def _ring(mask: np.ndarray) -> np.ndarray:
    """The pixels within a few pixels (2 % of the image side, at least 2) around ``mask``, not in it."""
    width = max(2, int(round(0.02 * max(mask.shape))))
    return ndimage.binary_dilation(mask, iterations=width) & ~mask


def _sample_centre(allowed: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    ys, xs = np.nonzero(allowed)
    index = int(rng.integers(len(ys)))
    return int(ys[index]), int(xs[index])


def paste_real_defect(
    normal: np.ndarray,
    defect_image: np.ndarray,
    defect_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    foreground: np.ndarray | None = None,
    level: str = "absolute",
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a real defect out by its mask, augment it, paste it onto ``normal``; -> (image, mask).

    ``defect_image`` and ``defect_mask`` are resized to ``normal``'s size first. The defect is
    centred on a pixel of ``foreground`` (default: :func:`estimate_foreground` of ``normal``).
    Pixels of the defect that fall off the foreground are not pasted. The returned mask marks
    exactly the pasted pixels (alpha 1).

    ``level``: ``"absolute"`` pastes the defect's own grey levels (contrast jitter 0.85-1.15
    around its mean, brightness jitter +-15), so a defect cut from a brighter photograph arrives
    with a step at its edge; ``"relative"`` keeps each pixel's difference to the defect's own
    surroundings (the mean colour of a ring around its mask in its source image; contrast jitter
    on that difference, no brightness jitter) and adds it to the mean colour of the target around
    the pasted region, so a faint defect stays faint on a tile of another exposure. The random
    draws are the same in both modes.
    """
    normal = _as_rgb(normal)
    height, width = normal.shape[:2]
    mask = _resize(np.asarray(defect_mask).astype(bool), (height, width))
    if not mask.any():
        return normal.copy(), np.zeros((height, width), dtype=bool)
    source = _resize(_as_rgb(defect_image), (height, width))
    ys, xs = np.nonzero(mask)
    patch = source[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    patch_mask = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    patch, patch_mask = flipped_defect(patch, patch_mask, rng)
    turns = int(rng.integers(4))
    patch, patch_mask = np.rot90(patch, turns), np.rot90(patch_mask, turns)
    scale = float(rng.uniform(0.75, 1.25))
    new_h = int(np.clip(round(patch.shape[0] * scale), 1, height))
    new_w = int(np.clip(round(patch.shape[1] * scale), 1, width))
    patch = _resize(np.ascontiguousarray(patch), (new_h, new_w))
    patch_mask = _resize(np.ascontiguousarray(patch_mask), (new_h, new_w))
    if not patch_mask.any():
        return normal.copy(), np.zeros((height, width), dtype=bool)
    contrast = rng.uniform(0.85, 1.15)
    brightness = rng.uniform(-15.0, 15.0)
    surround = _ring(mask) if level == "relative" else None  # only the relative paste needs it
    relative = surround is not None and bool(surround.any())
    if relative:
        source_level = source[surround].mean(axis=0)
    else:
        mean = patch[patch_mask].mean()
        patch = np.clip((patch.astype(np.float64) - mean) * contrast + mean + brightness, 0, 255).astype(np.uint8)

    allowed = estimate_foreground(normal) if foreground is None else foreground.astype(bool)
    if not allowed.any():
        allowed = np.ones((height, width), dtype=bool)
    centre_y, centre_x = _sample_centre(allowed, rng)
    top = int(np.clip(centre_y - new_h // 2, 0, height - new_h))
    left = int(np.clip(centre_x - new_w // 2, 0, width - new_w))

    placed_mask = np.zeros((height, width), dtype=bool)
    placed_mask[top : top + new_h, left : left + new_w] = patch_mask
    if relative:
        around = _ring(placed_mask)
        target_level = normal[around].mean(axis=0) if around.any() else normal.reshape(-1, 3).mean(axis=0)
        difference = (patch.astype(np.float64) - source_level) * contrast
        patch = np.clip(difference + target_level, 0, 255).astype(np.uint8)
    placed = np.zeros_like(normal)
    placed[top : top + new_h, left : left + new_w] = patch
    pasted = placed_mask & allowed
    if not pasted.any():
        pasted = placed_mask
    output = normal.copy()
    output[pasted] = placed[pasted]
    return output, pasted


def flipped_defect(
    defect_image: np.ndarray, defect_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A defective image and its mask mirrored left-right and up-down at random (each with
    probability 1/2, in that order); -> (image, mask), copies. Used whole, a labelled image keeps
    the defect's true surroundings, which a paste onto another normal image does not (a faint
    region is faint against its own image, not against another exposure); no rotation then, as
    an image squashed to a square would come out with its squash turned. :func:`paste_real_defect`
    mirrors its cut-out patch with it too (and rotates that)."""
    image, mask = np.asarray(defect_image), np.asarray(defect_mask).astype(bool)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def procedural_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random RGB uint8 texture: coloured fractal noise, stripes, checks or speckle."""
    height, width = shape
    kind = int(rng.integers(4))
    colour_a = rng.uniform(0, 255, size=3)
    colour_b = rng.uniform(0, 255, size=3)
    if kind == 0:
        weight = fractal_noise(shape, int(rng.integers(2, 9)), 4, rng)
    elif kind == 1:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 24)
        ys, xs = np.mgrid[0:height, 0:width]
        weight = 0.5 + 0.5 * np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)
    elif kind == 2:
        period = int(rng.integers(4, 24))
        ys, xs = np.mgrid[0:height, 0:width]
        weight = (((ys // period) + (xs // period)) % 2).astype(np.float64)
    else:
        weight = rng.random(shape)
        weight = ndimage.gaussian_filter(weight, sigma=rng.uniform(0.5, 2.0))
        weight = (weight - weight.min()) / max(weight.max() - weight.min(), 1e-9)
    texture = (1 - weight)[..., None] * colour_a + weight[..., None] * colour_b
    return np.clip(texture, 0, 255).astype(np.uint8)


def perlin_mask(
    shape: tuple[int, int], rng: np.random.Generator, *, allowed: np.ndarray | None = None, attempts: int = 10
) -> np.ndarray:
    """A thresholded Perlin-noise blob mask (inside ``allowed``); never empty unless ``allowed`` is."""
    height, width = shape
    allowed_mask = np.ones(shape, dtype=bool) if allowed is None else allowed.astype(bool)
    for _ in range(attempts):
        cells = int(2 ** rng.integers(1, 4))
        noise = perlin_noise(shape, (cells, cells), rng)
        mask = (noise > rng.uniform(0.35, 0.6)) & allowed_mask
        if mask.mean() > 0.002:
            return mask
    centre_y, centre_x = _sample_centre(allowed_mask, rng)
    radius = max(2, min(height, width) // 16)
    ys, xs = np.mgrid[0:height, 0:width]
    return (((ys - centre_y) ** 2 + (xs - centre_x) ** 2) <= radius**2) & allowed_mask


def pseudo_defect(
    normal: np.ndarray,
    rng: np.random.Generator,
    *,
    other_images: Sequence[np.ndarray] = (),
    foreground: np.ndarray | None = None,
    families: Sequence[str] = ("perlin",),
) -> tuple[np.ndarray, np.ndarray, float]:
    """A pseudo defect of a family drawn uniformly from ``families`` (:data:`PSEUDO_FAMILIES`).

    ``"perlin"`` (the default, and the only family before 2026-12-03): a procedural texture (or
    a patch of another normal image) blended into a Perlin mask; inside ``mask`` the pixels are
    ``round((1 - alpha) * normal + alpha * texture)``, outside they are unchanged. The other
    families: :func:`thin_defect`, :func:`stain_defect`, :func:`missing_region`,
    :func:`uneven_defect`. Returns
    (image, mask, alpha); with one family no random number is spent on the choice, so
    ``families=("perlin",)`` gives exactly the earlier output.
    """
    unknown = [f for f in families if f not in PSEUDO_FAMILIES]
    if not families or unknown:
        raise ValueError(f"pseudo-defect families must be some of {list(PSEUDO_FAMILIES)}, got {list(families)}")
    family = families[0] if len(families) == 1 else families[int(rng.integers(len(families)))]
    normal = _as_rgb(normal)
    shape = normal.shape[:2]
    allowed = estimate_foreground(normal) if foreground is None else foreground.astype(bool)
    if not allowed.any():
        allowed = np.ones(shape, dtype=bool)
    if family == "thin":
        return thin_defect(normal, rng, allowed=allowed)
    if family == "stain":
        return stain_defect(normal, rng, allowed=allowed)
    if family == "missing":
        return missing_region(normal, rng, allowed=allowed)
    if family == "uneven":
        return uneven_defect(normal, rng, allowed=allowed)
    mask = perlin_mask(shape, rng, allowed=allowed)
    if len(other_images) > 0 and rng.random() < 0.5:
        other = _resize(_as_rgb(other_images[int(rng.integers(len(other_images)))]), shape)
        other = np.rot90(other, int(rng.integers(1, 4)))
        other = _resize(np.ascontiguousarray(other), shape)
        texture = np.roll(other, (int(rng.integers(shape[0])), int(rng.integers(shape[1]))), axis=(0, 1))
        texture = np.clip(texture.astype(np.float64) * rng.uniform(0.6, 1.4), 0, 255).astype(np.uint8)
    else:
        texture = procedural_texture(shape, rng)
    alpha = float(rng.uniform(0.5, 1.0))
    blended = np.rint((1 - alpha) * normal.astype(np.float64) + alpha * texture.astype(np.float64))
    output = normal.copy()
    output[mask] = np.clip(blended, 0, 255).astype(np.uint8)[mask]
    return output, mask, alpha


def _shift_inside(normal: np.ndarray, mask: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``normal`` with ``shift`` (H, W) grey levels added inside ``mask``; every masked pixel
    changes by at least one level (the shift's sign is kept where clipping would undo it)."""
    values = normal.astype(np.float64)
    changed = np.rint(values + shift[..., None])
    changed = np.where(changed > 255, values - np.abs(shift[..., None]), changed)
    changed = np.where(changed < 0, values + np.abs(shift[..., None]), changed)
    changed = np.clip(changed, 0, 255)
    same = (changed == values).all(axis=-1, keepdims=True)
    changed = np.where(same, np.where(values < 128, values + 1, values - 1), changed)
    output = normal.copy()
    output[mask] = changed.astype(np.uint8)[mask]
    return output


def thin_mask(
    shape: tuple[int, int], rng: np.random.Generator, *, allowed: np.ndarray | None = None,
    widths: tuple[int, int] = (1, 3), lengths: tuple[float, float] = (0.15, 0.6),
) -> np.ndarray:
    """A crack-like mask: a smooth random curve ``widths`` px wide (inclusive) and ``lengths``
    (fractions of the shorter side) long, started on an ``allowed`` pixel, with an occasional
    short branch; clipped to ``allowed`` (never empty unless ``allowed`` is)."""
    height, width = shape
    allowed_mask = np.ones(shape, dtype=bool) if allowed is None else allowed.astype(bool)
    side = min(height, width)
    stroke = int(rng.integers(widths[0], widths[1] + 1))
    length = float(rng.uniform(*lengths)) * side
    centre = np.array(_sample_centre(allowed_mask, rng), dtype=np.float64)
    heading = float(rng.uniform(0, 2 * np.pi))
    bend = float(rng.uniform(0.01, 0.05))

    def walk(start: np.ndarray, angle: float, steps: int) -> list[np.ndarray]:
        points, position = [], start.copy()
        for _ in range(steps):
            angle += float(rng.normal(0.0, bend))
            position = position + 0.5 * np.array([np.sin(angle), np.cos(angle)])
            points.append(position.copy())
        return points

    steps = max(4, int(2 * length / 2))
    points = walk(centre, heading, steps) + walk(centre, heading + np.pi, steps)
    if rng.random() < 0.3:
        root = points[int(rng.integers(len(points)))]
        points += walk(root, heading + float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)), steps // 2)
    coords = np.rint(np.array(points)).astype(int)
    keep = (coords[:, 0] >= 0) & (coords[:, 0] < height) & (coords[:, 1] >= 0) & (coords[:, 1] < width)
    mask = np.zeros(shape, dtype=bool)
    mask[coords[keep, 0], coords[keep, 1]] = True
    if stroke > 1:
        mask = ndimage.binary_dilation(mask, structure=np.ones((stroke, stroke), dtype=bool))
    mask &= allowed_mask
    if not mask.any():
        y, x = int(centre[0]), int(centre[1])
        mask[y, x] = allowed_mask[y, x]
    return mask


def _shifted(
    normal: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, dark_share: float, depths: tuple[float, float],
    base: float, swing: float,
) -> tuple[np.ndarray, float]:
    """``normal`` with the pixels of ``mask`` shifted darker (with probability ``dark_share``) or
    brighter by a depth drawn from ``depths`` grey levels, varying smoothly as base + swing x
    fractal noise; -> (image, depth)."""
    sign = -1.0 if rng.random() < dark_share else 1.0
    depth = rng.uniform(*depths)
    shift = sign * depth * (base + swing * fractal_noise(mask.shape, 4, 2, rng))
    return _shift_inside(normal, mask, shift), depth


def thin_defect(
    normal: np.ndarray, rng: np.random.Generator, *, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """A crack: :func:`thin_mask` made darker (three times in four) or brighter by 15 to 60 grey
    levels, the shift fading slightly along the curve; -> (image, mask, 1.0)."""
    normal = _as_rgb(normal)
    shape = normal.shape[:2]
    mask = thin_mask(shape, rng, allowed=allowed)
    image, _ = _shifted(normal, mask, rng, dark_share=0.75, depths=(15, 60), base=0.6, swing=0.4)
    return image, mask, 1.0


def stain_defect(
    normal: np.ndarray, rng: np.random.Generator, *, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """A low-contrast stain: a Perlin blob (:func:`perlin_mask`) whose pixels shift by 6 to 20
    grey levels (darker or brighter, the shift varying smoothly inside); -> (image, mask, alpha)
    with alpha the mean shift / 255."""
    normal = _as_rgb(normal)
    shape = normal.shape[:2]
    mask = perlin_mask(shape, rng, allowed=allowed)
    image, depth = _shifted(normal, mask, rng, dark_share=0.5, depths=(6, 20), base=0.7, swing=0.3)
    return image, mask, float(depth / 255.0)


def uneven_mask(shape: tuple[int, int], rng: np.random.Generator, *, allowed: np.ndarray | None = None) -> np.ndarray:
    """A large region of uneven brightness: three times in five a band cut off one side of the
    image by a smooth, slightly tilted curve (20 to 55 % of the image deep), otherwise a rounded blob
    (radius 20 to 40 % of the shorter side, edge warped by Perlin noise); clipped to ``allowed``
    (never empty unless ``allowed`` is)."""
    height, width = shape
    allowed_mask = np.ones(shape, dtype=bool) if allowed is None else allowed.astype(bool)
    ys, xs = np.mgrid[0:height, 0:width]
    if rng.random() < 0.6:
        side = int(rng.integers(4))  # 0 top, 1 bottom, 2 left, 3 right
        across, along = (height, width) if side < 2 else (width, height)
        position = np.linspace(0.0, 1.0, along)
        wave = perlin_noise((1, along), (1, int(rng.integers(1, 4))), rng)[0]
        depth = rng.uniform(0.2, 0.55) + rng.uniform(-0.12, 0.12) * (position - 0.5) + rng.uniform(0.0, 0.08) * wave
        edge = np.clip(depth, 0.05, 0.95) * across
        if side == 0:
            mask = ys < edge[None, :]
        elif side == 1:
            mask = (height - 1 - ys) < edge[None, :]
        elif side == 2:
            mask = xs < edge[:, None]
        else:
            mask = (width - 1 - xs) < edge[:, None]
    else:
        centre_y, centre_x = _sample_centre(allowed_mask, rng)
        radius = float(rng.uniform(0.2, 0.4)) * min(height, width)
        distance = np.sqrt((ys - centre_y) ** 2 + ((xs - centre_x) * rng.uniform(0.6, 1.6)) ** 2)
        mask = distance < radius * (1.0 + 0.25 * perlin_noise(shape, (2, 2), rng))
    mask &= allowed_mask
    if not mask.any():
        centre_y, centre_x = _sample_centre(allowed_mask, rng)
        mask[centre_y, centre_x] = True
    return mask


def uneven_defect(
    normal: np.ndarray, rng: np.random.Generator, *, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Uneven brightness: a large :func:`uneven_mask` region whose pixels shift by only 4 to 14 grey
    levels (darker or brighter, the shift varying gently inside), as the magnetic tiles' Uneven
    class (a quarter of the image at about 6 grey levels); -> (image, mask, alpha) with alpha the
    mean shift / 255."""
    normal = _as_rgb(normal)
    mask = uneven_mask(normal.shape[:2], rng, allowed=allowed)
    image, depth = _shifted(normal, mask, rng, dark_share=0.5, depths=(4, 14), base=0.8, swing=0.2)
    return image, mask, float(depth / 255.0)


def missing_region(
    normal: np.ndarray, rng: np.random.Generator, *, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """A large missing part: a jagged blob (radius 12 to 30 % of the shorter side, edge warped by
    Perlin noise) centred on an ``allowed`` pixel, clipped to it, filled with one flat colour
    (the image's dark or bright end, or the median border colour) plus faint noise.
    -> (image, mask, 1.0)."""
    normal = _as_rgb(normal)
    shape = normal.shape[:2]
    height, width = shape
    allowed_mask = np.ones(shape, dtype=bool) if allowed is None else allowed.astype(bool)
    centre_y, centre_x = _sample_centre(allowed_mask, rng)
    radius = float(rng.uniform(0.12, 0.30)) * min(height, width)
    ys, xs = np.mgrid[0:height, 0:width]
    distance = np.sqrt((ys - centre_y) ** 2 + ((xs - centre_x) * rng.uniform(0.6, 1.6)) ** 2)
    warp = perlin_noise(shape, (4, 4), rng)
    mask = (distance < radius * (1.0 + 0.35 * warp)) & allowed_mask
    if not mask.any():
        mask[centre_y, centre_x] = True
    grey = normal.astype(np.float64).mean(axis=-1)
    choice = int(rng.integers(3))
    if choice == 0:
        colour = np.full(3, np.percentile(grey, 2) * rng.uniform(0.2, 0.8))
    elif choice == 1:
        colour = np.full(3, min(255.0, np.percentile(grey, 98) * rng.uniform(1.0, 1.3)))
    else:
        border = np.concatenate([normal[0], normal[-1], normal[:, 0], normal[:, -1]], axis=0)
        colour = np.median(border, axis=0).astype(np.float64)
    fill = colour + rng.normal(0.0, 3.0, size=(height, width, 1))
    fill = np.clip(np.rint(fill), 0, 255).astype(np.uint8)
    output = normal.copy()
    output[mask] = fill[mask]
    same = (output == normal).all(axis=-1) & mask
    output[same] = np.where(normal[same] < 128, normal[same] + 8, normal[same] - 8)
    return output, mask, 1.0


@dataclass
class GeneratedSample:
    """One training sample: image (H, W, 3) uint8, mask (H, W) bool, kind and blend alpha."""

    image: np.ndarray
    mask: np.ndarray
    kind: str
    alpha: float


KINDS = ("normal", "real", "pseudo")


def epoch_plan(
    count: int, normal_images: int, has_real: bool, shares: Sequence[float], rng: np.random.Generator
) -> list[tuple[int, str]]:
    """``count`` (normal-image index, kind) pairs with the kinds in the given shares, shuffled.

    ``shares`` are (normal, real, pseudo); with no real anomalies their share goes to pseudo.
    """
    normal_share, real_share, pseudo_share = (float(s) for s in shares)
    if not has_real:
        pseudo_share += real_share
        real_share = 0.0
    total = normal_share + real_share + pseudo_share
    n_normal = int(round(count * normal_share / total))
    n_real = int(round(count * real_share / total))
    n_pseudo = max(0, count - n_normal - n_real)
    kinds = ["normal"] * n_normal + ["real"] * n_real + ["pseudo"] * n_pseudo
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    order = np.concatenate([rng.permutation(normal_images) for _ in range(-(-count // normal_images))])
    return [(int(order[i]), kinds[i]) for i in range(count)]


class AnomalyGenerator:
    """Makes training samples from normal images and a few real (image, mask) anomalies.

    Images are resized to ``image_size`` once; foreground estimates are cached per normal image.
    """

    def __init__(
        self,
        normal_images: Sequence[np.ndarray],
        anomalies: Sequence[tuple[np.ndarray, np.ndarray]] = (),
        *,
        image_size: int,
        families: Sequence[str] = ("perlin",),
        paste_level: str = "absolute",
        seen_share: float = 0.0,
    ) -> None:
        shape = (image_size, image_size)
        self.families = tuple(families)
        self.paste_level = paste_level
        self.seen_share = float(seen_share)
        self.normals = [_resize(_as_rgb(np.asarray(image)), shape) for image in normal_images]
        self.anomalies = [
            (_resize(_as_rgb(np.asarray(image)), shape), _resize(np.asarray(mask).astype(bool), shape))
            for image, mask in anomalies
        ]
        self.anomalies = [(image, mask) for image, mask in self.anomalies if mask.any()]
        self._foregrounds: dict[int, np.ndarray] = {}

    def foreground(self, index: int) -> np.ndarray:
        """Cached :func:`estimate_foreground` of normal image ``index``."""
        if index not in self._foregrounds:
            self._foregrounds[index] = estimate_foreground(self.normals[index])
        return self._foregrounds[index]

    def make(self, index: int, kind: str, rng: np.random.Generator) -> GeneratedSample:
        """One sample of ``kind`` ("normal", "real" or "pseudo") built on normal image ``index``."""
        normal = self.normals[index]
        if kind == "normal":
            return GeneratedSample(normal, np.zeros(normal.shape[:2], dtype=bool), kind, 0.0)
        if kind == "real" and self.anomalies:
            image, mask = self.anomalies[int(rng.integers(len(self.anomalies)))]
            # No draw when seen_share is 0, so the default streams stay those of before the setting.
            if self.seen_share > 0 and rng.random() < self.seen_share:
                seen, seen_mask = flipped_defect(image, mask, rng)
                return GeneratedSample(seen, seen_mask, "real", 1.0)
            pasted, pasted_mask = paste_real_defect(normal, image, mask, rng, foreground=self.foreground(index), level=self.paste_level)
            return GeneratedSample(pasted, pasted_mask, "real", 1.0)
        others = [self.normals[int(i)] for i in rng.integers(len(self.normals), size=min(4, len(self.normals)))]
        image, mask, alpha = pseudo_defect(
            normal, rng, other_images=others, foreground=self.foreground(index), families=self.families
        )
        return GeneratedSample(image, mask, "pseudo", alpha)
