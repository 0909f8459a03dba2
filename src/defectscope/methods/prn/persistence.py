"""PRN models and training checkpoints on disk (the format of :mod:`defectscope.methods.modelfile`).

Tensors: one head's state (prototypes included) without a prefix, or ``model<i>.``-prefixed
heads of the fold models; ``final.``-prefixed the final model's; ``held_out_scores`` (the
verdict's calibration scores, absent in models from before verdicts existed). Config: ``prn``
(the settings), ``model`` (channels, grids, prototype count, backbone and layers, images, how
the verdict was calibrated) and ``losses``. A training checkpoint holds one head being trained
(one per fold model, in sub-folders) as a one-model file plus the optimizer
(:func:`defectscope.methods.modelfile.save_checkpoint`), so it also loads as an (uncalibrated)
model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from defectscope.device import resolve_device
from defectscope.errors import ModelFileError
from defectscope.methods.modelfile import load_checkpoint, load_model, save_checkpoint, save_model
from defectscope.methods.prn.config import METHOD, PRNConfig
from defectscope.methods.prn.model import PRNHead

if TYPE_CHECKING:
    from defectscope.methods.prn.detector import PRN

LABEL = "PRN"
HELD_OUT_KEY = "held_out_scores"
FINAL_PREFIX = "final."


def save(detector: "PRN", folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write a trained detector to ``folder``."""
    heads = detector.require_heads()
    header = {"prn": detector.config.to_json(), "model": detector.model_info, "losses": detector.losses}
    if len(heads) == 1:
        tensors = dict(heads[0].state_dict())
    else:
        tensors = {f"model{i}.{name}": value for i, head in enumerate(heads) for name, value in head.state_dict().items()}
    if detector.final_head is not None:
        tensors.update({f"{FINAL_PREFIX}{name}": value for name, value in detector.final_head.state_dict().items()})
    if detector.held_out_scores is not None:
        tensors[HELD_OUT_KEY] = torch.from_numpy(detector.held_out_scores)
    return save_model(folder, METHOD, tensors, header, overwrite=overwrite)


def _resume_settings(config: PRNConfig, info: dict[str, Any]) -> dict[str, Any]:
    """What a resumed training must share with its checkpoint: every setting but the device, the
    map smoothing, the models the maps come from and the flips averaged into them (none changes
    training), and the number of normal images."""
    data = config.to_json()
    for name in ("device", "smoothing_sigma", "map_models", "map_flips"):
        data.pop(name, None)
    return {**data, "normal_images": info["normal_images"]}


def write_checkpoint(
    config: PRNConfig, folder: Path, head: PRNHead, optimizer: torch.optim.Optimizer, info: dict[str, Any],
    epochs_done: int, losses: list[float],
) -> None:
    """Write one head in training and its optimizer to ``folder`` (after each epoch)."""
    header = {"prn": config.to_json(), "model": info, "losses": losses}
    save_checkpoint(folder, METHOD, dict(head.state_dict()), header, optimizer, epochs_done=epochs_done,
                    losses=losses, settings=_resume_settings(config, info))


def restore_checkpoint(
    config: PRNConfig, folder: Path, head: PRNHead, optimizer: torch.optim.Optimizer, info: dict[str, Any],
) -> tuple[int, list[float]]:
    """Continue one head from the checkpoint in ``folder``; returns (epochs done, losses)."""
    tensors, _, epochs_done, losses = load_checkpoint(folder, METHOD, optimizer, _resume_settings(config, info), LABEL)
    device = resolve_device(config.device)
    _load_head(head, {name: value.to(device) for name, value in tensors.items()}, folder)
    return epochs_done, losses


def _load_head(head: PRNHead, state: dict[str, torch.Tensor], folder: str | Path) -> PRNHead:
    try:
        head.set_prototypes([state[f"prototypes_{s}"] for s in range(head.scales)])
        head.load_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        raise ModelFileError(f"model '{folder}' weights do not match its PRN config: {exc}") from None
    return head


def load(
    folder: str | Path, device: str | None, make: Callable[[PRNConfig], "PRN"],
) -> "PRN":
    """Read a saved detector; ``make`` builds the empty detector from its settings."""
    tensors, header = load_model(folder, METHOD)
    saved = header["config"]
    try:
        config = PRNConfig.from_dict(saved["prn"])
        info = saved["model"]
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"model '{folder}' has an incomplete PRN config ({exc}).") from None
    if device is not None:
        config = replace(config, device=device)
    detector = make(config)
    where = resolve_device(config.device)
    held_out = tensors.pop(HELD_OUT_KEY, None)
    detector.held_out_scores = None if held_out is None else held_out.numpy().astype(np.float64)
    models = int(info.get("models", 1))
    final = {name[len(FINAL_PREFIX):]: value.to(where) for name, value in tensors.items() if name.startswith(FINAL_PREFIX)}
    tensors = {name: value for name, value in tensors.items() if not name.startswith(FINAL_PREFIX)}
    states = [
        {name[len(prefix):]: value.to(where) for name, value in tensors.items() if name.startswith(prefix)}
        for prefix in (f"model{number}." if models > 1 else "" for number in range(models))
    ]
    for position, state in enumerate(states + ([final] if final else [])):
        head = _load_head(detector.build_head(info).to(where), state, folder).eval()
        if position < len(states):
            detector.heads.append(head)
        else:
            detector.final_head = head
    detector.model_info = info
    detector.losses = list(saved.get("losses", []))
    return detector
