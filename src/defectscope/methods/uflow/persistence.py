"""U-Flow models and training checkpoints on disk (the format of :mod:`defectscope.methods.modelfile`).

Tensors: ``flow.*`` (the flow's state), ``feature_mean.<s>`` / ``feature_std.<s>`` (the per-channel
standardisation of scale s), ``latent_scale.<s>`` (the held-out latent spread, absent without
held-out images) and ``map_threshold`` (absent without held-out images). Config: ``uflow`` (the
settings), ``channels`` and ``grids`` of the scales, ``epochs_done`` and ``history`` (the loss per
epoch). A checkpoint adds the optimizer (:func:`defectscope.methods.modelfile.save_checkpoint`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from defectscope.device import resolve_device
from defectscope.errors import ConfigError, ModelFileError
from defectscope.methods.modelfile import load_checkpoint, load_model, save_checkpoint, save_model
from defectscope.methods.uflow.config import METHOD, UFlowConfig
from defectscope.methods.uflow.flow import UFlowNet

if TYPE_CHECKING:
    from defectscope.methods.uflow.detector import UFlow

LABEL = "U-Flow"


def model_tensors(model: "UFlow") -> dict[str, torch.Tensor]:
    """The tensors of a trained model."""
    flow = model.require_flow()
    tensors = {f"flow.{k}": v for k, v in flow.state_dict().items()}
    for scale, (mean, std) in enumerate(zip(model.feature_mean, model.feature_std)):
        tensors[f"feature_mean.{scale}"] = mean
        tensors[f"feature_std.{scale}"] = std
    for scale, value in enumerate(model.latent_scale):
        tensors[f"latent_scale.{scale}"] = value.reshape(1)
    if model.map_threshold is not None:
        tensors["map_threshold"] = torch.tensor([model.map_threshold], dtype=torch.float64)
    return tensors


def model_config(model: "UFlow") -> dict[str, Any]:
    """The JSON config of a trained model."""
    flow = model.require_flow()
    return {
        "uflow": model.config.to_json(),
        "channels": flow.channels,
        "grids": flow.grids,
        "epochs_done": model.epochs_done,
        "history": model.history,
    }


def resume_settings(model: "UFlow") -> dict[str, Any]:
    """What a resumed training must share with its checkpoint: every setting but the epoch count
    and the device, and the shape of the features."""
    data = model.config.to_json()
    data.pop("epochs")
    data.pop("device", None)
    flow = model.require_flow()
    return {**data, "channels": flow.channels, "grids": flow.grids}


def save(model: "UFlow", folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write a trained model to ``folder``."""
    return save_model(folder, METHOD, model_tensors(model), model_config(model), overwrite=overwrite)


def write_checkpoint(model: "UFlow", folder: Path, optimizer: torch.optim.Optimizer) -> Path:
    """Write the model in training and its optimizer to ``folder`` (after each epoch)."""
    return save_checkpoint(folder, METHOD, model_tensors(model), model_config(model), optimizer,
                           epochs_done=model.epochs_done, losses=model.history, settings=resume_settings(model))


def restore_checkpoint(model: "UFlow", folder: Path, optimizer: torch.optim.Optimizer) -> None:
    """Continue from the checkpoint in ``folder``: weights, statistics, epochs done, optimizer."""
    tensors, config, _, _ = load_checkpoint(folder, METHOD, optimizer, resume_settings(model), LABEL)
    restore_state(model, tensors, config)


def restore_state(model: "UFlow", tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Put saved tensors and config into ``model`` (its flow is built when it has none of that shape)."""
    n_scales = len(config["channels"])
    device = resolve_device(model.config.device)
    tensors = {name: value.to(device) for name, value in tensors.items()}
    model.feature_mean = [tensors[f"feature_mean.{s}"] for s in range(n_scales)]
    model.feature_std = [tensors[f"feature_std.{s}"] for s in range(n_scales)]
    model.latent_scale = [tensors[f"latent_scale.{s}"].reshape(()) for s in range(n_scales)
                          if f"latent_scale.{s}" in tensors]
    model.map_threshold = float(tensors["map_threshold"].item()) if "map_threshold" in tensors else None
    flow = model.flow
    if flow is None or flow.channels != list(config["channels"]) or flow.grids != list(config["grids"]):
        settings = model.config
        flow = UFlowNet(config["channels"], config["grids"], blocks_per_scale=settings.blocks_per_scale,
                        affine_clamping=settings.affine_clamping, hidden_ratio=settings.hidden_ratio, seed=settings.seed)
    state = {k[len("flow."):]: v for k, v in tensors.items() if k.startswith("flow.")}
    try:
        flow.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"U-Flow weights do not match their config: {str(exc).splitlines()[0]}") from None
    model.flow = flow.to(device).eval()
    model.epochs_done = int(config.get("epochs_done", 0))
    model.history = [float(v) for v in config.get("history", [])]


def read(folder: str | Path, device: str | None = None) -> tuple[UFlowConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """A saved model's (settings, tensors, config); ``device`` replaces the saved device."""
    tensors, header = load_model(folder, METHOD)
    config = header["config"]
    try:
        settings = UFlowConfig.from_json(config["uflow"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise ModelFileError(f"U-Flow model '{folder}' has an invalid config ({exc})") from None
    if device is not None:
        settings = replace(settings, device=device)
    return settings, tensors, config
