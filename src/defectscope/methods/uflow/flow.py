"""The U-shaped normalizing flow of U-Flow and the anomaly map computed from its latents.

Input: multi-scale feature maps, finest first, each scale exactly half the resolution of the
previous one. The flow starts at the coarsest scale: a stage of FrEIA ``AllInOneBlock`` affine
coupling blocks (subnets conv-ReLU-conv, kernels alternating 3x3 / 1x1 from block to block,
``affine_clamping`` 2.0); then about half of the channels (a multiple of 4) are upsampled
invertibly with a channel-to-space pixel shuffle (a permutation: log-det 0) and concatenated with
the next finer features; the other channels leave as that scale's latent ``z_s``. The finest
stage returns all its channels as the finest latent. Every latent is trained to be N(0, I).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from FrEIA.modules import AllInOneBlock
from torch import nn

from defectscope.methods.smoothing import gaussian_blur


class _Subnet(nn.Module):
    """conv(k) - ReLU - conv(k): predicts the affine coupling coefficients."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, kernel: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel, padding=kernel // 2),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, out_channels, kernel, padding=kernel // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def up_channels(channels: int) -> int:
    """Channels of a stage output that go up to the next finer scale: half, rounded to 4."""
    return (channels // 8) * 4


class UFlowNet(nn.Module):
    """Multi-scale U-shaped flow: features (finest first) -> latents (finest first), log|det J|.

    Args:
        channels: feature channels per scale, finest first.
        grids: feature grid side per scale, finest first; each is half the previous one.
        blocks_per_scale: coupling blocks per stage (paper: 4).
        affine_clamping: soft clamp of the coupling scales (paper: 2.0).
        hidden_ratio: subnet hidden channels = ratio x subnet input channels.
        seed: seeds the fixed channel permutations of the blocks.
    """

    def __init__(
        self,
        channels: Sequence[int],
        grids: Sequence[int],
        *,
        blocks_per_scale: int = 4,
        affine_clamping: float = 2.0,
        hidden_ratio: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if len(channels) != len(grids) or not channels:
            raise ValueError("channels and grids need one entry per scale")
        for finer, coarser in zip(grids[:-1], grids[1:]):
            if finer != 2 * coarser:
                raise ValueError(f"each scale must be half the previous one, got grids {list(grids)}")
        self.channels = [int(c) for c in channels]
        self.grids = [int(g) for g in grids]
        numpy_state = np.random.get_state()
        np.random.seed(seed)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            stages = []
            self.stage_channels: list[int] = []
            incoming = 0
            for scale in reversed(range(len(channels))):
                stage_channels = self.channels[scale] + incoming
                if scale > 0 and up_channels(stage_channels) == 0:
                    raise ValueError(f"scale {scale} has {stage_channels} channels; at least 8 are needed")
                self.stage_channels.insert(0, stage_channels)
                stages.insert(0, self._stage(stage_channels, self.grids[scale], blocks_per_scale,
                                             affine_clamping, hidden_ratio))
                incoming = up_channels(stage_channels) // 4
        finally:
            np.random.set_state(numpy_state)
            torch.random.set_rng_state(torch_state)
        self.stages = nn.ModuleList(stages)

    @staticmethod
    def _stage(channels: int, grid: int, blocks: int, clamp: float, hidden_ratio: float) -> nn.ModuleList:
        modules = []
        for index in range(blocks):
            kernel = 3 if index % 2 == 0 else 1

            def subnet(c_in: int, c_out: int, kernel: int = kernel) -> nn.Module:
                return _Subnet(c_in, c_out, max(1, int(round(c_in * hidden_ratio))), kernel)

            modules.append(
                AllInOneBlock([(channels, grid, grid)], subnet_constructor=subnet,
                              affine_clamping=clamp, permute_soft=False)
            )
        return nn.ModuleList(modules)

    @property
    def latent_channels(self) -> list[int]:
        """Channels of each latent, finest first."""
        return [c if s == 0 else c - up_channels(c) for s, c in enumerate(self.stage_channels)]

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Features (finest first) -> (latents finest first, log|det J| per sample (N,))."""
        batch = features[0].shape[0]
        log_det = features[0].new_zeros(batch)
        latents: list[torch.Tensor] = []
        x = features[-1]
        for scale in reversed(range(len(self.stages))):
            for block in self.stages[scale]:
                (x,), block_log_det = block((x,))
                log_det = log_det + block_log_det
            if scale == 0:
                latents.insert(0, x)
                break
            n_up = up_channels(x.shape[1])
            latents.insert(0, x[:, n_up:])
            x = torch.cat([features[scale - 1], F.pixel_shuffle(x[:, :n_up], 2)], dim=1)
        return latents, log_det


def flow_loss(latents: Sequence[torch.Tensor], log_det: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per dimension, averaged over the batch.

    Per sample: (sum_s 0.5 * ||z_s||^2 - log|det J|) / D, D = total latent dimensions; dividing
    by the constant D only rescales the loss (the optimum is unchanged) and keeps it O(1).
    """
    dims = sum(z[0].numel() for z in latents)
    energy = sum(0.5 * z.pow(2).flatten(1).sum(dim=1) for z in latents)
    return ((energy - log_det) / dims).mean()


def anomaly_map(latents: Sequence[torch.Tensor], size: int, sigma: float = 0.0) -> torch.Tensor:
    """Latents -> (N, size, size) anomaly map in [0, 1].

    Per scale the likelihood exp(-0.5 * mean_c z^2), upsampled (bilinear) to ``size``, averaged
    over scales; the anomaly score is 1 - that average, then smoothed with a Gaussian of
    ``sigma`` pixels (0: none, as in the paper).
    """
    likelihoods = [
        F.interpolate(torch.exp(-0.5 * z.pow(2).mean(dim=1, keepdim=True)), size=(size, size),
                      mode="bilinear", align_corners=False)
        for z in latents
    ]
    return gaussian_blur(1.0 - torch.stack(likelihoods, dim=0).mean(dim=0)[:, 0], sigma)
