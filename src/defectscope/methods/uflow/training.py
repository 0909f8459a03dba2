"""Training U-Flow on cached backbone features: standardisation, the flow, the held-out calibration.

Each channel is standardised with the mean and standard deviation of the training features (a
fixed affine map computed once, not trained; its constant log-det is left out of the loss). The
flow trains for a fixed number of epochs with Adam and a learning rate that decays by ``lr_decay``
per epoch; the last weights are kept (no test data chooses anything). Epoch ``e`` shuffles with
the seed ``seed * 100003 + e``, so a run resumed from a checkpoint continues exactly as an
uninterrupted one. Held-out normal images (``UFlow.held_out``) then measure each scale's latent
spread and the map level of the mask extent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from defectscope.device import resolve_device
from defectscope.errors import ConfigError
from defectscope.methods.uflow import extent, persistence
from defectscope.methods.uflow.flow import UFlowNet, anomaly_map, flow_loss
from defectscope.progress import Progress

if TYPE_CHECKING:
    from defectscope.methods.uflow.detector import UFlow


def new_flow(model: "UFlow", features: Sequence[torch.Tensor]) -> UFlowNet:
    """An untrained flow for features of these shapes."""
    config = model.config
    return UFlowNet(
        [f.shape[1] for f in features], [f.shape[-1] for f in features],
        blocks_per_scale=config.blocks_per_scale, affine_clamping=config.affine_clamping,
        hidden_ratio=config.hidden_ratio, seed=config.seed,
    )


def train(
    model: "UFlow",
    features: Sequence[torch.Tensor],
    *,
    progress: Progress | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> None:
    """Fit ``model`` on raw backbone features (one (N, C, h, w) tensor per scale, finest first);
    see the module docstring. With ``checkpoint_dir`` a checkpoint is written after every epoch;
    with ``resume`` training continues from the one there."""
    config = model.config
    device = resolve_device(config.device)
    features = [f.detach().to(device, torch.float32) for f in features]
    held_out = model.held_out(features[0].shape[0])
    if held_out:
        keep = torch.ones(features[0].shape[0], dtype=torch.bool, device=device)
        keep[held_out] = False
        calibration = [f[held_out] for f in features]
        features = [f[keep] for f in features]
    count = features[0].shape[0]
    model.feature_mean = [f.mean(dim=(0, 2, 3), keepdim=True)[0] for f in features]
    model.feature_std = [f.std(dim=(0, 2, 3), keepdim=True)[0].clamp_min(1e-6) for f in features]
    normalised = model.normalise(features)
    model.flow = flow = new_flow(model, features).to(device)
    optimizer = torch.optim.Adam([p for p in flow.parameters() if p.requires_grad], lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    model.history, model.epochs_done = [], 0
    if resume and checkpoint_dir is not None and (Path(checkpoint_dir) / "config.json").is_file():
        persistence.restore_checkpoint(model, Path(checkpoint_dir), optimizer)
    flow.train()
    for epoch in range(model.epochs_done, config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * config.lr_decay ** epoch
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        passes = max(1, math.ceil(config.min_epoch_samples / count))
        order = torch.cat([torch.randperm(count, generator=generator) for _ in range(passes)])
        order = order[:max(count, config.min_epoch_samples)]
        total, seen = 0.0, 0
        for start in range(0, len(order), config.train_batch_size):
            index = order[start:start + config.train_batch_size]
            latents, log_det = flow([f[index] for f in normalised])
            loss = flow_loss(latents, log_det)
            if not torch.isfinite(loss):
                raise ConfigError(f"U-Flow training diverged at epoch {epoch + 1} (loss {loss.item()})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
            seen += len(index)
        model.history.append(total / seen)
        model.epochs_done = epoch + 1
        if checkpoint_dir is not None:
            persistence.write_checkpoint(model, Path(checkpoint_dir), optimizer)
        if progress is not None:
            progress("epoch", epoch + 1, config.epochs)
    flow.eval()
    model.latent_scale = [torch.ones((), device=device) for _ in features]
    model.map_threshold = None
    if held_out:
        latents = model.latents_from_features(calibration)
        model.latent_scale = [z.pow(2).mean().clamp_min(1.0).sqrt() for z in latents]
        maps = anomaly_map(latents, config.image_size, config.smoothing_sigma)
        model.map_threshold = extent.calibration_level(maps.cpu().numpy(), config.extent_quantile)
