"""The PRN network: prototypes, residuals, multi-size window attention and a U-Net-like decoder.

All functions here are pure tensor code (no file or image handling) so tests can call them
directly. The network takes multi-scale feature maps of a frozen backbone (finest first, each
scale half the resolution of the previous one; strides 4/8/16 for the default backbone) and
returns a one-channel logit map at the input image resolution.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def kmeans(
    points: torch.Tensor, clusters: int, *, seed: int = 0, iterations: int = 25
) -> torch.Tensor:
    """Seeded k-means (k-means++ start, Lloyd steps) of the rows of ``points`` (N, D) -> (K, D).

    Empty clusters keep their previous centre. ``clusters`` is clipped to N.
    """
    points = points.to(torch.float32)
    count = points.shape[0]
    clusters = max(1, min(int(clusters), count))
    generator = torch.Generator().manual_seed(int(seed))
    first = int(torch.randint(count, (1,), generator=generator))
    centres = [points[first]]
    closest = ((points - points[first]) ** 2).sum(dim=1)
    for _ in range(1, clusters):
        weights = closest.clamp_min(0)
        if float(weights.sum()) <= 0:
            index = int(torch.randint(count, (1,), generator=generator))
        else:
            index = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(points[index])
        closest = torch.minimum(closest, ((points - points[index]) ** 2).sum(dim=1))
    centre_tensor = torch.stack(centres)
    for _ in range(iterations):
        assignment = torch.cdist(points, centre_tensor).argmin(dim=1)
        updated = centre_tensor.clone()
        for cluster in range(clusters):
            members = points[assignment == cluster]
            if members.shape[0] > 0:
                updated[cluster] = members.mean(dim=0)
        if torch.equal(updated, centre_tensor):
            break
        centre_tensor = updated
    return centre_tensor


def prototype_count(normal_images: int, fraction: float, maximum: int) -> int:
    """Number of prototypes per scale: ``fraction`` of the normal images, at least 1, at most ``maximum``."""
    return max(1, min(int(maximum), int(round(fraction * normal_images))))


def build_prototypes(
    features: Sequence[torch.Tensor], clusters: int, *, seed: int = 0
) -> list[torch.Tensor]:
    """k-means over whole feature maps of normal images, per scale: (N, C, h, w) -> (K, C, h, w)."""
    prototypes = []
    for scale, feature_maps in enumerate(features):
        flat = feature_maps.reshape(feature_maps.shape[0], -1).to(torch.float32)
        centres = kmeans(flat, clusters, seed=seed + scale)
        prototypes.append(centres.reshape(-1, *feature_maps.shape[1:]))
    return prototypes


def nearest_prototype_residual(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared difference between each feature map (N, C, h, w) and its nearest prototype map.

    Nearest = the prototype (K, C, h, w) with the smallest squared Euclidean distance over the
    whole map.
    """
    flat = features.flatten(1)
    flat_prototypes = prototypes.flatten(1)
    distances = (
        (flat * flat).sum(dim=1, keepdim=True)
        - 2.0 * flat @ flat_prototypes.t()
        + (flat_prototypes * flat_prototypes).sum(dim=1).unsqueeze(0)
    )
    nearest = distances.argmin(dim=1)
    return (features - prototypes.index_select(0, nearest)) ** 2


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions with batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class WindowAttention(nn.Module):
    """Single-head self-attention inside non-overlapping square windows of one size."""

    def __init__(self, channels: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.scale = channels**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        window = self.window
        rows, cols = height // window, width // window
        qkv = self.qkv(x).reshape(batch, 3 * channels, rows, window, cols, window)
        tokens = qkv.permute(0, 2, 4, 3, 5, 1).reshape(batch * rows * cols, window * window, 3 * channels)
        query, key, value = tokens.split(channels, dim=2)
        weights = torch.softmax((query @ key.transpose(1, 2)) * self.scale, dim=-1)
        out = (weights @ value).reshape(batch, rows, cols, window, window, channels)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)


class MultiSizeAttention(nn.Module):
    """Window self-attention at several window sizes (H, H/2, H/4, H/8), merged by a 1x1 conv."""

    def __init__(self, channels: int, size: int, divisors: Sequence[int]) -> None:
        super().__init__()
        windows = sorted({max(1, size // divisor) for divisor in divisors}, reverse=True)
        self.windows = [window for window in windows if size % window == 0]
        self.branches = nn.ModuleList(WindowAttention(channels, window) for window in self.windows)
        self.merge = nn.Conv2d(channels * len(self.branches), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.merge(torch.cat([branch(x) for branch in self.branches], dim=1))


class PRNHead(nn.Module):
    """Prototype residuals -> fused multi-scale maps -> attention -> decoder -> logit map.

    Args:
        in_channels: channels of each feature scale, finest first.
        grid_sizes: spatial side of each scale (e.g. 64, 32, 16 for a 256 input).
        image_size: side of the output logit map.
        prototype_count: prototypes per scale (K).
        widths: hidden channels per scale.
        attention_scales: indices of the scales whose residuals get multi-size attention.
        attention_divisors: window sizes as divisors of the scale's side (1 = whole map).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        grid_sizes: Sequence[int],
        image_size: int,
        prototype_count: int,
        widths: Sequence[int] = (32, 48, 64),
        attention_scales: Sequence[int] = (1, 2),
        attention_divisors: Sequence[int] = (1, 2, 4, 8),
    ) -> None:
        super().__init__()
        if len(in_channels) != len(grid_sizes) or len(in_channels) != len(widths):
            raise ValueError("in_channels, grid_sizes and widths need one entry per scale")
        self.image_size = int(image_size)
        self.scales = len(in_channels)
        for scale, (channels, side) in enumerate(zip(in_channels, grid_sizes)):
            self.register_buffer(f"prototypes_{scale}", torch.zeros(prototype_count, channels, side, side))
        self.feature_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
            for c, w in zip(in_channels, widths)
        )
        self.residual_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
            for c, w in zip(in_channels, widths)
        )
        self.attention = nn.ModuleList(
            MultiSizeAttention(w, side, attention_divisors) if scale in attention_scales else nn.Identity()
            for scale, (w, side) in enumerate(zip(widths, grid_sizes))
        )
        self.fuse = nn.ModuleList(ConvBlock(2 * w, w) for w in widths)
        self.up_blocks = nn.ModuleList(
            ConvBlock(widths[scale + 1] + widths[scale], widths[scale]) for scale in range(self.scales - 1)
        )
        finest = widths[0]
        self.refine = nn.Sequential(
            nn.Conv2d(finest, finest // 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(finest // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(finest // 2, 1, 1),
        )

    def prototypes(self) -> list[torch.Tensor]:
        """The prototype maps of each scale, finest first."""
        return [getattr(self, f"prototypes_{scale}") for scale in range(self.scales)]

    def set_prototypes(self, prototypes: Sequence[torch.Tensor]) -> None:
        """Replace the prototype buffers (K may differ from construction)."""
        for scale, tensor in enumerate(prototypes):
            setattr(self, f"prototypes_{scale}", tensor.detach().to(torch.float32).clone())

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        """Feature maps (finest first) -> logits (N, 1, image_size, image_size)."""
        fused = []
        for scale, feature_map in enumerate(features):
            residual = nearest_prototype_residual(feature_map, getattr(self, f"prototypes_{scale}"))
            attended = self.attention[scale](self.residual_proj[scale](residual))
            projected = self.feature_proj[scale](feature_map)
            fused.append(self.fuse[scale](torch.cat([projected, attended], dim=1)))
        decoded = fused[-1]
        for scale in range(self.scales - 2, -1, -1):
            upsampled = F.interpolate(decoded, size=fused[scale].shape[-2:], mode="bilinear", align_corners=False)
            decoded = self.up_blocks[scale](torch.cat([upsampled, fused[scale]], dim=1))
        logits = self.refine(decoded)
        return F.interpolate(logits, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Binary focal loss -(1 - p_t)^gamma log(p_t), averaged over pixels."""
    log_prob = F.logsigmoid(logits)
    log_not_prob = F.logsigmoid(-logits)
    prob = torch.sigmoid(logits)
    positive = -target * (1 - prob) ** gamma * log_prob
    negative = -(1 - target) * prob**gamma * log_not_prob
    return (positive + negative).mean()


def prn_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """PRN loss: focal (gamma) + smooth L1 between the sigmoid map and the mask."""
    return focal_loss(logits, target, gamma) + F.smooth_l1_loss(torch.sigmoid(logits), target)


def top_k_mean(anomaly_maps: torch.Tensor, k: int) -> torch.Tensor:
    """Image scores: the mean of the k highest pixel scores of each map (N, H, W) -> (N,)."""
    flat = anomaly_maps.flatten(1)
    k = max(1, min(int(k), flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)
