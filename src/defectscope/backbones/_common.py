"""Helpers shared by all backbones: image resizing/normalisation and feature-map grids."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from defectscope.errors import BackboneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_rgb(image: np.ndarray, index: int) -> np.ndarray:
    """Return an (H, W, 3) uint8 view of a grayscale or RGB uint8 image."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise BackboneError(f"Image {index} must be a uint8 numpy array, got {kind}.")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise BackboneError(
        f"Image {index} has shape {image.shape}; expected an RGB (H, W, 3) or grayscale (H, W) image."
    )


BORDERS = ("zero", "reflect")
"""Border rules: ``zero`` runs the network on the image as it is (its layers pad with zeros);
``reflect`` mirrors the image outwards by a margin before the network and crops the feature maps
back to the image's own cells, so border patches see image-like context instead of padding."""


def check_border(border: str, border_pad: int | None, unit: int, name: str) -> int:
    """Validate a border rule; returns the margin in input pixels (0 for ``zero``).

    The default margin is two cells of the coarsest chosen layer (``2 * unit``); a given margin
    must be a multiple of ``unit`` so the cropped grid is aligned with the unpadded one."""
    if border not in BORDERS:
        raise BackboneError(f"Unknown border rule {border!r} for backbone '{name}'; choose one of {', '.join(BORDERS)}.")
    if border == "zero":
        return 0
    pad = 2 * unit if border_pad is None else border_pad
    if isinstance(pad, bool) or not isinstance(pad, int) or pad <= 0 or pad % unit:
        raise BackboneError(
            f"Backbone '{name}' needs a border_pad that is a positive multiple of {unit} pixels, got {pad!r}."
        )
    return pad


def reflect_pad(batch: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror an (N, C, H, W) batch outwards by ``pad`` pixels (repeated while the image is
    smaller than the margin); no-op for 0."""
    while pad > 0:
        step = min(pad, batch.shape[-2] - 1, batch.shape[-1] - 1)
        batch = F.pad(batch, (step, step, step, step), mode="reflect")
        pad -= step
    return batch


def crop_cells(feature_map: torch.Tensor, cells: int) -> torch.Tensor:
    """Remove ``cells`` rows and columns on every side of (N, C, h, w); no-op for 0."""
    if cells == 0:
        return feature_map
    return feature_map[..., cells:-cells, cells:-cells]


def input_shape(images: Sequence[np.ndarray], image_size: int, unit: int) -> tuple[int, int]:
    """Input (height, width) for a batch that keeps its aspect ratio: the median width/height
    ratio of the images, an area of about ``image_size`` squared, each side a multiple of
    ``unit`` (at least one unit)."""
    if len(images) == 0:
        raise BackboneError("No images were given to preprocess.")
    aspect = float(np.median([image.shape[1] / image.shape[0] for image in images]))
    height = max(unit, int(round(image_size / math.sqrt(aspect) / unit)) * unit)
    width = max(unit, int(round(image_size * math.sqrt(aspect) / unit)) * unit)
    return height, width


def images_to_tensor(
    images: Sequence[np.ndarray],
    image_size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Resize RGB uint8 images to ``image_size`` (a side, or (height, width); PIL bilinear) and
    normalise them.

    Returns a float32 tensor (N, 3, height, width) holding ``(x / 255 - mean) / std``.
    """
    if len(images) == 0:
        raise BackboneError("No images were given to preprocess.")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    resized = []
    for index, image in enumerate(images):
        rgb = _as_rgb(image, index)
        if rgb.shape[0] != height or rgb.shape[1] != width:
            pil_image = Image.fromarray(np.ascontiguousarray(rgb))
            rgb = np.asarray(pil_image.resize((width, height), Image.Resampling.BILINEAR))
        resized.append(rgb)
    batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((batch - mean_t) / std_t).contiguous()


def check_batch(batch: torch.Tensor, unit: int, name: str) -> tuple[int, int]:
    """Raise BackboneError unless ``batch`` is (N, 3, H, W) with H and W positive multiples of
    ``unit``; returns (H, W)."""
    if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[2] % unit or batch.shape[3] % unit or min(batch.shape[2:]) == 0:
        raise BackboneError(
            f"Backbone '{name}' expects a batch of shape (N, 3, H, W) with H and W multiples of {unit}, "
            f"got {tuple(batch.shape)}; use its preprocess() first."
        )
    return int(batch.shape[2]), int(batch.shape[3])


def to_grid(feature_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, h, w) to ``grid`` bilinearly (align_corners=False); no-op if already there."""
    if tuple(feature_map.shape[-2:]) == tuple(grid):
        return feature_map
    return F.interpolate(feature_map, size=grid, mode="bilinear", align_corners=False)


def l2_normalise(vectors: torch.Tensor) -> torch.Tensor:
    """L2-normalise the rows of an (N, D) tensor."""
    return F.normalize(vectors, p=2.0, dim=1, eps=1e-12)
