"""PRN: model pieces, a tiny synthetic training task, save/load, resume, k-shot split, ONNX."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from defectscope.backbones.base import Features
from defectscope.errors import ConfigError, ModelFileError, NotFittedError
from defectscope.methods.modelfile import save_model
from defectscope.methods.prn import PRN, PRNConfig, kshot_split, multiscale_features
from defectscope.methods.prn.model import (
    MultiSizeAttention,
    PRNHead,
    kmeans,
    nearest_prototype_residual,
    top_k_mean,
)
from defectscope.methods.verdict import conformal_threshold

SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one thread is much faster than two on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeStages(torch.nn.Module):
    """Tiny frozen random CNN: maps at strides 4/8/16, each on its own grid."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(123)
        self.weights = [
            torch.randn(8, 3, 3, 3, generator=generator) * 0.5,
            torch.randn(8, 8, 3, 3, generator=generator) * 0.3,
            torch.randn(8, 8, 3, 3, generator=generator) * 0.3,
        ]

    def forward(self, batch):
        x4 = torch.relu(F.conv2d(F.avg_pool2d(batch, 4), self.weights[0], padding=1))
        x8 = torch.relu(F.conv2d(F.avg_pool2d(x4, 2), self.weights[1], padding=1))
        x16 = torch.relu(F.conv2d(F.avg_pool2d(x8, 2), self.weights[2], padding=1))
        # the coarser maps pass through the finest grid and back (the features these tests were tuned on)
        return x4, *(F.avg_pool2d(F.interpolate(x, size=x4.shape[-2:], mode="bilinear", align_corners=False), factor)
                     for x, factor in ((x8, 2), (x16, 4)))


class FakeBackbone:
    """A backbone of the :class:`~defectscope.backbones.base.Backbone` contract on :class:`FakeStages`."""

    name = "fake"
    image_size = SIZE
    size_unit = 16
    layer_names = ["stride4", "stride8", "stride16"]
    layer_channels = [8, 8, 8]
    layer_strides = [4, 8, 16]
    device = torch.device("cpu")
    grid = (SIZE // 4, SIZE // 4)

    def __init__(self) -> None:
        self._stages = FakeStages()

    def stages(self):
        return self._stages

    def preprocess(self, images, shape=None):
        batch = []
        for image in images:
            if image.shape[:2] != (SIZE, SIZE):
                image = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
            batch.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0)
        return torch.stack(batch)

    def extract(self, batch, *, common_grid=True):
        with torch.no_grad():
            layers = list(self._stages(batch))
        if common_grid:
            layers = [layers[0]] + [F.interpolate(x, size=layers[0].shape[-2:], mode="bilinear", align_corners=False) for x in layers[1:]]
        return Features(layers=layers, embedding=layers[-1].mean(dim=(2, 3)), layer_names=list(self.layer_names))


def texture(rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(60, 110, size=(SIZE, SIZE, 1)).astype(np.uint8)
    return np.repeat(base, 3, axis=2)


def planted(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = texture(rng)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    top, left = (int(v) for v in rng.integers(8, SIZE - 24, size=2))
    mask[top : top + 14, left : left + 14] = True
    image[mask] = 240
    return image, mask


def tiny_config(**overrides) -> PRNConfig:
    # seen_share 0: in 6 short epochs the tiny heads learn the planted squares only from pastes
    # at new places (half the real samples as the three whole images leave them undecided);
    # test_seen_share_... trains the whole images longer.
    values = dict(
        backbone="fake", image_size=SIZE, widths=(8, 8, 8), epochs=6, samples_per_epoch=32,
        batch_size=8, learning_rate=1e-2, top_k=20, max_prototypes=4, seed=0, seen_share=0.0,
    )
    values.update(overrides)
    return PRNConfig(**values)


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    normals = [texture(rng) for _ in range(12)]
    anomalies = [planted(rng) for _ in range(3)]
    tests = [planted(rng) for _ in range(3)]
    return normals, anomalies, tests


@pytest.fixture(scope="module")
def trained(task):
    """Cross-fitted (12 normal images): 3 fold models of 42 samples per epoch each."""
    normals, anomalies, _ = task
    torch.manual_seed(0)
    return PRN(tiny_config(samples_per_epoch=128), backbone=FakeBackbone()).fit(normals, anomalies)


def test_kmeans_is_seeded_and_finds_clusters():
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(20, 5, generator=generator) + 10 * c for c in range(3)])
    first = kmeans(points, 3, seed=1)
    assert torch.equal(first, kmeans(points, 3, seed=1))
    centres = sorted(float(c.mean()) for c in first)
    assert np.allclose(centres, [0, 10, 20], atol=1.0)


def test_residual_uses_nearest_prototype():
    prototypes = torch.stack([torch.zeros(2, 3, 3), torch.ones(2, 3, 3) * 5])
    features = torch.ones(1, 2, 3, 3) * 4
    assert torch.allclose(nearest_prototype_residual(features, prototypes), torch.ones(1, 2, 3, 3))


def test_attention_keeps_shape_and_head_outputs_input_resolution():
    attention = MultiSizeAttention(4, 8, (1, 2, 4, 8))
    assert attention.windows == [8, 4, 2, 1]
    assert attention(torch.randn(2, 4, 8, 8)).shape == (2, 4, 8, 8)
    head = PRNHead([3, 5, 7], [16, 8, 4], 64, 2, widths=(8, 8, 8))
    out = head(torch.randn(2, 3, 16, 16), torch.randn(2, 5, 8, 8), torch.randn(2, 7, 4, 4))
    assert out.shape == (2, 1, 64, 64)


def test_top_k_mean():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, :3] = torch.tensor([1.0, 0.5, 0.25])
    assert float(top_k_mean(maps, 2)[0]) == pytest.approx(0.75)


def test_multiscale_features_keep_native_grids_and_pool_a_shared_grid():
    backbone = FakeBackbone()
    maps = multiscale_features(backbone, backbone.preprocess([np.zeros((SIZE, SIZE, 3), np.uint8)]))
    assert [m.shape[-1] for m in maps] == [16, 8, 4]
    from defectscope.methods.prn.features import pyramid

    shared = [torch.randn(1, 2, 8, 8) for _ in range(3)]  # a ViT's blocks: one grid
    pooled = pyramid(shared)
    assert [m.shape[-1] for m in pooled] == [8, 4, 2]
    assert torch.allclose(pooled[2][0, :, 0, 0], shared[2][0, :, :4, :4].mean(dim=(1, 2)))


def test_training_reduces_loss_and_localises_defect(trained, task):
    _, _, tests = task
    assert trained.losses[-1] < trained.losses[0]
    result = trained.predict([image for image, _ in tests])
    assert result.anomaly_maps.shape == (3, SIZE, SIZE) and result.anomaly_maps.dtype == np.float32
    for anomaly_map, (_, mask) in zip(result.anomaly_maps, tests):
        peak = np.unravel_index(np.argmax(anomaly_map), anomaly_map.shape)
        assert mask[peak]
    normal_scores = trained.predict(task[0][:3]).image_scores
    assert result.image_scores.min() > normal_scores.max()


def test_save_load_round_trip(trained, task, tmp_path):
    images = [image for image, _ in task[2]]
    trained.save(tmp_path / "model")
    loaded = PRN.load(tmp_path / "model", backbone=FakeBackbone())
    assert loaded.config == trained.config
    assert np.array_equal(loaded.predict(images).anomaly_maps, trained.predict(images).anomaly_maps)


def test_wrong_method_file_fails_clearly(tmp_path):
    save_model(tmp_path / "other", "uflow", {"w": torch.zeros(1)}, {})
    with pytest.raises(ModelFileError, match="made by method 'uflow', not 'prn'; load it with the 'uflow' method"):
        PRN.load(tmp_path / "other", backbone=FakeBackbone())


def test_untrained_predict_and_bad_config_fail_clearly():
    with pytest.raises(ConfigError, match="final_model=.* is invalid: expected one of"):
        tiny_config(final_model="sometimes")
    with pytest.raises(NotFittedError, match="not trained"):
        PRN(tiny_config(), backbone=FakeBackbone()).predict([np.zeros((SIZE, SIZE, 3), np.uint8)])
    with pytest.raises(ConfigError, match="multiple of 32"):
        PRNConfig(image_size=100)


def test_resume_continues_like_an_uninterrupted_run(task, tmp_path):
    normals, anomalies, tests = task
    images = [image for image, _ in tests]
    config = tiny_config(epochs=2, samples_per_epoch=8)
    full = PRN(config, backbone=FakeBackbone()).fit(normals, anomalies)
    PRN(tiny_config(epochs=1, samples_per_epoch=8), backbone=FakeBackbone()).fit(
        normals, anomalies, checkpoint_dir=tmp_path / "ckpt"
    )
    for model in sorted((tmp_path / "ckpt").glob("*/config.json")):
        header = json.loads(model.read_text())
        header["config"]["prn"]["epochs"] = 2
        header["config"]["checkpoint"]["settings"]["epochs"] = 2
        model.write_text(json.dumps(header))
    with pytest.raises(ModelFileError, match="other PRN settings"):
        PRN(tiny_config(epochs=2, samples_per_epoch=16), backbone=FakeBackbone()).fit(
            normals, anomalies, checkpoint_dir=tmp_path / "ckpt", resume=True
        )
    events = []
    resumed = PRN(config, backbone=FakeBackbone()).fit(
        normals, anomalies, checkpoint_dir=tmp_path / "ckpt", resume=True, progress=lambda *event: events.append(event)
    )
    steps = [(done, total) for stage, done, total in events if stage == "train"]
    assert len(resumed.heads) == 3 and steps and len(steps) == steps[-1][1] // 2 == steps[-1][0] // 2
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)
    assert np.allclose(resumed.predict(images).anomaly_maps, full.predict(images).anomaly_maps, atol=1e-5)


def test_onnx_parity(trained, task, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from defectscope.methods.prn import export_onnx

    images = [image for image, _ in task[2]]
    path = export_onnx(trained, tmp_path / "prn.onnx")
    batch = trained.backbone.preprocess(images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps, scores = session.run(None, {"image": batch.numpy()})
    reference = trained.predict(images)
    assert np.abs(maps - reference.anomaly_maps).max() <= 1e-4
    assert np.abs(scores - reference.image_scores).max() <= 1e-4


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_kshot_split_is_seeded_and_never_leaks(tmp_path):
    from defectscope.data.layouts import Sample

    rng = np.random.default_rng(0)
    samples = []
    for column, (defect_type, count) in enumerate((("Crack", 6), ("Fray", 3))):
        for i in range(count):
            image = _write(tmp_path / defect_type / f"{i}.jpg", rng.integers(0, 255, (16, 16), dtype=np.uint8))
            mask = np.zeros((16, 16), np.uint8)
            mask[i : i + 4, 4 * column : 4 * column + 4] = 255
            mask_path = _write(tmp_path / defect_type / f"{i}.png", mask)
            samples.append(Sample(path=image, label=1, mask_path=mask_path, defect_type=defect_type))
    for i in range(4):
        samples.append(Sample(path=_write(tmp_path / "Free" / f"{i}.jpg", np.full((16, 16), i, np.uint8)), label=0))

    train, test = kshot_split(samples, k=2, seed=0)
    assert [s.defect_type for s in train].count("Crack") == 2 and [s.defect_type for s in train].count("Fray") == 2
    assert len(train) + len(test) == len(samples)
    assert kshot_split(samples, k=2, seed=0) == (train, test)
    assert kshot_split(samples, k=2, seed=1)[0] != train

    def identities(group):
        found = set()
        for sample in group:
            for file in (sample.path, sample.mask_path):
                if file is not None:
                    found.add(str(Path(file).resolve()))
                    found.add(hashlib.sha256(Path(file).read_bytes()).hexdigest())
        return found

    assert not identities(train) & identities(test)
    few_train, few_test = kshot_split(samples, k=10, seed=0)
    assert [s.defect_type for s in few_test].count("Fray") == 1


def test_verdict_cut_is_calibrated_on_held_back_normals(task, tmp_path):
    from defectscope.methods.modelfile import load_model
    from defectscope.methods.holdout import held_out_indices

    normals, anomalies, tests = task
    held = held_out_indices(len(normals), 0.1, 0)
    assert len(held) == 2 and held == held_out_indices(len(normals), 0.1, 0)
    detector = PRN(tiny_config(cross_fit_folds=0, final_model="never"), backbone=FakeBackbone()).fit(normals, anomalies)
    assert detector.model_info["normal_images"] == len(normals) - 2 and len(detector.heads) == 1
    assert detector.held_out_scores.shape == (2,)
    result = detector.predict([image for image, _ in tests])
    assert result.threshold == pytest.approx(detector.held_out_scores.max())
    assert "held-back" in result.threshold_rule and result.is_anomalous.all()
    assert np.array_equal(result.masks, result.anomaly_maps > result.threshold)
    detector.save(tmp_path / "model")
    loaded = PRN.load(tmp_path / "model", backbone=FakeBackbone())
    assert np.array_equal(loaded.held_out_scores, detector.held_out_scores)
    tensors, header = load_model(tmp_path / "model", "prn")
    del tensors["held_out_scores"]
    save_model(tmp_path / "old", "prn", tensors, header["config"])
    old = PRN.load(tmp_path / "old", backbone=FakeBackbone()).predict([image for image, _ in tests])
    assert old.threshold == 0.5 and "uncalibrated fallback" in old.threshold_rule


def test_small_normal_sets_are_cross_fitted(trained, task, tmp_path):
    from defectscope.methods.prn.training import calibration_folds

    normals, _, tests = task
    folds = calibration_folds(len(normals), trained.config)
    assert len(folds) == 3 and sorted(i for fold in folds for i in fold) == list(range(len(normals)))
    assert calibration_folds(400, trained.config) == [calibration_folds(400, trained.config)[0]]
    assert len(trained.heads) == 3 and trained.held_out_scores.shape == (len(normals),)
    fold_scores = [trained.maps_of([head], [normals[i] for i in fold]) for head, fold in zip(trained.heads, folds)]
    assert np.allclose(np.sort(torch.cat([top_k_mean(m, 20) for m in fold_scores]).numpy()), np.sort(trained.held_out_scores))
    result = trained.predict([image for image, _ in tests])
    assert result.threshold == pytest.approx(trained.held_out_scores.max())
    assert "cross-fitted" in result.threshold_rule and "too few" in result.threshold_rule
    trained.save(tmp_path / "model")
    assert PRN.load(tmp_path / "model", backbone=FakeBackbone()).predict([image for image, _ in tests]).threshold_rule == result.threshold_rule


def test_cross_fitting_controls_false_alarms_where_two_held_back_images_do_not():
    """24 normal images (a paper type's count): holding back 10 % leaves 2 calibration images
    and their larger score as the cut (expected false-alarm rate 1/3); cross-fitting calibrates
    on all 24, anomalous above the largest of them (no guard band on cross-fitted scores)."""
    rng = np.random.default_rng(5)
    normals = [texture(rng) for _ in range(24)]
    anomalies = [planted(rng) for _ in range(3)]
    fresh = [texture(rng) for _ in range(150)]
    defective = [planted(rng)[0] for _ in range(30)]
    config = tiny_config(epochs=4, samples_per_epoch=96)
    cross_fitted = PRN(config, backbone=FakeBackbone()).fit(normals, anomalies)
    held_back = PRN(replace(config, cross_fit_folds=0), backbone=FakeBackbone()).fit(normals, anomalies)
    assert cross_fitted.held_out_scores.size == 24 and held_back.held_out_scores.size == 2
    assert cross_fitted.predict(fresh).is_anomalous.mean() <= 0.1 < held_back.predict(fresh).is_anomalous.mean()
    # 24 calibration scores are fewer than the 45 a rank needs for the per-set promise, but the
    # cross-fitted scores already lie high (weaker fold models), so PRN takes no guard band on
    # them (docs/PRN_MAPS.md): the anomalous cut is the largest cross-fitted score.
    caught = cross_fitted.predict(defective)
    assert "guard band" not in caught.threshold_rule
    assert caught.threshold == pytest.approx(cross_fitted.held_out_scores.max())
    assert caught.is_anomalous.mean() >= 0.3


def test_calibrate_on_good_images_uses_conformal_cut(trained, task):
    normals, _, tests = task
    with pytest.raises(ConfigError, match="needs at least 19 good images"):
        trained.calibrate(normals, 0.05)
    calibrated = PRN(trained.config, backbone=FakeBackbone())
    calibrated.heads, calibrated.model_info = trained.heads, trained.model_info
    calibrated.calibrate(normals, 0.1)
    result = calibrated.predict([image for image, _ in tests])
    assert result.threshold_rule.startswith("conformal on 12 good images")
    # 12 < 22 good images: the guard band, fitted to the probabilities' log-odds (PRN's scores are probabilities)
    expected = conformal_threshold(trained.predict(normals).image_scores, 0.1, probability=True)
    assert "guard band" in expected.rule and result.threshold == pytest.approx(expected.value)
    assert result.review_threshold == pytest.approx(np.sort(trained.predict(normals).image_scores)[11])  # the split-conformal cut


def test_final_model_gives_the_maps_and_the_fold_models_the_verdict(task, tmp_path):
    """final_model=True: the maps are those of the model a run without any calibration trains
    (all normal images, full samples per epoch; main before 2026-12-01), the verdict stays the
    fold models' (statistic and cut), masks only on flagged images; save/load keeps both."""
    normals, anomalies, tests = task
    images = [image for image, _ in tests] + normals[:3]
    config = tiny_config(samples_per_epoch=48, epochs=3, final_model="always", map_models="final")
    trained = PRN(replace(config, final_model="held-back"), backbone=FakeBackbone()).fit(normals, anomalies)
    both = PRN(config, backbone=FakeBackbone()).fit(normals, anomalies)
    plain = PRN(replace(config, calibration_fraction=0.0, cross_fit_folds=0), backbone=FakeBackbone()).fit(normals, anomalies)
    assert plain.final_head is None and plain.held_out_scores is None and both.final_head is not None
    assert np.allclose(both.held_out_scores, trained.held_out_scores, atol=1e-6)
    result = both.predict(images)
    assert np.allclose(result.anomaly_maps, plain.predict(images).anomaly_maps, atol=1e-6)
    reference = trained.predict(images)
    assert np.allclose(result.verdict_scores, reference.image_scores, atol=1e-6)
    assert np.array_equal(result.is_anomalous, reference.is_anomalous) and result.threshold == reference.threshold
    assert not result.masks[~result.is_anomalous].any()
    assert np.array_equal(result.masks[result.is_anomalous], result.anomaly_maps[result.is_anomalous] > result.threshold)
    both.save(tmp_path / "model")
    loaded = PRN.load(tmp_path / "model", backbone=FakeBackbone())
    again = loaded.predict(images)
    assert loaded.final_head is not None and len(loaded.heads) == 3
    assert np.allclose(again.anomaly_maps, result.anomaly_maps, atol=1e-6)
    assert np.array_equal(again.is_anomalous, result.is_anomalous)


def test_final_model_with_a_held_back_share(task):
    """With a held-back share (no cross-fitting) the default trains the final model: the one a run
    without calibration trains; the verdict is the held-back model's split-conformal one."""
    normals, anomalies, tests = task
    images = [image for image, _ in tests] + normals[:3]
    config = tiny_config(cross_fit_folds=0, epochs=3)
    held = PRN(replace(config, final_model="never"), backbone=FakeBackbone()).fit(normals, anomalies)
    both = PRN(config, backbone=FakeBackbone()).fit(normals, anomalies)
    plain = PRN(replace(config, calibration_fraction=0.0), backbone=FakeBackbone()).fit(normals, anomalies)
    assert len(both.heads) == 1 and both.final_head is not None and both.model_info["normal_images"] == len(normals)
    assert both.config.map_models == "all"  # the default
    result, reference = both.predict(images), held.predict(images)
    final_maps = plain.predict(images).anomaly_maps
    # the maps are the final and the held-back model's, half each (not either one alone)
    assert np.allclose(result.anomaly_maps, (final_maps + reference.anomaly_maps) / 2, atol=1e-6)
    assert not np.allclose(result.anomaly_maps, final_maps, atol=1e-4)
    assert np.allclose(result.verdict_scores, reference.image_scores, atol=1e-6)
    assert result.threshold == reference.threshold and np.array_equal(result.is_anomalous, reference.is_anomalous)
    assert not result.masks[~result.is_anomalous].any()
    assert np.array_equal(result.masks[result.is_anomalous], result.anomaly_maps[result.is_anomalous] > result.threshold)
    alone = PRN(replace(config, map_models="final"), backbone=FakeBackbone())
    alone.heads, alone.final_head, alone.model_info, alone.held_out_scores = both.heads, both.final_head, both.model_info, both.held_out_scores
    again = alone.predict(images)
    assert np.allclose(again.anomaly_maps, final_maps, atol=1e-6)
    assert np.array_equal(again.is_anomalous, result.is_anomalous)  # the verdict does not depend on it


def test_default_epochs_are_longer_only_for_a_normal_set_large_enough_to_hold_back(task):
    """epochs=None: 16 for small normal sets (cross-fitted or no calibration), 32 when one
    held-back set is large enough for the conformal cut (186 images at 10 % and 5 %) or a
    cross-fitted set's long images give as many training tiles; an explicit number wins; the
    trained model records the number it used."""
    from defectscope.methods.prn.training import calibration_folds, epochs_for

    config = PRNConfig()
    assert config.epochs is None
    assert epochs_for(config, calibration_folds(24, config)) == 16  # cross-fitted folds
    assert epochs_for(config, calibration_folds(185, config)) == 16
    assert epochs_for(config, calibration_folds(186, config)) == 32  # one held-back set of 19
    assert epochs_for(config, calibration_folds(5, config)) == 16  # no calibration at all
    assert epochs_for(replace(config, epochs=7), calibration_folds(476, config)) == 7
    # long images: a cross-fitted set cut into 186 or more training tiles is large too
    assert epochs_for(config, calibration_folds(90, config), 450) == 32
    assert epochs_for(config, calibration_folds(90, config), 185) == 16
    assert epochs_for(config, calibration_folds(5, config), 450) == 16  # still no calibration
    normals, anomalies, _ = task
    trained = PRN(tiny_config(epochs=None, samples_per_epoch=8), backbone=FakeBackbone()).fit(normals, anomalies)
    assert trained.model_info["epochs"] == 16 and len(trained.losses) == 16 * len(trained.heads)


def test_models_saved_before_map_models_keep_the_final_models_maps():
    """A PRN config written before ``map_models`` existed reads back as "final", its old behaviour."""
    data = PRNConfig().to_json()
    data.pop("map_models")
    assert PRNConfig.from_dict(data).map_models == "final"
    assert PRNConfig.from_dict(PRNConfig().to_json()).map_models == "all"


def test_seen_share_trains_on_the_labelled_images_and_reads_back(task):
    """``seen_share`` reaches training (a different model from the pasted-only one at the same
    seed), a model trained on the labelled images whole (no pastes) flags the planted test squares
    where they are, it is bounded to [0, 1] (default 0.5), and files written before it existed
    read back as 0."""
    normals, anomalies, tests = task
    assert PRNConfig().seen_share == 0.5
    config = tiny_config(epochs=1, samples_per_epoch=16, calibration_fraction=0.0)
    pasted = PRN(config, backbone=FakeBackbone()).fit(normals, anomalies)
    seen = PRN(replace(config, seen_share=1.0), backbone=FakeBackbone()).fit(normals, anomalies)
    assert pasted.losses != seen.losses
    whole = PRN(tiny_config(cross_fit_folds=0, final_model="never", seen_share=1.0, epochs=12), backbone=FakeBackbone())
    result = whole.fit(normals, anomalies).predict([image for image, _ in tests])
    assert result.is_anomalous.all()
    for anomaly_map, (_, mask) in zip(result.anomaly_maps, tests):
        assert anomaly_map[mask].mean() > anomaly_map[~mask].mean() + 0.1
    with pytest.raises(ConfigError, match="seen_share"):
        tiny_config(seen_share=1.5)
    data = replace(config, seen_share=0.5).to_json()
    assert PRNConfig.from_dict(data).seen_share == 0.5
    data.pop("seen_share")
    assert PRNConfig.from_dict(data).seen_share == 0.0


def _never_normal_with_a_mask(result) -> None:
    outlined = result.masks.reshape(len(result.paths), -1).any(axis=1)
    words = result.verdicts()
    assert not any(o and w == "normal" for o, w in zip(outlined, words)), list(zip(outlined, words))


@pytest.mark.parametrize("final_model", ["never", "always"])
def test_a_part_with_a_mask_is_never_called_normal_by_prn(task, final_model, monkeypatch):
    """The cut applies per pixel (mask) and to the top-k mean (verdict): a part whose map peaks
    above the cut while its statistic stays under it must go to review, never to normal (with a
    final model the statistic comes from the fold models, the mask from the final one)."""
    from defectscope.methods.verdict import Threshold

    normals, anomalies, tests = task
    images = [image for image, _ in tests] + normals[:3]
    detector = PRN(tiny_config(final_model=final_model), backbone=FakeBackbone()).fit(normals, anomalies)
    first = detector.predict(images)
    _never_normal_with_a_mask(first)
    statistic, peaks = first.decision_scores(), first.anomaly_maps.reshape(len(images), -1).max(axis=1)
    index = int(np.argmax(peaks - statistic))
    assert peaks[index] > statistic[index]  # top-k mean under the map's peak
    cut = Threshold(float(statistic[index] + peaks[index]) / 2, "a cut between the statistic and the peak")
    monkeypatch.setattr(detector, "threshold", lambda: cut)
    result = detector.predict(images)
    assert not result.is_anomalous[index]
    assert result.verdicts()[index] == "review"
    _never_normal_with_a_mask(result)


def _tiled_copy(trained, **overrides):
    tiled = PRN(replace(trained.config, tile_aspect=1.5, **overrides), backbone=trained.backbone)
    tiled.heads, tiled.final_head, tiled.model_info, tiled.held_out_scores = (
        trained.heads, trained.final_head, trained.model_info, trained.held_out_scores)
    return tiled


def test_tiles_for_long_images_keep_the_aspect(trained, task):
    """With ``tile_aspect`` a batch of 1 x 2 images is mapped as each image's two square halves
    side by side, S x 2S (not squashed to S x S); a tall image gives 2S x S."""
    normals, _, tests = task
    tiled = _tiled_copy(trained)
    left, right = tests[0][0], normals[0]
    long_images = [np.concatenate([left, right], axis=1), np.concatenate([right, left], axis=1)]
    halves = trained.anomaly_maps([left, right])
    maps = tiled.anomaly_maps(long_images)
    assert maps.shape == (2, SIZE, 2 * SIZE)
    assert torch.allclose(maps[0], torch.cat([halves[0], halves[1]], dim=1), atol=1e-6)
    assert torch.allclose(maps[1], torch.cat([halves[1], halves[0]], dim=1), atol=1e-6)
    result = tiled.predict(long_images)
    assert result.anomaly_maps.shape == (2, SIZE, 2 * SIZE) and result.masks.shape == (2, SIZE, 2 * SIZE)
    # the image score is the top-k of the whole long map: the defective half's pixels decide it
    assert np.allclose(result.image_scores, top_k_mean(maps, tiled.config.top_k).numpy(), atol=1e-6)
    tall = tiled.anomaly_maps([np.concatenate([left, right], axis=0)])
    assert tall.shape == (1, 2 * SIZE, SIZE)
    assert torch.allclose(tall[0], torch.cat([halves[0], halves[1]], dim=0), atol=1e-6)


def test_tiles_in_a_mixed_batch_are_squashed_but_scored_on_their_own_maps(trained, task):
    """A batch mixing a long and a square image returns S x S maps (the long one's stitched map
    resized), while every image score, verdict statistic included, comes from the image's own
    map: the same score as in a batch of its own."""
    normals, _, tests = task
    tiled = _tiled_copy(trained)
    left, right = tests[0][0], normals[0]
    long_image = np.concatenate([left, right], axis=1)
    halves = trained.anomaly_maps([left, right])
    expected = F.interpolate(torch.cat([halves[0], halves[1]], dim=1)[None, None], size=(SIZE, SIZE),
                             mode="bilinear", align_corners=False)[0, 0]
    mixed = tiled.predict([long_image, left])
    assert mixed.anomaly_maps.shape == (2, SIZE, SIZE)
    assert np.allclose(mixed.anomaly_maps[0], expected.numpy(), atol=1e-6)
    assert np.allclose(mixed.anomaly_maps[1], halves[0].numpy(), atol=1e-6)
    alone = tiled.predict([long_image])
    assert alone.anomaly_maps.shape == (1, SIZE, 2 * SIZE)
    assert abs(mixed.image_scores[0] - alone.image_scores[0]) < 1e-6
    assert abs(mixed.decision_scores()[0] - alone.decision_scores()[0]) < 1e-6


def test_tiles_cut_the_training_images(task):
    normals, anomalies, _ = task
    long_normals = [np.concatenate([a, b], axis=1) for a, b in zip(normals[:4], normals[4:8])] + normals[8:10]
    config = tiny_config(tile_aspect=1.5, epochs=1, samples_per_epoch=8, calibration_fraction=0.0)
    detector = PRN(config, backbone=FakeBackbone()).fit(long_normals, anomalies)
    assert detector.model_info["normal_images"] == 6 and detector.model_info["normal_tiles"] == 4 * 2 + 2


def test_large_sets_of_long_images_train_a_final_model_while_cross_fitted():
    """final_model="large" (the default): a final model on the held-back path, as "held-back";
    a cross-fitted set gets one only when its long images are cut into as many training tiles
    as a held-back share would need images (186 at 10 % and 5 %); no calibration, no final model."""
    from defectscope.methods.prn.training import calibration_folds, trains_final_model

    config = PRNConfig()
    assert config.final_model == "large"
    cases = [(476, 476, True), (90, 450, True), (90, 186, True), (90, 185, False), (24, 24, False), (5, 15, False)]
    for images, tiles, expected in cases:
        folds = calibration_folds(images, config)
        assert trains_final_model(config, folds, tiles) is expected, (images, tiles)
        held_back = replace(config, final_model="held-back")
        assert trains_final_model(held_back, folds, tiles) is (len(folds) == 1)  # tiles do not count
        assert trains_final_model(replace(config, final_model="always"), folds, tiles) is any(folds)
        assert trains_final_model(replace(config, final_model="never"), folds, tiles) is False
    small_held_back = replace(config, cross_fit_folds=0)  # a held-back share too small to be conformal
    assert trains_final_model(small_held_back, calibration_folds(24, small_held_back), 24) is True


def test_a_cross_fitted_set_of_long_images_trains_the_final_model_end_to_end(task):
    """The rule above in fit(): long normal images cut into enough tiles get a final model beside
    the fold models (maps averaged), while the verdict stays the folds' cross-fitted one."""
    normals, anomalies, _ = task
    long_normals = [np.concatenate([a, b], axis=1) for a, b in zip(normals[:6], normals[6:12])] * 2
    config = tiny_config(tile_aspect=1.5, epochs=1, samples_per_epoch=24, calibration_fraction=0.5)
    # 12 long images -> 24 tiles; at 50 % a held-back share of 12 tiles would not reach the 19 a 5 % cut needs
    few = PRN(config, backbone=FakeBackbone()).fit(long_normals, anomalies)
    assert few.model_info["calibration"] == "cross-fit" and few.final_head is None
    many = PRN(replace(config, false_alarm_rate=0.1), backbone=FakeBackbone()).fit(long_normals, anomalies)
    # at 10 % a cut needs 9 images; 12 long images held back at 50 % are 6 (cross-fit), their 24 tiles 12
    assert many.model_info["calibration"] == "cross-fit" and many.final_head is not None
    assert many.model_info["final_model"] is True and many.model_info["normal_tiles"] == 24
    auto = PRN(replace(config, false_alarm_rate=0.1, epochs=None), backbone=FakeBackbone()).fit(long_normals, anomalies)
    assert auto.model_info["epochs"] == 32 and auto.final_head is not None  # a large set trains longer too


def test_tiles_calibrate_whole_images_through_the_prediction_path(task):
    """Cross-fitting with ``tile_aspect`` folds whole long images (their tiles train together)
    and scores each held-out image as predict() scores a new one: one calibration score per
    image, equal to its score under the fold model that never saw it."""
    from defectscope.methods.prn.training import calibration_folds

    normals, anomalies, _ = task
    long_normals = [np.concatenate([a, b], axis=1) for a, b in zip(normals[:6], normals[6:12])] * 2
    config = tiny_config(tile_aspect=1.5, epochs=1, samples_per_epoch=24, final_model="never")
    detector = PRN(config, backbone=FakeBackbone()).fit(long_normals, anomalies)
    folds = calibration_folds(len(long_normals), config)
    assert detector.model_info["calibration"] == "cross-fit" and len(folds) == 3
    assert detector.held_out_scores.shape == (len(long_normals),)
    expected = np.concatenate([detector.scores_of([head], [long_normals[i] for i in fold]) for head, fold in zip(detector.heads, folds)])
    assert np.allclose(detector.held_out_scores, expected)
    one = PRN(replace(config, cross_fit_folds=0, calibration_fraction=0.0), backbone=detector.backbone)
    one.heads, one.model_info = [detector.heads[0]], detector.model_info
    # the score a new image gets in predict() is the one scores_of gave its calibration twin
    score = one.predict([long_normals[folds[0][0]]]).image_scores[0]
    assert abs(score - detector.held_out_scores[0]) < 1e-6


def _blurred_top_k(maps, sigma: float, k: int) -> np.ndarray:
    from defectscope.methods.smoothing import gaussian_blur

    return top_k_mean(gaussian_blur(torch.as_tensor(maps, dtype=torch.float32), sigma), k).numpy()


def test_smoothing_blurs_every_map_prn_reads(task, tmp_path):
    """smoothing_sigma blurs the maps before the image scores, the masks, the verdict statistic
    (the fold models' with a final model) and the calibration scores read them; training is
    unchanged (same heads), the setting is saved, and a file from before it loads with 0."""
    from defectscope.methods.smoothing import gaussian_blur

    normals, anomalies, tests = task
    images = [image for image, _ in tests] + normals[:3]
    config = tiny_config(samples_per_epoch=48, epochs=3, final_model="always", map_models="final")
    sharp = PRN(config, backbone=FakeBackbone()).fit(normals, anomalies)
    smooth = PRN(replace(config, smoothing_sigma=2.0), backbone=FakeBackbone()).fit(normals, anomalies)
    for a, b in zip(sharp.heads + [sharp.final_head], smooth.heads + [smooth.final_head]):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    raw, result = sharp.predict(images), smooth.predict(images)
    expected = gaussian_blur(torch.from_numpy(raw.anomaly_maps), 2.0).numpy()
    assert np.abs(expected - raw.anomaly_maps).max() > 5e-3  # the blur changes these maps
    assert np.allclose(result.anomaly_maps, expected, atol=1e-6)
    assert np.allclose(result.image_scores, top_k_mean(torch.from_numpy(expected), config.top_k).numpy(), atol=1e-6)
    fold_maps = sharp.maps_of(sharp.heads, images)
    assert np.allclose(result.verdict_scores, _blurred_top_k(fold_maps, 2.0, config.top_k), atol=1e-6)
    from defectscope.methods.prn.training import calibration_folds

    calibration = np.concatenate([
        _blurred_top_k(sharp.maps_of([head], [normals[i] for i in fold]), 2.0, config.top_k)
        for head, fold in zip(sharp.heads, calibration_folds(len(normals), config))
    ])
    assert np.allclose(smooth.held_out_scores, calibration, atol=1e-6)
    assert not np.allclose(smooth.held_out_scores, sharp.held_out_scores, atol=1e-4)
    flagged = result.is_anomalous
    assert np.array_equal(result.masks[flagged], result.anomaly_maps[flagged] > result.threshold)

    smooth.save(tmp_path / "model")
    loaded = PRN.load(tmp_path / "model", backbone=FakeBackbone())
    assert loaded.config.smoothing_sigma == 2.0
    assert np.allclose(loaded.predict(images).anomaly_maps, result.anomaly_maps, atol=1e-6)
    header_path = tmp_path / "model" / "config.json"
    header = json.loads(header_path.read_text())
    header["config"]["prn"].pop("smoothing_sigma")
    header_path.write_text(json.dumps(header))
    old = PRN.load(tmp_path / "model", backbone=FakeBackbone())
    assert old.config.smoothing_sigma == 0.0
    with pytest.raises(ConfigError, match="smoothing_sigma"):
        tiny_config(smoothing_sigma=-1.0)


def test_onnx_export_blurs_like_the_detector(trained, task, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from defectscope.methods.prn import export_onnx

    smooth = PRN(replace(trained.config, smoothing_sigma=3.0), backbone=trained.backbone)
    smooth.heads, smooth.final_head, smooth.model_info = trained.heads, trained.final_head, trained.model_info
    images = [image for image, _ in task[2]] + task[0][:2]
    path = export_onnx(smooth, tmp_path / "prn.onnx", batch_size=2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps, scores = session.run(None, {"image": smooth.backbone.preprocess(images).numpy()})
    reference = smooth.predict(images)
    assert maps.shape == reference.anomaly_maps.shape
    assert np.abs(maps - reference.anomaly_maps).max() <= 1e-4
    assert np.abs(scores - reference.image_scores).max() <= 1e-4
    tiled = PRN(replace(smooth.config, tile_aspect=1.5), backbone=trained.backbone)
    # tile_aspect is on by default: only a model whose normal images were cut into tiles (it
    # blurs after stitching) is refused, in one sentence
    tiled.heads, tiled.model_info = trained.heads, {**trained.model_info, "normal_tiles": int(trained.model_info["normal_images"]) + 3}
    with pytest.raises(ConfigError, match="cannot export this PRN model to ONNX: it blurs its maps"):
        export_onnx(tiled, tmp_path / "tiled.onnx")


def _mirrored_maps(detector, images, dims: tuple[int, ...]) -> torch.Tensor:
    """The detector's unflipped maps of the images flipped along ``dims`` (-1 left-right, -2 up-down), flipped back."""
    axes = [{-1: 1, -2: 0}[d] for d in dims]
    mirrored = [np.ascontiguousarray(np.flip(image, axis=axes)) for image in images]
    return detector.maps_of(detector.map_heads(), mirrored).flip(dims)


def _sharing(detector, **changes) -> PRN:
    """``detector``'s trained models under other prediction settings."""
    other = PRN(replace(detector.config, **changes), backbone=detector.backbone)
    other.heads, other.final_head, other.model_info, other.held_out_scores = (
        detector.heads, detector.final_head, detector.model_info, detector.held_out_scores)
    return other


def test_map_flips_average_the_mirrored_views_and_leave_the_verdict_alone(trained, task, tmp_path):
    """map_flips="h": the maps are the mean of the image's map and its mirror's map flipped back
    ("hv": the four views); image scores and masks follow the maps; the verdict (statistic, cut,
    decisions) is the unflipped one, with a final model and without (cross-fitted folds); training
    and its calibration scores do not read it; saved and loaded, older files load with "none"."""
    normals, anomalies, tests = task
    images = [image for image, _ in tests] + normals[:3]
    config = tiny_config(cross_fit_folds=0, epochs=3)  # held-back share: a final model and a held-back one
    plain = PRN(config, backbone=FakeBackbone()).fit(normals, anomalies)
    for detector in (plain, trained):
        reference = detector.predict(images)
        base = torch.from_numpy(reference.anomaly_maps)
        h, v, hv = (_mirrored_maps(detector, images, dims) for dims in ((-1,), (-2,), (-2, -1)))
        assert (h - base).abs().max() > 1e-3  # the mirror's map differs: the average is not the map itself
        for flips, expected in (("h", (base + h) / 2), ("hv", (base + h + v + hv) / 4)):
            flipped = _sharing(detector, map_flips=flips)
            result = flipped.predict(images)
            assert np.allclose(result.anomaly_maps, expected.numpy(), atol=1e-6)
            assert np.allclose(flipped.anomaly_maps(images).numpy(), expected.numpy(), atol=1e-6)
            assert np.allclose(result.image_scores, top_k_mean(expected, config.top_k).numpy(), atol=1e-6)
            assert np.allclose(result.decision_scores(), reference.decision_scores(), atol=1e-6)
            assert result.threshold == reference.threshold and np.array_equal(result.is_anomalous, reference.is_anomalous)
            flagged = result.is_anomalous if detector.final_head is not None else np.ones(len(images), bool)
            assert not result.masks[~flagged].any()  # with a final model: masks only on flagged parts, as without flips
            assert np.array_equal(result.masks[flagged], result.anomaly_maps[flagged] > result.threshold)
            assert result.masks.any()
    hv_trained = PRN(replace(config, map_flips="hv"), backbone=FakeBackbone()).fit(normals, anomalies)
    assert np.array_equal(hv_trained.held_out_scores, plain.held_out_scores)
    hv_trained.save(tmp_path / "model")
    loaded = PRN.load(tmp_path / "model", backbone=FakeBackbone())
    assert loaded.config.map_flips == "hv"
    assert np.allclose(loaded.predict(images).anomaly_maps, _sharing(plain, map_flips="hv").predict(images).anomaly_maps, atol=1e-6)
    data = config.to_json()
    data.pop("map_flips")
    assert PRNConfig.from_dict(data).map_flips == "none" and PRNConfig().map_flips == "none"
    with pytest.raises(ConfigError, match="map_flips"):
        tiny_config(map_flips="v")


def test_onnx_export_averages_the_flipped_views_like_the_detector(trained, task, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from defectscope.methods.prn import export_onnx

    flipped = _sharing(trained, map_flips="hv")
    images = [image for image, _ in task[2]] + task[0][:2]
    path = export_onnx(flipped, tmp_path / "prn.onnx", batch_size=2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps, scores = session.run(None, {"image": flipped.backbone.preprocess(images).numpy()})
    reference = flipped.predict(images)
    assert np.abs(reference.anomaly_maps - trained.predict(images).anomaly_maps).max() > 1e-3
    assert np.abs(maps - reference.anomaly_maps).max() <= 1e-4
    assert np.abs(scores - reference.image_scores).max() <= 1e-4
    with pytest.raises(ConfigError, match="without its backbone: its maps average mirrored views"):
        export_onnx(flipped, tmp_path / "features.onnx", include_backbone=False)
