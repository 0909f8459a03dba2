"""Helpers shared by all backbones: image resizing/normalisation and feature-map grids."""

from __future__ import annotations

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


def images_to_tensor(
    images: Sequence[np.ndarray],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Resize RGB uint8 images to image_size x image_size (PIL bilinear) and normalise them.

    Returns a float32 tensor (N, 3, image_size, image_size) holding ``(x / 255 - mean) / std``.
    """
    if len(images) == 0:
        raise BackboneError("No images were given to preprocess.")
    resized = []
    for index, image in enumerate(images):
        rgb = _as_rgb(image, index)
        if rgb.shape[0] != image_size or rgb.shape[1] != image_size:
            pil_image = Image.fromarray(np.ascontiguousarray(rgb))
            rgb = np.asarray(pil_image.resize((image_size, image_size), Image.Resampling.BILINEAR))
        resized.append(rgb)
    batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((batch - mean_t) / std_t).contiguous()


def check_batch(batch: torch.Tensor, image_size: int, name: str) -> None:
    """Raise BackboneError unless ``batch`` is (N, 3, image_size, image_size)."""
    expected = (3, image_size, image_size)
    if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
        raise BackboneError(
            f"Backbone '{name}' expects a batch of shape (N, 3, {image_size}, {image_size}), "
            f"got {tuple(batch.shape)}; use its preprocess() first."
        )


def to_grid(feature_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, h, w) to ``grid`` bilinearly (align_corners=False); no-op if already there."""
    if tuple(feature_map.shape[-2:]) == tuple(grid):
        return feature_map
    return F.interpolate(feature_map, size=grid, mode="bilinear", align_corners=False)


def l2_normalise(vectors: torch.Tensor) -> torch.Tensor:
    """L2-normalise the rows of an (N, D) tensor."""
    return F.normalize(vectors, p=2.0, dim=1, eps=1e-12)
