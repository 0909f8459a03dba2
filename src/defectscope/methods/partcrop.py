"""Crop to the part: a small part on a plain background fills the backbone's input (docs/PARTCROP.md).

When a part covers a small share of the image, the backbone sees it at a fraction of its input
size and small defects shrink below a patch. :func:`plan_batch` looks at the batch itself:

1. per image (on a thumbnail): the background colour is the median of the outer band; the band
   is *plain* when its pixels stay close to that colour (95th percentile of their distance);
2. the foreground is where the image differs from its background by more than Otsu's threshold
   on the distance (and clearly more than the band's own noise); specks are opened away and the
   part's box is the union of the components of at least a tenth of the largest one's area;
3. one square side for the whole batch (a high quantile of the parts' extents plus a margin on
   each side), so that every crop shows the part at the same scale;
4. ``part_crop="auto"`` crops only when most images have a plain band, a part, and a part box
   under :data:`MAX_PART_AREA` of the image, the parts agree in size, and the square is clearly
   smaller than the image (:data:`MAX_SIDE`); "on" crops whenever parts are found; "off" never
   looks. The thresholds were chosen on the shared dev batches and the small-part proxy.

:meth:`CropPlan.crop` cuts each image to its square around its part (shifted to stay inside
the image); the detector scores the crops as a batch; :meth:`CropPlan.paste` puts each map back
into the full image's frame, at the crops' own map resolution (capped at the image's size),
with the map's minimum outside the crop. The plan's facts (decision, reasons, side, boxes) go
to ``result.extras["part_crop"]`` and ``batch_facts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from defectscope.methods.base import with_batch_fact

PART_CROPS = ("auto", "off", "on")
THUMBNAIL = 192
"""The thumbnail the background and the part are found on: box averages of k x k pixels, k the
largest integer that keeps its longest side at or above this (pixels)."""
BAND = 0.03
"""Width of the outer band, a share of the thumbnail's short side."""
PLAIN_NOISE = 0.06
"""A band is plain when 95 % of its pixels lie within this distance of its median colour
(largest channel difference, in [0, 1])."""
MIN_CONTRAST = 0.08
"""The foreground threshold is at least this and at least twice the band's noise."""
MIN_PART = 0.002
"""A part covers at least this share of the image (else: no part found)."""
MAX_PART_AREA = 0.3
"""auto: the part box covers less than this share of the image ..."""
MAX_SIDE = 0.7
"""... the batch's square side is at most this share of the image's short side ..."""
AGREEMENT = 0.5
"""... and the parts agree in size: the 10th percentile of their extents is at least this share
of the 90th (one product; impurities on a texture vary)."""
MOST = 0.8
"""auto: share of images that must have a plain band, a part and a small box."""
SIDE_QUANTILE = 0.9
MARGIN = 0.1
"""Added on each side of the part's extent, a share of that extent."""


@dataclass
class PartFacts:
    """What :func:`find_part` saw in one image (box in the image's own pixels)."""

    background: tuple[float, ...]
    noise: float
    plain: bool
    box: tuple[int, int, int, int] | None  # top, bottom, left, right (exclusive)
    area: float  # the box's share of the image; 1.0 without a part

    @property
    def extent(self) -> int | None:
        """The box's longer side in pixels."""
        if self.box is None:
            return None
        top, bottom, left, right = self.box
        return max(bottom - top, right - left)


def _thumbnail(image: np.ndarray) -> tuple[np.ndarray, float]:
    """(thumbnail as float in [0, 1] with 3 channels, thumbnail pixels per image pixel)."""
    from PIL import Image

    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    height, width = array.shape[:2]
    factor = max(1, max(height, width) // THUMBNAIL)  # box averages of factor x factor pixels
    if factor > 1:
        if array.shape[2] == 1:
            small = np.asarray(Image.fromarray(array[..., 0]).reduce(factor))[..., None]
        else:
            small = np.asarray(Image.fromarray(array).reduce(factor))
    else:
        small = array
    return small.astype(np.float32) / 255.0, small.shape[0] / height


def histogram(values: np.ndarray, bins: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts, edges, centres) of ``bins`` bins over the range of ``values`` (not all equal)."""
    counts, edges = np.histogram(values, bins=bins, range=(float(values.min()), float(values.max())))
    return counts, edges, 0.5 * (edges[:-1] + edges[1:])


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (the cut that maximises the between-class variance) on a
    ``bins``-bin histogram over their range: the upper edge of the last bin of the lower class.

    Not scikit-image's ``threshold_otsu`` (the bin's centre, half a bin lower; with its bin mapped
    back to the upper edge it still picks another bin on near-ties, its class weights being
    float32: 10 of the 3,607 shared images) nor :func:`defectscope.methods.labelfree.otsu_cut`
    (no histogram, a lower group of at least 20 %, the cut a value of the data): either would
    move this cut (``python bench/partcrop_otsu.py ../shared/datasets``)."""
    values = values.ravel()
    if float(values.max()) <= float(values.min()):
        return float(values.max())
    counts, edges, centres = histogram(values, bins)
    weight = np.cumsum(counts).astype(np.float64)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    upper = total - weight
    valid = (weight > 0) & (upper > 0)
    between = np.zeros_like(weight)
    mean_low = np.divide(mass, weight, out=np.zeros_like(mass), where=weight > 0)
    mean_high = np.divide(total_mass - mass, upper, out=np.zeros_like(mass), where=upper > 0)
    between[valid] = weight[valid] * upper[valid] * (mean_low[valid] - mean_high[valid]) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def find_part(image: np.ndarray) -> PartFacts:
    """The background colour, whether the outer band is plain, and the part's box (None when
    nothing stands out from the background)."""
    from scipy import ndimage

    thumb, scale = _thumbnail(image)
    height, width = thumb.shape[:2]
    band = max(2, round(BAND * min(height, width)))
    ring = np.zeros((height, width), dtype=bool)
    ring[:band], ring[-band:], ring[:, :band], ring[:, -band:] = True, True, True, True
    background = np.median(thumb[ring], axis=0)
    difference = np.abs(thumb - background)
    distance = np.maximum(np.maximum(difference[..., 0], difference[..., 1]), difference[..., 2])
    noise = float(np.quantile(distance[ring], 0.95))
    plain = noise <= PLAIN_NOISE
    threshold = max(otsu(distance), MIN_CONTRAST, 2.0 * noise)
    foreground = ndimage.binary_opening(distance > threshold, structure=np.ones((3, 3), dtype=bool))
    labels, count = ndimage.label(foreground)
    box = None
    if count:
        areas = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(areas >= 0.1 * areas.max()) + 1
        if areas[keep - 1].sum() >= MIN_PART * height * width:
            rows, cols = np.nonzero(np.isin(labels, keep))
            full_h, full_w = np.asarray(image).shape[:2]
            box = (
                max(0, int(np.floor(rows.min() / scale))),
                min(full_h, int(np.ceil((rows.max() + 1) / scale))),
                max(0, int(np.floor(cols.min() / scale))),
                min(full_w, int(np.ceil((cols.max() + 1) / scale))),
            )
    full_h, full_w = np.asarray(image).shape[:2]
    area = 1.0 if box is None else (box[1] - box[0]) * (box[3] - box[2]) / float(full_h * full_w)
    return PartFacts(tuple(float(v) for v in background), noise, plain, box, float(area))


@dataclass
class CropPlan:
    """Per image the square (top, left, side) in its own pixels (all images of one size)."""

    active: bool
    facts: dict[str, Any]
    squares: list[tuple[int, int, int]] = field(default_factory=list)
    side: int | None = None
    """The square's side in pixels, for images of ``short`` pixels on their short side."""
    short: int | None = None

    def crop(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each image cut to its square."""
        return [
            np.ascontiguousarray(np.asarray(image)[top:top + side, left:left + side])
            for image, (top, left, side) in zip(images, self.squares)
        ]

    def follow(self, images: Sequence[np.ndarray], source: str) -> "CropPlan":
        """The same crop for other images (reference mode, watch's bank): a square of this plan's
        side around each image's own part (the side scaled with the image's short side when it
        differs from the planned batch's); an image without a part keeps its largest centred
        square. ``source`` names the batch the plan was made on (recorded as ``planned_on``).
        An inactive plan stays inactive."""
        if not self.active or self.side is None or self.short is None:
            return self
        squares, whole = [], []
        for index, image in enumerate(images):
            shape = tuple(np.asarray(image).shape[:2])
            short = min(shape)
            part = find_part(image)
            if part.box is None:
                whole.append(index)
                squares.append(_square((0, shape[0], 0, shape[1]), short, shape))
            else:
                side = max(1, min(short, round(self.side * short / self.short)))
                squares.append(_square(part.box, side, shape))
        facts = {key: value for key, value in self.facts.items() if key not in ("squares", "no_part", "note")}
        facts.update(planned_on=source, squares=[list(sq) for sq in squares])
        if whole:
            facts["no_part"] = whole
            facts["note"] = f"{len(whole)} image(s) without a part found are scored on their largest centred square (the whole image when square)"
        return CropPlan(True, facts, squares, self.side, self.short)

    def paste_maps(
        self, maps: np.ndarray, masks: np.ndarray | None, shape: tuple[int, int], shapes: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, h, w) maps (and masks) of the crops -> the full images' frame (``shape``: their
        (height, width)): the crop's map at its own resolution (capped at the image's size), the
        map's minimum outside the crop (masks False there).

        ``shapes``: each image's own (height, width) when they differ (None: all ``shape``). The
        frame stays the one of ``shape``; an image of another size has its square scaled into it
        along each axis by the ratio of the sizes, as an uncropped map stands for its whole
        image whatever the image's size (the report resizes each map to its image)."""
        import torch
        import torch.nn.functional as F

        maps = np.asarray(maps)
        map_h, map_w = maps.shape[-2:]
        # map pixels per image pixel: the crop's own resolution, at most 1, the same for the batch
        # (taken on the images of the frame's size, pasted as in a batch of that size alone)
        height, width = shape
        shapes = [(height, width)] * len(self.squares) if shapes is None else [tuple(s) for s in shapes]
        own = [square for square, s in zip(self.squares, shapes) if s == (height, width)] or self.squares
        scale = min(1.0, float(np.median([map_h / square[2] for square in own])))
        frame = (max(1, round(height * scale)), max(1, round(width * scale)))
        full = np.empty((maps.shape[0], *frame), dtype=np.float32)
        pasted = None if masks is None else np.zeros((maps.shape[0], *frame), dtype=bool)
        for index, (square, crop_map) in enumerate(zip(self.squares, maps)):
            if shapes[index] == (height, width):
                scale_y = scale_x = scale
                box_h = box_w = min(max(1, round(square[2] * scale)), *frame)
            else:  # another size: into this frame, each axis by its own ratio
                scale_y, scale_x = frame[0] / shapes[index][0], frame[1] / shapes[index][1]
                box_h = min(max(1, round(square[2] * scale_y)), frame[0])
                box_w = min(max(1, round(square[2] * scale_x)), frame[1])
            # rounding may push the square a pixel past the frame: shift it back, never squash it
            top = min(round(square[0] * scale_y), frame[0] - box_h)
            left = min(round(square[1] * scale_x), frame[1] - box_w)
            piece = crop_map
            if piece.shape != (box_h, box_w):
                piece = F.interpolate(torch.from_numpy(np.ascontiguousarray(piece))[None, None], size=(box_h, box_w),
                                      mode="bilinear", align_corners=False)[0, 0].numpy()
            full[index] = crop_map.min()
            full[index, top:top + box_h, left:left + box_w] = piece
            if pasted is not None:
                mask = np.asarray(masks[index])
                if mask.shape != (box_h, box_w):
                    mask = np.asarray(F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(box_h, box_w),
                                                    mode="nearest")[0, 0].numpy() > 0.5)
                pasted[index, top:top + box_h, left:left + box_w] = mask
        return full, pasted

    def paste(self, result, shape: tuple[int, int], shapes: Sequence[tuple[int, int]] | None = None):
        """``result`` of the crops -> the same Result with maps (and masks) in the full images'
        frame (:meth:`paste_maps`; ``shapes`` when the images differ in size) and the plan's
        facts in ``extras["part_crop"]`` and ``batch_facts``."""
        full, masks = self.paste_maps(result.anomaly_maps, result.masks, shape, shapes)
        return replace(result, anomaly_maps=full, masks=masks, extras=self.record(result.extras))

    def record(self, extras: dict[str, Any]) -> dict[str, Any]:
        """``extras`` with the plan's facts as ``part_crop`` and in ``batch_facts``."""
        return with_batch_fact(extras, "part_crop", self.facts)


def frame_shape(images: Sequence[np.ndarray]) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(the most common (height, width) of ``images``, the first of them on a tie; each image's
    own): the frame the maps of a batch of mixed sizes are pasted into, and their sizes."""
    shapes = [tuple(int(v) for v in np.asarray(image).shape[:2]) for image in images]
    counts = {s: shapes.count(s) for s in shapes}
    return max(counts, key=lambda s: (counts[s], -shapes.index(s))), shapes


def _square(box: tuple[int, int, int, int], side: int, shape: tuple[int, int]) -> tuple[int, int, int]:
    """(top, left, side) of the square of ``side`` centred on ``box``, shifted into the image."""
    height, width = shape
    side = min(side, height, width)
    centre_y, centre_x = (box[0] + box[1]) / 2.0, (box[2] + box[3]) / 2.0
    top = int(round(min(max(centre_y - side / 2.0, 0), height - side)))
    left = int(round(min(max(centre_x - side / 2.0, 0), width - side)))
    return top, left, side


def plan_batch(images: Sequence[np.ndarray], mode: str = "auto", *, one_size: bool = True) -> CropPlan:
    """Decide from the batch whether (auto), and where, to crop every image to its part.

    ``one_size``: refuse to crop images of different sizes. With False (every caller in the
    package: the batch path pastes each map into its own image's frame, :func:`frame_shape`;
    reference mode's good images are never pasted) the side is a share of the short side: each
    part's extent is rescaled to the batch's shortest short side, and each image's square is
    the side scaled by its own short side (its ratio to the batch's shortest)."""
    if mode not in PART_CROPS:
        raise ValueError(f"part_crop must be one of {', '.join(PART_CROPS)}, got {mode!r}")
    if mode == "off":
        return CropPlan(False, {"mode": "off", "cropped": False, "reason": "part_crop=off"})
    shapes = [tuple(np.asarray(image).shape[:2]) for image in images]
    parts = [find_part(image) for image in images]
    count = len(parts)
    plain_share = sum(p.plain for p in parts) / count
    found = [p for p in parts if p.box is not None]
    found_share = len(found) / count
    small_share = sum(p.box is not None and p.area < MAX_PART_AREA for p in parts) / count
    short = min(min(shape) for shape in shapes)
    side, agreement = None, None
    if found:
        # extents in pixels of the batch's shortest short side (the same numbers for one size)
        extents = np.array([p.extent * short / min(shape) for p, shape in zip(parts, shapes) if p.box is not None], dtype=np.float64)
        high = float(np.quantile(extents, SIDE_QUANTILE))
        side = int(min(short, np.ceil(high * (1.0 + 2.0 * MARGIN))))
        agreement = float(np.quantile(extents, 1.0 - SIDE_QUANTILE)) / high
    facts: dict[str, Any] = {
        "mode": mode,
        "plain_share": round(plain_share, 4),
        "part_share": round(found_share, 4),
        "small_share": round(small_share, 4),
        "median_part_area": round(float(np.median([p.area for p in parts])), 4),
        "size_agreement": None if agreement is None else round(agreement, 4),
        "side": side,
        "side_share": None if side is None else round(side / short, 4),
    }
    reasons = []
    if one_size and len(set(shapes)) > 1:
        reasons.append("the images differ in size")
    if mode == "auto":
        if plain_share < MOST:
            reasons.append(f"plain background in {plain_share:.0%} of the images (needs {MOST:.0%})")
        if found_share < MOST:
            reasons.append(f"a part found in {found_share:.0%} of the images (needs {MOST:.0%})")
        if small_share < MOST:
            reasons.append(f"part box under {MAX_PART_AREA:.0%} of the image in {small_share:.0%} (needs {MOST:.0%})")
        if agreement is not None and agreement < AGREEMENT:
            reasons.append(f"the parts' sizes disagree ({agreement:.2f} < {AGREEMENT})")
        if side is not None and side > MAX_SIDE * short:
            reasons.append(f"the square would take {side / short:.0%} of the short side (at most {MAX_SIDE:.0%})")
    elif side is None:
        reasons.append("no part found in any image")
    if reasons or side is None:
        facts.update(cropped=False, reason="; ".join(reasons) or "no part found")
        return CropPlan(False, facts)
    # an image without a part keeps its largest centred square (the whole of a square image)
    squares = [
        _square(p.box, max(1, round(side * min(shape) / short)), shape) if p.box else _square((0, shape[0], 0, shape[1]), min(shape), shape)
        for p, shape in zip(parts, shapes)
    ]
    whole = [i for i, p in enumerate(parts) if p.box is None]
    facts.update(
        cropped=True,
        reason="plain background and a small part" if mode == "auto" else "part_crop=on",
        squares=[list(sq) for sq in squares],
    )
    if whole:
        facts["no_part"] = whole
        facts["note"] = f"{len(whole)} image(s) without a part found are scored on their largest centred square (the whole image when square)"
    return CropPlan(True, facts, squares, side, short)
