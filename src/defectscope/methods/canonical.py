"""A canonical pose per image: a texture turned from image to image is turned back before scoring
(docs/CANONICAL_POSE.md).

Mutual scoring compares each patch with the patches of the *other* images. A directional
texture (streaks, a mesh, a weave) photographed at another angle in every image has few
look-alike patches in the other images, and its normal patches score high. :func:`plan_batch`
looks at the batch itself:

1. per image, on a grey thumbnail (short side :data:`THUMBNAIL` pixels, the central square),
   the dominant orientation from the gradient structure: the magnitude-weighted mean of
   ``exp(i * fold * theta)`` over the gradient directions ``theta`` of the central disc (the
   double-angle mean of the structure tensor for ``fold`` = 2, angles modulo 180 degrees;
   ``fold`` = 4 folds them modulo 90 degrees, for four-fold patterns such as a square mesh,
   whose two directions cancel at fold 2). Its modulus, the *coherence* in [0, 1], says how
   directional the texture is (0: isotropic). The batch takes fold 2 when its median coherence
   there reaches :data:`MIN_COHERENCE`, else fold 4 (``canonical_fold`` fixes it);
2. the batch's *spread*: the circular standard deviation of the confident images' folded
   angles (degrees). Aligned textures show a spread of a degree or two, a texture at any angle
   tens of degrees;
3. ``canonical_pose="auto"`` turns the images only when the batch is directional (median
   coherence at least :data:`MIN_COHERENCE` for its fold) *and* its images disagree (spread
   above :data:`MIN_SPREAD`); "on" whenever at least two images are confident; "off" never
   looks. Each confident image (coherence at least :data:`IMAGE_COHERENCE`) is turned by the
   folded difference between the batch's circular mean angle and its own (at most 90 degrees
   at fold 2); the others are left as they are. The thresholds were chosen on the shared dev
   batches and the pose proxy built from them (all dev data).

:meth:`PosePlan.warp` turns each image about its centre at its own size (``expand``: on the
bounding box of the turned image), mirroring the image beyond its edges, so no corner is empty.
The detector scores the turned images as a batch (``MuSc.score_posed``): the patches of a
turned image whose source lies outside the original (the mirrored corners) take the image's
lowest patch score before the maps are smoothed, so their seams do not spread; each map is then
turned back into its image's frame (:func:`unturn_maps`; where the frame falls outside the
turned image, i.e. the corners a same-size turn cuts off, the turned map's nearest edge value,
:data:`OUTSIDE`), and the image scores, the verdict and the masks are taken on the maps turned
back. Where the turn cuts corners off the images' frames (:data:`FILL`), a second pass scores the
unturned batch: its maps, brought to the turned maps' scale (:func:`fill_corners`), give the
pixels, the cut-off corners included, while the turned pass gives the image scores
(docs/CANONICAL_POSE.md section 9). The plan's facts go to ``result.extras["canonical_pose"]``
and ``batch_facts``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from defectscope.methods.base import with_batch_fact

CANONICAL_POSES = ("auto", "off", "on")
THUMBNAIL = 256
"""Short side of the grey thumbnail the orientation is measured on (pixels)."""
FOLD = 2
"""Angles are folded modulo 360 / fold degrees (2: half turns look alike; 4: quarter turns too)."""
MIN_COHERENCE = {2: 0.35, 4: 0.2}
"""auto: the batch's median coherence (per fold) must reach this (a directional texture) ..."""
MIN_SPREAD = 8.0
"""... and the circular spread of its confident images' angles must exceed this (degrees)."""
IMAGE_COHERENCE = 0.1
"""An image is turned only when its own coherence reaches this."""
OUTSIDE = "edge"
"""Where an image's own frame falls outside its turned image (its corners, cut off by the turn),
its map takes the turned map's nearest edge value ("edge"), or the map's minimum ("min").
Measured on the posed magnetic tiles (docs/CANONICAL_POSE.md): equal image AUROC, better pixels
with "edge"."""
MARGIN = 0
"""Cells of the finest grid next to a turned image's mirrored corners that take its lowest patch
score too (their features reach into the mirror's seams)."""
SMOOTHING = 1.0
"""Gaussian sigma (thumbnail pixels) before the gradients."""
FILL = "quantile"
"""How the corners a same-size turn cuts off an image's frame are scored where the gate opens:
"edge" (no second pass: :data:`OUTSIDE`), or from a second pass that scores the unturned batch,
its maps brought to the turned maps' scale on the region both passes cover (:func:`match_scale`:
"quantile", one quantile map for the batch; "affine", mean and standard deviation per image)."""
FILL_SCORE = "turned"
"""Where the image score (map maximum, then RsCIN) is taken when the corners are filled:
"turned" (the turned pass's region only, as without the fill) or "filled" (the whole filled map)."""
FILL_BLEND = "unturned"
"""Inside the covered region: "unturned" takes the unturned pass's map there too (brought to
scale: every pixel of the map is the default path's, the turned pass gives the image scores);
"none" keeps the turned pass's map; "min" / "mean" take the minimum / mean of the two passes'
maps; "meanW" the weighted mean, W on the turned pass. Measured on the posed magnetic tiles
(docs/CANONICAL_POSE.md section 9)."""
FILL_LEVELS = 1001
"""Quantile levels of the quantile map."""


def thumbnail(image: np.ndarray, side: int = THUMBNAIL) -> np.ndarray:
    """The image in grey, resized so that its short side is ``side`` (aspect kept), its central
    ``side`` x ``side`` square, as float64 in [0, 1]."""
    from PIL import Image

    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype == np.uint8:
        picture = Image.fromarray(np.ascontiguousarray(array[..., :3]) if array.ndim == 3 else array)
        picture = picture.convert("L") if picture.mode != "L" else picture
        top_value = 255.0
    else:
        grey = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]) if array.ndim == 3 else array.astype(np.float64)
        top_value = 255.0 if grey.max(initial=0.0) > 1.0 else 1.0
        picture = Image.fromarray(grey.astype(np.float32), mode="F")
    width, height = picture.size
    factor = side / min(height, width)
    size = (max(side, round(width * factor)), max(side, round(height * factor)))
    small = np.asarray(picture.resize(size, Image.BILINEAR, reducing_gap=2.0), dtype=np.float64) / top_value
    top, left = (small.shape[0] - side) // 2, (small.shape[1] - side) // 2
    return small[top:top + side, left:left + side]


def orientations(grey: np.ndarray, folds: Sequence[int] = (FOLD,)) -> list[tuple[float, float]]:
    """Per fold: (dominant gradient direction in degrees in [-180 / fold, 180 / fold), coherence
    in [0, 1]) of a grey image, from the magnitude-weighted mean of exp(i fold theta) over its
    central disc. Directions are in pixel coordinates (x to the right, y down)."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.asarray(grey, dtype=np.float64), SMOOTHING)
    gx, gy = ndimage.sobel(smooth, 1), ndimage.sobel(smooth, 0)
    height, width = smooth.shape
    yy, xx = np.mgrid[:height, :width]
    disc = (xx - (width - 1) / 2.0) ** 2 + (yy - (height - 1) / 2.0) ** 2 <= (0.5 * min(height, width)) ** 2
    gradient = (gx + 1j * gy)[disc]
    power = gradient.real**2 + gradient.imag**2
    total = float(power.sum())
    if total <= 0.0:
        return [(0.0, 0.0) for _ in folds]
    found = []
    for fold in folds:
        # |g|^2 exp(i fold theta) = g^fold / |g|^(fold - 2), with g = gx + i gy
        turned = gradient**fold if fold == 2 else gradient**fold / np.maximum(power, 1e-30) ** ((fold - 2) / 2)
        mean = complex(turned.sum() / total)
        found.append((math.degrees(math.atan2(mean.imag, mean.real)) / fold, abs(mean)))
    return found


def orientation(grey: np.ndarray, fold: int = FOLD) -> tuple[float, float]:
    """(angle, coherence) of :func:`orientations` for one fold."""
    return orientations(grey, (fold,))[0]


def circular_spread(angles: Sequence[float], fold: int = FOLD) -> float:
    """Circular standard deviation of folded angles (degrees, on the folded scale)."""
    if len(angles) == 0:
        return 0.0
    resultant = abs(np.mean(np.exp(1j * fold * np.radians(np.asarray(angles, dtype=np.float64)))))
    return math.degrees(math.sqrt(-2.0 * math.log(max(resultant, 1e-12)))) / fold


def circular_mean(angles: Sequence[float], fold: int = FOLD) -> float:
    """Circular mean of folded angles (degrees, in [-180 / fold, 180 / fold))."""
    mean = np.mean(np.exp(1j * fold * np.radians(np.asarray(angles, dtype=np.float64))))
    return math.degrees(math.atan2(mean.imag, mean.real)) / fold


def folded(angle: float, fold: int = FOLD) -> float:
    """``angle`` (degrees) folded into [-180 / fold, 180 / fold)."""
    period = 360.0 / fold
    return (angle + period / 2.0) % period - period / 2.0


def canvas_shape(shape: tuple[int, int], turn: float, scale: float = 1.0, expand: bool = False) -> tuple[int, int]:
    """(height, width) of the turned image: the image's own, or with ``expand`` the bounding box
    of the turned (and scaled) image, so that no part of it is cut off."""
    if not expand or (turn == 0.0 and scale == 1.0):
        return int(shape[0]), int(shape[1])
    height, width = shape
    cos, sin = abs(math.cos(math.radians(turn))), abs(math.sin(math.radians(turn)))
    return max(1, math.ceil(scale * (height * cos + width * sin) - 1e-6)), max(1, math.ceil(scale * (width * cos + height * sin) - 1e-6))


def _grid(out_shape: tuple[int, int], frame: tuple[int, int], in_shape: tuple[int, int], theta: float, factor: float):
    """Sampling grid (1, h, w, 2) for ``grid_sample`` (align_corners=False): the cells of
    ``frame`` (h, w) cover an image of ``out_shape`` pixels; cell p samples the image of
    ``in_shape`` pixels at c_in + factor R(theta) (p - c_out) (R turns by ``theta`` degrees in
    pixel coordinates, c the centres)."""
    import torch

    height, width = out_shape
    rows, cols = frame
    ys = (torch.arange(rows, dtype=torch.float64) + 0.5) * (height / rows)
    xs = (torch.arange(cols, dtype=torch.float64) + 0.5) * (width / cols)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    dx, dy = factor * (x - width / 2.0), factor * (y - height / 2.0)
    cos, sin = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    sx, sy = in_shape[1] / 2.0 + cos * dx - sin * dy, in_shape[0] / 2.0 + sin * dx + cos * dy
    grid = torch.stack((2.0 * sx / in_shape[1] - 1.0, 2.0 * sy / in_shape[0] - 1.0), dim=-1)
    return grid[None].to(torch.float32)


def turn_image(image: np.ndarray, turn: float, scale: float = 1.0, expand: bool = False) -> np.ndarray:
    """``image`` (H, W[, C]) with its content turned by ``turn`` degrees about its centre (the
    gradient directions grow by ``turn`` in pixel coordinates) and magnified by ``scale``, on a
    canvas of :func:`canvas_shape`, the image mirrored beyond its edges (bilinear; same dtype)."""
    import torch
    import torch.nn.functional as F

    array = np.asarray(image)
    if turn == 0.0 and scale == 1.0:
        return array
    canvas = canvas_shape(array.shape[:2], turn, scale, expand)
    plane = array[..., None] if array.ndim == 2 else array
    tensor = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32)).permute(2, 0, 1)[None]
    grid = _grid(canvas, canvas, array.shape[:2], -turn, 1.0 / scale)
    out = F.grid_sample(tensor, grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0].permute(1, 2, 0).numpy()
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    out = out.astype(array.dtype)
    return out[..., 0] if array.ndim == 2 else out


def unturn_maps(
    maps: np.ndarray, masks: np.ndarray | None, turns: Sequence[float], shapes: Sequence[tuple[int, int]],
    scales: Sequence[float] | None = None, expand: bool = False, outside: str = OUTSIDE,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, h, w) maps of turned images (each covering its turned canvas) -> the original images'
    frames (``shapes`` the images' (H, W), the same ``turns``, ``scales`` and ``expand`` as
    :func:`turn_image`): bilinear, the map's minimum where the original frame falls outside the
    turned image (``outside="edge"``: the turned map's nearest edge value); masks by nearest
    neighbour, False outside. The maps keep their size."""
    import torch
    import torch.nn.functional as F

    maps = np.asarray(maps)
    out = maps.astype(np.float32, copy=True)
    back = None if masks is None else np.asarray(masks).copy()
    frame = tuple(maps.shape[-2:])
    scales = [1.0] * len(turns) if scales is None else list(scales)
    for index, (turn, shape, scale) in enumerate(zip(turns, shapes, scales)):
        if turn == 0.0 and scale == 1.0:
            continue
        grid = _grid(tuple(shape), frame, canvas_shape(tuple(shape), turn, scale, expand), turn, scale)
        inside = (grid.abs() <= 1.0).all(dim=-1)[0].numpy()
        tensor = torch.from_numpy(np.ascontiguousarray(maps[index], dtype=np.float32))[None, None]
        sampled = F.grid_sample(tensor, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0].numpy()
        out[index] = sampled if outside == "edge" else np.where(inside, sampled, maps[index].min())
        if back is not None:
            mask = torch.from_numpy(np.asarray(masks[index], dtype=np.float32))[None, None]
            turned = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0].numpy() > 0.5
            back[index] = turned & inside
    return out, back


def covered_frames(
    turns: Sequence[float], shapes: Sequence[tuple[int, int]], frame: tuple[int, int],
    scales: Sequence[float] | None = None, expand: bool = False,
) -> np.ndarray:
    """(N, h, w) bool on maps of size ``frame`` covering each image's own frame: True where the
    frame lies inside the turned image (the region :func:`unturn_maps` reads from the turned
    map), False in the corners the turn cut off."""
    scales = [1.0] * len(turns) if scales is None else list(scales)
    covered = np.ones((len(turns), *frame), dtype=bool)
    for index, (turn, shape, scale) in enumerate(zip(turns, shapes, scales)):
        if turn == 0.0 and scale == 1.0:
            continue
        grid = _grid(tuple(shape), tuple(frame), canvas_shape(tuple(shape), turn, scale, expand), turn, scale)
        covered[index] = (grid.abs() <= 1.0).all(dim=-1)[0].numpy()
    return covered


def _quantile_map(values: np.ndarray, source: np.ndarray, target: np.ndarray, levels: int) -> np.ndarray:
    """``values`` carried from the distribution of ``source`` to that of ``target`` by their
    quantiles (piecewise linear); beyond the source's range, linear with the ratio of the two
    spreads, so that a corner scoring above everything the covered region holds stays above."""
    qs = np.linspace(0.0, 1.0, levels)
    src, dst = np.quantile(source, qs), np.quantile(target, qs)
    ramp = np.arange(levels) * 1e-9 * max(1.0, float(np.abs(src).max()), float(np.abs(dst).max()))
    src, dst = np.maximum.accumulate(src) + ramp, np.maximum.accumulate(dst) + ramp  # strictly increasing: the map keeps every order
    slope = float(target.std() / max(float(source.std()), 1e-12))
    out = np.interp(values, src, dst)
    out = np.where(values > src[-1], dst[-1] + slope * (values - src[-1]), out)
    return np.where(values < src[0], dst[0] + slope * (values - src[0]), out)


def match_scale(plain: np.ndarray, turned: np.ndarray, covered: np.ndarray, matching: str = "quantile") -> np.ndarray:
    """(N, h, w) maps of the unturned pass ``plain`` brought to the scale of the turned pass's maps
    ``turned`` (both in the images' frames) on the region both cover (``covered``):
    "quantile", one quantile map for the batch (the pooled covered values); "affine", per image
    the covered values' mean and standard deviation matched."""
    plain = np.asarray(plain, dtype=np.float64)
    turned = np.asarray(turned, dtype=np.float64)
    if matching == "quantile":
        source, target = plain[covered], turned[covered]
        if source.size > 2_000_000:  # a regular subsample keeps the quantiles, not the cost
            step = source.size // 1_000_000
            source, target = source[::step], target[::step]
        return _quantile_map(plain, source, target, FILL_LEVELS).astype(np.float32)
    if matching == "affine":
        out = np.empty_like(plain)
        for index in range(len(plain)):
            region = covered[index] if covered[index].any() else np.ones_like(covered[index])
            p, t = plain[index][region], turned[index][region]
            out[index] = (plain[index] - p.mean()) * (t.std() / max(float(p.std()), 1e-12)) + t.mean()
        return out.astype(np.float32)
    raise ValueError(f"matching must be quantile or affine, got {matching!r}")


def fill_corners(
    turned: np.ndarray, plain: np.ndarray, covered: np.ndarray, matching: str = "quantile", blend: str = "none",
) -> np.ndarray:
    """The turned pass's maps (in the images' frames) with the cut-off corners (``covered``
    False) taken from the unturned pass's maps ``plain`` brought to their scale
    (:func:`match_scale`); inside, per ``blend`` (:data:`FILL_BLEND`), the turned pass's map,
    the unturned one's, or the minimum / (weighted) mean of the two."""
    mapped = match_scale(plain, turned, covered, matching)
    turned = np.asarray(turned, dtype=np.float32)
    if blend == "none":
        inside = turned
    elif blend == "unturned":
        inside = mapped
    elif blend == "min":
        inside = np.minimum(turned, mapped)
    elif blend == "mean":
        inside = 0.5 * (turned + mapped)
    elif blend.startswith("mean") and blend[4:].replace(".", "", 1).isdigit():
        weight = float(blend[4:])  # "mean0.25": that weight on the turned pass
        inside = weight * turned + (1.0 - weight) * mapped
    else:
        raise ValueError(f"blend must be unturned, none, min, mean or meanW (W the turned pass's weight), got {blend!r}")
    return np.where(covered, inside, mapped).astype(np.float32)


def inside_cells(
    shape: tuple[int, int], grid: tuple[int, int], turn: float, scale: float = 1.0, expand: bool = False, margin: int = 0,
) -> np.ndarray:
    """(rows, cols) bool on a ``grid`` covering the turned canvas of an image of ``shape``: True
    where the cell's source point lies inside the original image (False: mirrored content),
    shrunk by ``margin`` cells away from the mirrored content (the canvas's own edges do not
    shrink it)."""
    if turn == 0.0 and scale == 1.0:
        return np.ones(grid, dtype=bool)
    source = _grid(canvas_shape(tuple(shape), turn, scale, expand), tuple(grid), tuple(shape), -turn, 1.0 / scale)
    inside = (source.abs() <= 1.0).all(dim=-1)[0].numpy()
    if margin > 0 and not inside.all():
        from scipy import ndimage

        inside = ndimage.binary_erosion(inside, iterations=margin, border_value=1)
    return inside


@dataclass
class PosePlan:
    """Per image the turn (degrees) that brings it to the batch's canonical pose."""

    active: bool
    facts: dict[str, Any]
    turns: list[float] = field(default_factory=list)
    scales: list[float] | None = None
    """Per image magnification (None: 1; only set by hand, e.g. bench/canonical_pose.py's oracle)."""
    expand: bool = False
    """Turn each image onto the bounding box of its turned self (nothing cut off) instead of its
    own frame."""

    def warp(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each image turned by its turn (:func:`turn_image`)."""
        return [turn_image(image, turn, scale, self.expand) for image, turn, scale in zip(images, self.turns, self.each_scale)]

    @property
    def each_scale(self) -> list[float]:
        return list(self.scales) if self.scales is not None else [1.0] * len(self.turns)

    def record(self, extras: dict[str, Any]) -> dict[str, Any]:
        """``extras`` with the plan's facts as ``canonical_pose`` and in ``batch_facts``."""
        return with_batch_fact(extras, "canonical_pose", self.facts)


def batch_orientations(images: Sequence[np.ndarray], fold: int = FOLD) -> list[tuple[float, float]]:
    """(angle, coherence) of every image (:func:`orientation` on its :func:`thumbnail`)."""
    return [orientation(thumbnail(image), fold) for image in images]


def _summary(measured: Sequence[tuple[float, float]], fold: int) -> dict[str, Any]:
    coherences = np.array([c for _, c in measured], dtype=np.float64)
    confident = [a for a, c in measured if c >= IMAGE_COHERENCE]
    return {
        "median_coherence": float(np.median(coherences)) if len(coherences) else 0.0,
        "confident": confident,
        "spread": circular_spread(confident, fold) if confident else 0.0,
    }


def plan_batch(images: Sequence[np.ndarray], mode: str = "auto", fold: int | None = None, expand: bool = False) -> PosePlan:
    """Decide from the batch whether (auto), and by how much, to turn each image (module doc).

    ``fold`` None: 2 when the batch's median coherence at fold 2 reaches its
    :data:`MIN_COHERENCE` (one dominant direction), else 4 (a four-fold pattern such as a square
    mesh, whose two directions cancel at fold 2)."""
    if mode not in CANONICAL_POSES:
        raise ValueError(f"canonical_pose must be one of {', '.join(CANONICAL_POSES)}, got {mode!r}")
    if mode == "off":
        return PosePlan(False, {"mode": "off", "turned": False, "reason": "canonical_pose=off"})
    folds = (2, 4) if fold is None else (fold,)
    per_image = [orientations(thumbnail(image), folds) for image in images]
    summaries = {f: _summary([found[k] for found in per_image], f) for k, f in enumerate(folds)}
    if fold is None:
        fold = 2 if summaries[2]["median_coherence"] >= MIN_COHERENCE[2] else 4
    measured = [found[folds.index(fold)] for found in per_image]
    chosen = summaries[fold]
    confident, median_coherence, spread = chosen["confident"], chosen["median_coherence"], chosen["spread"]
    facts: dict[str, Any] = {
        "mode": mode,
        "fold": fold,
        "median_coherence": round(median_coherence, 4),
        "confident_share": round(len(confident) / max(1, len(measured)), 4),
        "spread_degrees": round(spread, 2),
    }
    if len(folds) > 1:
        facts["median_coherence_by_fold"] = {str(f): round(summaries[f]["median_coherence"], 4) for f in folds}
        facts["spread_degrees_by_fold"] = {str(f): round(summaries[f]["spread"], 2) for f in folds}
    reasons = []
    if len(confident) < 2:
        reasons.append(f"{len(confident)} image(s) with a dominant orientation (coherence >= {IMAGE_COHERENCE})")
    if mode == "auto":
        if median_coherence < MIN_COHERENCE[fold]:
            reasons.append(f"median coherence {median_coherence:.3f} < {MIN_COHERENCE[fold]} (not a directional texture)")
        if spread <= MIN_SPREAD:
            reasons.append(f"the images agree in orientation (spread {spread:.1f} <= {MIN_SPREAD} degrees)")
    if reasons:
        facts.update(turned=False, reason="; ".join(reasons))
        return PosePlan(False, facts)
    reference = circular_mean(confident, fold)
    turns = [folded(reference - a, fold) if c >= IMAGE_COHERENCE else 0.0 for a, c in measured]
    facts.update(
        turned=True,
        reason="directional texture at varying angles" if mode == "auto" else "canonical_pose=on",
        reference_degrees=round(reference, 2),
        turns=[round(t, 2) for t in turns],
    )
    return PosePlan(True, facts, turns, expand=expand)
