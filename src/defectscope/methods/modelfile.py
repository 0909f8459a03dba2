"""Saved models and training checkpoints: weights in safetensors plus a JSON config, written atomically.

A model is a folder holding ``model.safetensors`` and ``config.json``. The config records the
method, the file-format version and the defectscope version; loading checks the method and the
format version and fails with one clear sentence on any mismatch (never silently).

A training checkpoint (U-Flow, PRN) is a saved model of the same method plus a ``checkpoint``
entry in its config (epochs done, the loss per epoch, the settings a resume must match, the
optimizer's parameter groups) and the optimizer's state as ``optimizer.<param>.<key>`` tensors:
:func:`save_checkpoint` and :func:`load_checkpoint`. :func:`load_model` reads a checkpoint as the
model it holds. Checkpoints of older defectscope versions (PRN's method ``prn-checkpoint``,
U-Flow's ``training`` entry) are refused with what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from defectscope import __version__
from defectscope.errors import ModelFileError

FORMAT_NAME = "defectscope-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_KEY = "checkpoint"
OPTIMIZER_PREFIX = "optimizer."
LEGACY_PRN_CHECKPOINT = "prn-checkpoint"


def save_model(
    folder: str | Path,
    method: str,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``tensors`` and ``config`` for ``method`` to ``folder`` atomically (temp dir + rename)."""
    folder = Path(folder)
    if folder.exists() and not overwrite and any(folder.iterdir()):
        raise ModelFileError(f"model folder '{folder}' already exists and is not empty; pass overwrite")
    folder.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "method": method,
        "defectscope_version": __version__,
        "config": config,
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        save_file(contiguous, str(staging / WEIGHTS_FILE), metadata={"method": method})
        (staging / CONFIG_FILE).write_text(json.dumps(header, indent=2, sort_keys=True))
        if folder.exists():
            backup = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(folder, backup)
            os.replace(staging, folder)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_model_config(folder: str | Path, method: str | None = None) -> dict[str, Any]:
    """Read and validate ``config.json`` of a saved model; returns the whole header dict."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ModelFileError(f"'{folder}' is not a defectscope model: it has no {CONFIG_FILE}")
    try:
        header = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"model config '{config_path}' is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ModelFileError(f"'{config_path}' is not a defectscope model config")
    if header.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"model '{folder}' has file-format version {header.get('format_version')}, "
            f"this defectscope ({__version__}) reads version {FORMAT_VERSION}"
        )
    saved = header.get("config")
    if header.get("method") == LEGACY_PRN_CHECKPOINT or (isinstance(saved, dict) and "training" in saved):
        raise ModelFileError(
            f"'{folder}' is a training checkpoint of an older defectscope, which this version cannot "
            "read; delete it (or choose another checkpoint folder) and train again"
        )
    if method is not None and header.get("method") != method:
        raise ModelFileError(
            f"model '{folder}' was made by method '{header.get('method')}', not '{method}'; load it "
            f"with the '{header.get('method')}' method"
        )
    return header


def load_model(folder: str | Path, method: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a saved model; returns (tensors, header) after checking method and version."""
    folder = Path(folder)
    header = read_model_config(folder, method)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"model '{folder}' has no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"model weights '{weights}' cannot be read: {exc}") from None
    return {name: value for name, value in tensors.items() if not name.startswith(OPTIMIZER_PREFIX)}, header


def save_checkpoint(
    folder: str | Path,
    method: str,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    *,
    epochs_done: int,
    losses: list[float],
    settings: dict[str, Any],
) -> Path:
    """Write a training checkpoint (see the module docstring), replacing an earlier one.

    ``tensors`` and ``config`` are those of the saved model; ``settings`` is what a resume must
    match (compared as JSON)."""
    state = optimizer.state_dict()
    tensors = dict(tensors)
    for index, entries in state["state"].items():
        for key, value in entries.items():
            tensors[f"{OPTIMIZER_PREFIX}{index}.{key}"] = torch.as_tensor(value)
    entry = {"epochs_done": epochs_done, "losses": list(losses), "settings": settings,
             "param_groups": state["param_groups"]}
    return save_model(folder, method, tensors, {**config, CHECKPOINT_KEY: entry}, overwrite=True)


def load_checkpoint(
    folder: str | Path,
    method: str,
    optimizer: torch.optim.Optimizer,
    settings: dict[str, Any],
    label: str,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], int, list[float]]:
    """Read a checkpoint written by :func:`save_checkpoint` and restore ``optimizer`` from it.

    Returns (model tensors, model config, epochs done, losses). A folder that is a saved model
    and not a checkpoint, or whose ``settings`` differ from the given ones, fails in one sentence
    (``label``: the method's name in messages)."""
    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    header = read_model_config(folder, method)
    config = dict(header["config"])
    entry = config.pop(CHECKPOINT_KEY, None)
    if entry is None:
        raise ModelFileError(f"'{folder}' is a saved {label} model, not a training checkpoint; choose another checkpoint folder")
    if json.loads(json.dumps(settings)) != entry["settings"]:
        raise ModelFileError(
            f"checkpoint '{folder}' was made with other {label} settings or training images; resume with the "
            "same ones, or delete it to start again"
        )
    try:
        stored = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"checkpoint weights '{weights}' cannot be read: {exc}") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in stored.items():
        if name.startswith(OPTIMIZER_PREFIX):
            index, key = name[len(OPTIMIZER_PREFIX):].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    groups = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group for group in entry["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    tensors = {name: value for name, value in stored.items() if not name.startswith(OPTIMIZER_PREFIX)}
    return tensors, config, int(entry["epochs_done"]), [float(v) for v in entry["losses"]]
