"""The Backbone contract (backbones/base.py): declared facts match the features, and the public
``stages()`` module gives the numbers of ``extract(common_grid=False)`` and traces to ONNX."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from defectscope.backbones import Backbone, HFBackbone, get_backbone

SRC = Path(__file__).resolve().parents[1] / "src" / "defectscope"


def _images(count: int, size: int = 80) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (size, size + 16, 3), dtype=np.uint8) for _ in range(count)]


def _check(backbone: Backbone, side: int) -> None:
    assert isinstance(backbone, Backbone)
    batch = backbone.preprocess(_images(2), (side, side))
    native = backbone.extract(batch, common_grid=False)
    assert [layer.shape[1] for layer in native.layers] == backbone.layer_channels
    assert [layer.shape[-1] for layer in native.layers] == [side // s for s in backbone.layer_strides]
    assert backbone.grid == (backbone.image_size // min(backbone.layer_strides),) * 2
    assert side % backbone.size_unit == 0
    with torch.no_grad():
        stages = backbone.stages()(batch)
    assert len(stages) == len(native.layers)
    for mine, theirs in zip(stages, native.layers):
        assert torch.equal(mine.contiguous(), theirs)


@pytest.mark.parametrize("border", ["zero", "reflect"])
def test_efficientnet_declares_its_grids_and_stages_give_extracts_numbers(border: str) -> None:
    backbone = get_backbone("efficientnet-lite0", image_size=96, layers=(4, 8, 16), border=border)
    assert backbone.layer_strides == [4, 8, 16] and backbone.size_unit == 32
    _check(backbone, 128)


def test_vit_declares_its_grid_and_stages_give_extracts_numbers() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(num_hidden_layers=2, patch_size=14, image_size=28, hidden_size=32,
                                       num_attention_heads=2, intermediate_size=64)
    backbone = HFBackbone("dinov2-vitb14", config=config, layers=[1, 2], border="reflect")
    assert backbone.layer_strides == [14, 14] and backbone.size_unit == 14
    _check(backbone, 56)


@pytest.mark.filterwarnings("ignore")
def test_efficientnet_stages_trace_to_onnx(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    backbone = get_backbone("efficientnet-lite0", image_size=64, layers=(4, 8))
    batch = backbone.preprocess(_images(2), (64, 64))
    path = tmp_path / "stages.onnx"
    torch.onnx.export(backbone.stages(), (batch[:1],), str(path), input_names=["image"], output_names=["s4", "s8"],
                      dynamic_axes={"image": {0: "n"}}, opset_version=17, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": batch.numpy()})
    expected = backbone.extract(batch, common_grid=False).layers
    for got, want in zip(outputs, expected):
        assert got.shape == tuple(want.shape)
        assert np.abs(got - want.numpy()).max() < 1e-4


def test_no_method_reads_a_backbones_private_fields_or_probes_it() -> None:
    """Methods use what the protocol declares: no ``backbone._x`` and no
    ``getattr(backbone, ...)`` with a fallback in the trained methods and the shared feature code."""
    files = [*sorted((SRC / "methods" / "uflow").glob("*.py")), *sorted((SRC / "methods" / "prn").glob("*.py")),
             SRC / "methods" / "features.py"]
    offenders = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = ast.unparse(node.value)
                if "backbone" in base or "stages" in base:
                    offenders.append(f"{file.name}: {ast.unparse(node)}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr" and node.args:
                if "backbone" in ast.unparse(node.args[0]):
                    offenders.append(f"{file.name}: {ast.unparse(node)}")
    assert not offenders, offenders
