"""Saved models: weights in safetensors plus a JSON config, written atomically.

A model is a folder holding ``model.safetensors`` and ``config.json``. The config records the
method, the file-format version and the defectscope version; loading checks the method and the
format version and fails with one clear sentence on any mismatch (never silently).
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
    if method is not None and header.get("method") != method:
        raise ModelFileError(
            f"model '{folder}' was made by method '{header.get('method')}', not '{method}'"
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
    return tensors, header
