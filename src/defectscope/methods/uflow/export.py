"""ONNX export of a trained U-Flow model.

``export_onnx(model, path)`` writes the whole image -> anomaly map pipeline: input ``image``
(N, 3, S, S) as returned by the backbone's ``preprocess`` (resized and normalised RGB), outputs
``anomaly_map`` (N, S, S) and ``latent_<s>`` (N, C_s, h_s, w_s) per scale, finest first (the
latents, divided by ``model.latent_scale``, feed :func:`defectscope.methods.uflow.nfa.detect`
for masks, as :meth:`UFlow.predict` does). The backbone part is the backbone's
:meth:`~defectscope.backbones.base.Backbone.stages` module (its layers on their native grids).
With ``include_backbone=False`` the graph starts at the raw backbone features instead (inputs
``feature_<s>``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from defectscope.errors import ConfigError
from defectscope.methods.uflow.detector import UFlow, scale_plan
from defectscope.methods.uflow.flow import UFlowNet, anomaly_map


class _FeaturesToMap(nn.Module):
    def __init__(self, flow: UFlowNet, mean: Sequence[torch.Tensor], std: Sequence[torch.Tensor], size: int,
                 sigma: float = 0.0) -> None:
        super().__init__()
        self.flow = flow
        self.size = size
        self.sigma = sigma
        for scale, (m, s) in enumerate(zip(mean, std)):
            self.register_buffer(f"mean_{scale}", m[None].clone())
            self.register_buffer(f"std_{scale}", s[None].clone())

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        normalised = [(f - getattr(self, f"mean_{s}")) / getattr(self, f"std_{s}") for s, f in enumerate(features)]
        latents, _ = self.flow(normalised)
        return (anomaly_map(latents, self.size, self.sigma), *latents)


class _ImageToMap(nn.Module):
    def __init__(self, stages: nn.Module, indices: Sequence[int], head: _FeaturesToMap) -> None:
        super().__init__()
        self.stages = stages
        self.indices = list(indices)
        self.head = head

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.stages(image)
        return self.head(*[maps[index] for index in self.indices])


def export_onnx(model: UFlow, path: str | Path, *, include_backbone: bool = True, opset: int = 17) -> Path:
    """Write the trained ``model`` as ONNX to ``path`` (batch size dynamic); returns the path."""
    flow = model.require_flow()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = model.config.image_size
    head = _FeaturesToMap(flow, model.feature_mean, model.feature_std, size, model.config.smoothing_sigma).eval()
    n_scales = len(flow.grids)
    latent_names = [f"latent_{s}" for s in range(n_scales)]
    output_names = ["anomaly_map", *latent_names]
    dynamic = {name: {0: "batch"} for name in output_names}
    plan = scale_plan(model.config, model.backbone) if include_backbone else []
    if len({input_size for input_size, _ in plan}) > 1:
        raise ConfigError(
            "ONNX export with the backbone is not supported for U-Flow models whose scales use different "
            "input sizes; from Python, export_onnx(model, path, include_backbone=False) writes the flow alone "
            "(inputs: the backbone features)"
        )
    if include_backbone:
        module: nn.Module = _ImageToMap(model.backbone.stages(), [index for _, index in plan], head).eval()
        side = plan[0][0]
        inputs: tuple[torch.Tensor, ...] = (torch.zeros(1, 3, side, side),)
        input_names = ["image"]
    else:
        module = head
        inputs = tuple(torch.zeros(1, c, g, g) for c, g in zip(flow.channels, flow.grids))
        input_names = [f"feature_{s}" for s in range(n_scales)]
    dynamic.update({name: {0: "batch"} for name in input_names})
    temporary = path.with_name(f".{path.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(temporary), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    _fix_shapes(temporary, size, flow)
    temporary.replace(path)
    return path


def _fix_shapes(path: Path, size: int, flow: UFlowNet) -> None:
    """Write the known static output shapes and drop the tracer's intermediate shape guesses.

    The tracer can give two different spatial sizes the same symbolic name (it does so through
    the backbone's computed "SAME" padding), which onnxruntime then trusts when planning memory.
    """
    import onnx

    proto = onnx.load(str(path))
    del proto.graph.value_info[:]
    shapes = {"anomaly_map": [size, size]}
    shapes.update({f"latent_{s}": [c, g, g] for s, (c, g) in enumerate(zip(flow.latent_channels, flow.grids))})
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        for dim, value in zip(dims[1:], shapes[output.name]):
            dim.Clear()
            dim.dim_value = value
    onnx.save(proto, str(path))
