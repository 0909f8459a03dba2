"""ONNX export of a trained PRN: normalised image batch -> anomaly maps and image scores.

The exported graph holds the frozen backbone's feature stages (its
:meth:`~defectscope.backbones.base.Backbone.stages` module), the prototypes, the head that gives
the detector's maps (the average of the fold models' maps for a cross-fitted model, its final
model with ``final_model``), the map smoothing (``smoothing_sigma``) and the top-k image score. Its input
``image`` is the output of ``backbone.preprocess`` (N, 3, S, S) float32; outputs are
``anomaly_map`` (N, S, S) probabilities and ``image_score`` (N,). With ``include_backbone=False``
the inputs are the multi-scale feature maps instead (``feature_0`` ..., finest first), for
backbones that cannot be traced. A model trained with ``tile_aspect`` exports the map of one
S x S input: cutting long images into tiles and putting the maps back (:mod:`.tiles`) stays with
the caller; such a model with ``smoothing_sigma`` > 0 whose normal images were long enough to be
cut in training is refused, since its maps are blurred only after the tiles are put back together
(``tile_aspect`` is on by default: a model that never saw a long image exports as any other). ``map_flips`` is in the graph: the input and its mirrored
views go through backbone and heads and their maps are flipped back and averaged, as the detector
does (per tile for tiled models); without the backbone (``include_backbone=False``) such a model is
refused, since mirrored views need the image, not its features.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectscope.errors import ConfigError
from defectscope.methods.prn.config import MAP_FLIPS
from defectscope.methods.prn.features import multiscale_features, pyramid
from defectscope.methods.prn.model import PRNHead, top_k_mean
from defectscope.methods.smoothing import blur_with, gaussian_kernel


class _MapsAndScores(nn.Module):
    def __init__(
        self, heads: list[PRNHead], top_k: int, stages: nn.Module | None, kernel: torch.Tensor | None = None,
        views: tuple[tuple[int, ...], ...] = ((),),
    ) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.top_k = top_k
        self.stages = stages
        self.kernel = kernel
        self.views = views

    def _maps(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.stack([torch.sigmoid(head(*inputs))[:, 0] for head in self.heads]).mean(dim=0)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stages is None:
            maps = self._maps(inputs)
        else:
            view_maps = []
            for dims in self.views:
                view_map = self._maps(tuple(pyramid(self.stages(inputs[0].flip(dims) if dims else inputs[0]))))
                view_maps.append(view_map.flip(dims) if dims else view_map)
            maps = view_maps[0] if len(view_maps) == 1 else torch.stack(view_maps).mean(dim=0)
        if self.kernel is not None:
            maps = blur_with(maps, self.kernel)
        return maps, top_k_mean(maps, self.top_k)


def export_onnx(
    detector: Any, path: str | Path, *, include_backbone: bool = True, batch_size: int = 1, opset: int = 17
) -> Path:
    """Write ``detector`` (a trained :class:`~defectscope.methods.prn.PRN`) as ONNX to ``path``.

    The batch dimension is dynamic; ``batch_size`` only sets the tracing example.
    """
    heads = [head.eval() for head in detector.map_heads()]
    config = detector.config
    size = config.image_size
    info = detector.model_info or {}
    trained_on_tiles = int(info.get("normal_tiles", 0)) > int(info.get("normal_images", 0))
    if config.smoothing_sigma > 0 and config.tile_aspect > 0 and trained_on_tiles:
        raise ConfigError(
            f"cannot export this PRN model to ONNX: it blurs its maps (smoothing_sigma={config.smoothing_sigma:g}) after "
            f"putting the tiles of long images back together (tile_aspect={config.tile_aspect:g}), which the exported "
            "one-tile graph cannot do"
        )
    if config.map_flips != "none" and not include_backbone:
        raise ConfigError(
            f"cannot export this PRN model to ONNX without its backbone: its maps average mirrored views of the image "
            f"(map_flips={config.map_flips}), which feature inputs cannot give; export it with the backbone, or set map_flips=none"
        )
    kernel = gaussian_kernel(config.smoothing_sigma, (size, size)) if config.smoothing_sigma > 0 else None
    image = torch.zeros(batch_size, 3, size, size)
    stages = detector.backbone.stages() if include_backbone else None
    if stages is not None:
        example: tuple[torch.Tensor, ...] = (image,)
        names = ["image"]
    else:
        example = tuple(multiscale_features(detector.backbone, image))
        names = [f"feature_{i}" for i in range(len(example))]
    wrapper = _MapsAndScores(heads, config.top_k, stages, kernel, MAP_FLIPS[config.map_flips]).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    dynamic = {name: {0: "batch"} for name in names + ["anomaly_map", "image_score"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            example,
            str(temporary),
            input_names=names,
            output_names=["anomaly_map", "image_score"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    temporary.replace(path)
    return path
