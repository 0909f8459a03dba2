"""U-Flow detector: flow, training, save/load, checkpoints and ONNX export on tiny fake features."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from defectscope.backbones.base import Features
from defectscope.errors import ConfigError, ModelFileError, NotFittedError
from defectscope.methods.modelfile import save_model
from defectscope.methods.uflow import UFlow, UFlowConfig, UFlowNet, anomaly_map
from defectscope.methods.verdict import conformal_threshold

SIZE = 32


class _FakeStages(nn.Module):
    """Frozen random convs + average pooling: one map per stride, each on its own grid."""

    def __init__(self, strides: tuple[int, ...], channels: tuple[int, ...]) -> None:
        super().__init__()
        self.strides = strides
        self.convs = nn.ModuleList()
        for stride, count in zip(strides, channels):
            generator = torch.Generator().manual_seed(stride)
            conv = nn.Conv2d(3, count, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False).eval()

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(F.avg_pool2d(torch.tanh(conv(batch)), stride) for conv, stride in zip(self.convs, self.strides))


class FakeBackbone:
    """A backbone of the :class:`~defectscope.backbones.base.Backbone` contract on tiny random convs."""

    def __init__(self, strides: tuple[int, ...] = (4, 8), channels: tuple[int, ...] = (6, 12), image_size: int = SIZE) -> None:
        self.name = "fake"
        self.image_size = image_size
        self.size_unit = max(strides)
        self.layer_names = [f"stride{s}" for s in strides]
        self.layer_channels = list(channels)
        self.layer_strides = list(strides)
        self.device = torch.device("cpu")
        self._stages = _FakeStages(strides, channels)

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size // self.layer_strides[0], self.image_size // self.layer_strides[0]

    def stages(self) -> nn.Module:
        return self._stages

    def preprocess(self, images: list[np.ndarray], shape: tuple[int, int] | None = None) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        return F.interpolate(batch, size=shape or (self.image_size, self.image_size), mode="bilinear",
                             align_corners=False) - 0.5

    def extract(self, batch: torch.Tensor, *, common_grid: bool = True) -> Features:
        assert not common_grid, "U-Flow asks for native grids"
        with torch.no_grad():
            layers = list(self._stages(batch))
        return Features(layers=layers, embedding=layers[-1].mean(dim=(2, 3)), layer_names=self.layer_names)


def _config(**changes: object) -> UFlowConfig:
    base = UFlowConfig(backbone="fake", image_size=SIZE, layers=("stride4", "stride8"), epochs=3,
                       train_batch_size=4, blocks_per_scale=2, batch_size=8, min_epoch_samples=1)
    return replace(base, **changes)


def _backbone() -> FakeBackbone:
    return FakeBackbone()


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(90, 160, size=(SIZE, SIZE, 3))
    return [np.clip(base + rng.integers(-10, 10, size=base.shape), 0, 255).astype(np.uint8) for _ in range(count)]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids thread-synchronisation stalls on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> UFlow:
    return UFlow(_config(), backbone=_backbone()).fit(_images(8))


def test_flow_shapes_and_invertible_upsampling_keeps_dimensions() -> None:
    net = UFlowNet([6, 12], [8, 4], blocks_per_scale=2)
    features = [torch.randn(2, 6, 8, 8), torch.randn(2, 12, 4, 4)]
    latents, log_det = net(features)
    assert [tuple(z.shape) for z in latents] == [(2, 7, 8, 8), (2, 8, 4, 4)]
    assert sum(z[0].numel() for z in latents) == sum(f[0].numel() for f in features)
    assert net.latent_channels == [z.shape[1] for z in latents]
    assert log_det.shape == (2,)


def test_flow_log_det_matches_autograd_jacobian() -> None:
    torch.manual_seed(0)
    net = UFlowNet([8], [2], blocks_per_scale=2).double()
    with torch.no_grad():
        for parameter in net.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn_like(parameter))
    x = torch.randn(1, 8, 2, 2, dtype=torch.float64)

    def flat(v: torch.Tensor) -> torch.Tensor:
        return net([v.view(1, 8, 2, 2)])[0][0].reshape(-1)

    jacobian = torch.autograd.functional.jacobian(flat, x.reshape(-1))
    _, log_det = net([x])
    assert log_det.item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-6)


def test_anomaly_map_is_one_minus_mean_likelihood() -> None:
    latents = [torch.zeros(1, 3, 4, 4), torch.full((1, 2, 2, 2), 2.0)]
    result = anomaly_map(latents, 8)
    expected = 1.0 - 0.5 * (1.0 + np.exp(-2.0))
    assert result.shape == (1, 8, 8)
    assert torch.allclose(result, torch.full((1, 8, 8), expected, dtype=torch.float32))


def test_training_reduces_the_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    shared_fine = torch.randn(16, 1, 8, 8, generator=generator)
    shared_coarse = torch.randn(16, 1, 4, 4, generator=generator)
    features = [shared_fine + 0.1 * torch.randn(16, 6, 8, 8, generator=generator),
                shared_coarse + 0.1 * torch.randn(16, 12, 4, 4, generator=generator)]
    config = _config(epochs=20, train_batch_size=16, learning_rate=1e-2, lr_decay=1.0)
    model = UFlow(config, backbone=_backbone()).fit_features(features)
    assert len(model.history) == 20
    assert model.history[-1] < model.history[0] - 0.1


def test_fit_predict_gives_maps_scores_and_masks(trained: UFlow) -> None:
    images = _images(3, seed=1)
    result = trained.predict(images, paths=["a", "b", "c"])
    assert result.anomaly_maps.shape == (3, SIZE, SIZE) and result.anomaly_maps.dtype == np.float32
    assert result.masks is not None and result.masks.shape == (3, SIZE, SIZE) and result.masks.dtype == bool
    np.testing.assert_allclose(result.image_scores, result.anomaly_maps.reshape(3, -1).max(axis=1))
    assert result.paths == ["a", "b", "c"] and result.settings["method"] == "uflow"
    # 1 - likelihood lies in [0, 1] by construction; what can go wrong is a flat map
    assert np.all(result.anomaly_maps.reshape(3, -1).std(axis=1) > 0)


def test_training_is_deterministic(trained: UFlow) -> None:
    again = UFlow(_config(), backbone=_backbone()).fit(_images(8))
    assert again.history == trained.history


def test_save_load_round_trip_gives_identical_maps(trained: UFlow, tmp_path: Path) -> None:
    images = _images(2, seed=2)
    trained.save(tmp_path / "model")
    loaded = UFlow.load(tmp_path / "model", backbone=_backbone())
    before, after = trained.predict(images), loaded.predict(images)
    assert np.array_equal(before.anomaly_maps, after.anomaly_maps)
    assert np.array_equal(before.masks, after.masks)
    assert loaded.config == trained.config


def test_loading_another_methods_file_fails_clearly(tmp_path: Path) -> None:
    save_model(tmp_path / "prn", "prn", {"w": torch.zeros(2)}, {"x": 1})
    with pytest.raises(ModelFileError, match="made by method 'prn', not 'uflow'; load it with the 'prn' method"):
        UFlow.load(tmp_path / "prn")


def test_checkpoint_resume_equals_uninterrupted_training(tmp_path: Path) -> None:
    images = _images(8)
    full = UFlow(_config(epochs=3), backbone=_backbone()).fit(images)
    UFlow(_config(epochs=2), backbone=_backbone()).fit(images, checkpoint_dir=tmp_path / "ckpt")
    resumed = UFlow(_config(epochs=3), backbone=_backbone()).fit(
        images, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert resumed.epochs_done == 3 and len(resumed.history) == 3
    assert resumed.history == full.history
    for a, b in zip(full.flow.state_dict().values(), resumed.flow.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ModelFileError, match="other U-Flow settings"):
        UFlow(_config(epochs=4, learning_rate=1e-2), backbone=_backbone()).fit(
            images, checkpoint_dir=tmp_path / "ckpt", resume=True)


def test_bad_settings_and_misuse_raise() -> None:
    with pytest.raises(ConfigError):
        UFlowConfig(epochs=0)
    with pytest.raises(ConfigError):
        UFlowConfig(nfa_method="magic")
    with pytest.raises(NotFittedError, match="not trained"):
        UFlow(_config(), backbone=_backbone()).predict(_images(1))
    with pytest.raises(ConfigError, match="half"):
        UFlow(_config(layers=("stride4", "stride16")), backbone=FakeBackbone((4, 16))).fit(_images(2))


def test_onnx_export_matches_pytorch(trained: UFlow, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    from defectscope.methods.uflow.export import export_onnx

    path = export_onnx(trained, tmp_path / "uflow.onnx")
    images = _images(2, seed=3)
    batch = trained.backbone.preprocess(images)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_maps = session.run(["anomaly_map"], {"image": batch.numpy()})[0]
    torch_maps = trained.predict(images).anomaly_maps
    assert onnx_maps.shape == torch_maps.shape
    assert np.max(np.abs(onnx_maps - torch_maps)) <= 1e-4


def test_held_out_calibration_scales_the_nfa_and_survives_save_load(tmp_path: Path) -> None:
    model = UFlow(_config(epochs=1, calibration_fraction=0.25), backbone=_backbone()).fit(_images(12))
    assert len(model.latent_scale) == 2
    assert all(float(scale) >= 1.0 for scale in model.latent_scale)
    model.save(tmp_path / "calibrated")
    loaded = UFlow.load(tmp_path / "calibrated", backbone=_backbone())
    assert [float(s) for s in loaded.latent_scale] == [float(s) for s in model.latent_scale]
    with pytest.raises(ConfigError):
        UFlowConfig(calibration_fraction=1.0)


def test_calibrated_mask_extent_follows_the_map_inside_nfa_detections(tmp_path: Path) -> None:
    model = UFlow(_config(epochs=2, calibration_fraction=0.25), backbone=_backbone()).fit(_images(12))
    assert model.map_threshold is not None and 0.0 < model.map_threshold < 1.0
    images = _images(2, seed=5)
    images[0][8:20, 8:20] = 255  # a bright square: a defect for a flow trained on grey noise
    calibrated = model.predict(images)
    nfa_only = UFlow(replace(model.config, mask_extent="nfa"), backbone=_backbone())
    nfa_only.flow, nfa_only.feature_mean, nfa_only.feature_std = model.flow, model.feature_mean, model.feature_std
    nfa_only.latent_scale, nfa_only.map_threshold = model.latent_scale, model.map_threshold
    raw = nfa_only.predict(images)
    above = calibrated.anomaly_maps >= model.map_threshold
    assert calibrated.masks[0].any()
    assert np.all(calibrated.masks <= above)  # the outline is the map's level set ...
    for mask, detection in zip(calibrated.masks, raw.masks):  # ... kept only where the NFA detected
        assert not mask.any() or (mask & detection).any()
    model.save(tmp_path / "model")
    loaded = UFlow.load(tmp_path / "model", backbone=_backbone())
    assert loaded.map_threshold == model.map_threshold
    assert np.array_equal(loaded.predict(images).masks, calibrated.masks)
    with pytest.raises(ConfigError, match="mask_extent"):
        UFlowConfig(mask_extent="blob")


def test_map_smoothing_and_files_from_before_it(trained: UFlow, tmp_path: Path) -> None:
    from defectscope.methods.smoothing import gaussian_blur

    latents = [torch.randn(2, 3, 8, 8), torch.randn(2, 2, 4, 4)]
    assert torch.allclose(anomaly_map(latents, 16, 2.0), gaussian_blur(anomaly_map(latents, 16), 2.0))
    with pytest.raises(ConfigError, match="smoothing_sigma"):
        UFlowConfig(smoothing_sigma=-1.0)
    settings = trained.config.to_json()
    settings.pop("smoothing_sigma")
    settings.pop("mask_extent")
    settings.pop("max_region_fraction")
    old = UFlowConfig.from_json(settings)
    assert old.smoothing_sigma == 0.0 and old.mask_extent == "nfa" and old.max_region_fraction == 1.0
    assert UFlowConfig.from_json(trained.config.to_json()) == trained.config


def test_vit_scales_come_from_input_sizes_with_a_tiny_random_dinov2(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tiny = transformers.Dinov2Model(transformers.Dinov2Config(
        num_hidden_layers=2, patch_size=14, image_size=56, hidden_size=32, num_attention_heads=2,
        intermediate_size=64))
    tiny.save_pretrained(tmp_path / "dinov2")
    config = UFlowConfig(backbone="dinov2-vits14", weights=str(tmp_path / "dinov2"), image_size=56,
                         layers=("block2", "block2"), input_sizes=(112, 56), epochs=1, train_batch_size=4,
                         blocks_per_scale=2, min_epoch_samples=1, calibration_fraction=0.0)
    model = UFlow(config).fit(_images(4))
    assert model.flow.grids == [8, 4] and model.flow.channels == [32, 32]
    result = model.predict(_images(2, seed=1))
    assert result.anomaly_maps.shape == (2, 56, 56) and result.masks.shape == (2, 56, 56)
    model.save(tmp_path / "model")
    loaded = UFlow.load(tmp_path / "model")
    assert loaded.config.input_sizes == (112, 56)
    assert np.allclose(loaded.predict(_images(2, seed=1)).anomaly_maps, result.anomaly_maps, atol=1e-6)
    with pytest.raises(ConfigError, match="one positive integer per layer"):
        UFlowConfig(layers=("block2", "block2"), input_sizes=(112,))
    from defectscope.errors import BackboneError

    with pytest.raises(BackboneError, match="input_sizes=448,224"):
        UFlow(UFlowConfig(backbone="dinov2-vits14", weights=str(tmp_path / "dinov2"), image_size=56)).fit(_images(2))


def test_verdict_is_a_detected_region_unless_calibrated_on_good_images(trained: UFlow) -> None:
    images = _images(4, seed=1)
    images[2] = images[2].copy()
    images[2][8:24, 8:24] = 255
    result = trained.predict(images)
    assert result.is_anomalous.dtype == bool and result.is_anomalous.shape == (4,)
    assert result.threshold == trained.config.epsilon and "a contrario" in result.threshold_rule
    assert np.isnan(result.decision_scores()).all()  # the NFA level is no cut on a per-image statistic
    assert np.array_equal(result.is_anomalous, result.masks.reshape(4, -1).any(axis=1))
    good = _images(12, seed=3)
    with pytest.raises(ConfigError, match="needs at least 19 good images"):
        trained.calibrate(good, 0.05)
    model = UFlow(_config(), backbone=_backbone()).fit(_images(8))
    model.calibrate(good, 0.1)
    calibrated = model.predict(images)
    good_scores = model.predict(good).image_scores  # 12 < 22 good images at 0.1: the guard band above the largest
    assert calibrated.threshold == pytest.approx(conformal_threshold(good_scores, 0.1).value) and calibrated.threshold >= good_scores.max()
    assert calibrated.review_threshold == pytest.approx(good_scores.max())
    assert np.array_equal(calibrated.is_anomalous, calibrated.image_scores > calibrated.threshold)
    assert np.array_equal(calibrated.decision_scores(), calibrated.image_scores)
    assert calibrated.is_anomalous[2] and calibrated.threshold_rule.startswith("conformal on 12 good images")


def test_older_saved_settings_keep_their_batch_sizes_under_the_new_names():
    # Models saved before the rename wrote the training batch as batch_size and the backbone
    # batch as feature_batch_size; both must land on the fields that now carry those meanings.
    old = {**UFlowConfig().to_json()}
    old.pop("train_batch_size")
    old.update(batch_size=6, feature_batch_size=3)
    config = UFlowConfig.from_json(old)
    assert config.train_batch_size == 6 and config.batch_size == 3
    assert UFlowConfig.from_json(UFlowConfig(batch_size=5).to_json()).batch_size == 5


def test_a_part_with_a_detected_region_is_never_called_normal(trained: UFlow) -> None:
    """Default (a contrario) verdict: flagged exactly when a region is outlined. Calibrated on
    good images the verdict is a cut on the map maximum while the mask stays the NFA detection:
    a detected part under that cut goes to review, never to normal."""
    from defectscope.methods.verdict import Threshold

    images = _images(4, seed=1)
    images[2] = images[2].copy()
    images[2][8:24, 8:24] = 255
    plain = trained.predict(images)
    outlined = plain.masks.reshape(4, -1).any(axis=1)
    assert outlined[2]
    assert all(w != "normal" for o, w in zip(outlined, plain.verdicts()) if o)
    saved = trained.calibration
    try:
        trained.calibration = Threshold(float(plain.image_scores.max()) + 1.0, "a cut above every part")
        high = trained.predict(images)
    finally:
        trained.calibration = saved
    assert not high.is_anomalous.any()
    words = high.verdicts()
    assert np.array_equal(high.masks, plain.masks)
    assert all(w == "review" for o, w in zip(outlined, words) if o)
    assert all(w == "normal" for o, w in zip(outlined, words) if not o)
