"""MuSc math: LNAMD, mutual scoring and RsCIN against straightforward references."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defectscope.errors import ConfigError
from defectscope.methods.musc import MuScConfig, interval_bounds, lnamd, mutual_scores, rscin


def reference_mutual_scores(features: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """The authors' formulation: every ordered pair separately, explicit distances, float64."""
    z = features.double()
    n, length, _ = z.shape
    scores = torch.empty(n, length, dtype=torch.float64)
    m = n - 1
    start, end = int(math.floor(lower * m)), int(math.floor(upper * m))
    start = min(start, m - 1)
    end = max(min(end, m), start + 1)
    for i in range(n):
        per_image = []
        for j in range(n):
            if j != i:
                per_image.append(torch.cdist(z[i], z[j]).min(dim=1).values)
        ordered = torch.stack(per_image, dim=1).sort(dim=1).values
        scores[i] = ordered[:, start:end].mean(dim=1)
    return scores


@pytest.mark.parametrize(
    "n,length,channels,lower,upper",
    [(2, 5, 3, 0.0, 0.3), (3, 16, 8, 0.0, 0.3), (7, 9, 4, 0.0, 0.5), (12, 20, 16, 0.1, 0.4), (25, 12, 6, 0.0, 0.3), (10, 30, 32, 0.5, 1.0)],
)
def test_mutual_scores_match_per_pair_reference(n, length, channels, lower, upper):
    generator = torch.Generator().manual_seed(n * 1000 + length)
    features = F.normalize(torch.randn(n, length, channels, generator=generator), dim=-1)
    fast = mutual_scores(features, lower, upper)
    slow = reference_mutual_scores(features, lower, upper)
    assert fast.shape == (n, length)
    assert torch.allclose(fast.double(), slow, atol=1e-4, rtol=0)


def test_mutual_scores_duplicate_images_score_zero_and_outlier_high():
    generator = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(1, 10, 8, generator=generator), dim=-1).repeat(6, 1, 1)
    base[3, 4] = F.normalize(torch.randn(8, generator=generator), dim=0)
    scores = mutual_scores(base)
    assert torch.isfinite(scores).all()
    assert scores[3, 4] == scores.max()
    others = torch.ones_like(scores, dtype=torch.bool)
    others[3, 4] = False
    assert scores[others].max() < 1e-3


def test_interval_bounds_small_batches_use_at_least_one_value():
    assert interval_bounds(1, 0.0, 0.3) == (0, 1)
    assert interval_bounds(3, 0.0, 0.3) == (0, 1)
    assert interval_bounds(10, 0.0, 0.3) == (0, 3)
    assert interval_bounds(9, 0.5, 0.6) == (4, 5)
    assert interval_bounds(4, 0.9, 1.0) == (3, 4)


def test_mutual_scores_refuses_single_image_and_bad_interval():
    with pytest.raises(ConfigError, match="at least 2 images"):
        mutual_scores(torch.ones(1, 4, 3))
    with pytest.raises(ConfigError, match="interval"):
        mutual_scores(torch.ones(3, 4, 3), 0.5, 0.2)


def test_lnamd_hand_computed_case():
    feature_map = torch.arange(2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    r1, r3 = lnamd(feature_map, (1, 3))
    standardised = (feature_map - feature_map.mean()) / feature_map.std(unbiased=False)
    centre_channels = standardised[0, :, 1, 1]
    assert torch.allclose(r1[0, 4], F.normalize(centre_channels, dim=0), atol=1e-5)
    corner_mean = standardised[0, :, :2, :2].mean(dim=(1, 2))
    assert torch.allclose(r3[0, 0], F.normalize(corner_mean, dim=0), atol=1e-5)
    centre_mean = standardised[0].mean(dim=(1, 2))
    assert torch.allclose(r3[0, 4], F.normalize(centre_mean, dim=0), atol=1e-5)
    assert r3.shape == (1, 9, 2)
    assert torch.allclose(r3.norm(dim=-1), torch.ones(1, 9))


def test_lnamd_rejects_even_degree():
    with pytest.raises(ConfigError, match="odd"):
        lnamd(torch.ones(1, 2, 3, 3), (2,))


def test_rscin_hand_computed_case():
    scores = np.array([0.0, 1.0, 2.0, 4.0])
    embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    s = scores / 4.0
    # row-wise similarities: 0:[1,.8,0,.6] 1:[.8,1,.6,.96] 2:[0,.6,1,.8] 3:[.6,.96,.8,1]
    k2 = np.array([(1 * s[0] + 0.8 * s[1]) / 1.8, (1 * s[1] + 0.96 * s[3]) / 1.96, (1 * s[2] + 0.8 * s[3]) / 1.8, (1 * s[3] + 0.96 * s[1]) / 1.96])
    expected = (s + k2) / 2
    assert np.allclose(rscin(scores, embeddings, (1, 2)), expected, atol=1e-12)
    assert np.allclose(rscin(scores, embeddings, (1,)), s)


def test_rscin_constant_scores_and_large_k():
    out = rscin(np.ones(3), np.eye(3), (1, 2, 10))
    assert np.all(np.isfinite(out)) and np.allclose(out, 0.0)


def test_config_validation():
    with pytest.raises(ConfigError):
        MuScConfig(degrees=(2,))
    with pytest.raises(ConfigError):
        MuScConfig(lower=0.4, upper=0.3)


def test_to_finest_grid_upsamples_square_score_maps():
    from defectscope.methods.musc import to_finest_grid

    coarse = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    fine = to_finest_grid(coarse, (3, 3)).view(3, 3)
    assert torch.allclose(fine, torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]]))
    assert to_finest_grid(coarse, (2, 2)) is coarse


def test_native_and_common_grids_both_score_a_planted_defect():
    from defectscope.data.synthetic import synthetic_images
    from defectscope.methods.musc import MuSc

    images, masks = synthetic_images(8, kind="texture", size=96, defective=(2,), seed=4, defect="blotch")
    for native in (True, False):
        result = MuSc(MuScConfig(image_size=96, native_grids=native)).predict(images)
        assert int(np.argmax(result.image_scores)) == 2
        assert result.anomaly_maps.shape == (8, 96, 96)


def test_reference_scores_equal_mutual_scoring_leave_one_out():
    from defectscope.methods.musc import reference_scores

    generator = torch.Generator().manual_seed(11)
    features = F.normalize(torch.randn(9, 14, 6, generator=generator), dim=-1)
    batch = mutual_scores(features, 0.0, 0.3)
    for i in (0, 4, 8):
        others = torch.cat([features[:i], features[i + 1:]])
        single = reference_scores(features[i:i + 1], others, 0.0, 0.3)
        assert torch.allclose(single[0], batch[i], atol=1e-5)
    many = reference_scores(features[:3], features[3:], 0.0, 0.5)
    assert many.shape == (3, 14)
    bank = features[3:]
    for lower, upper in ((0.0, 0.3), (0.3, 0.9)):
        dropped = reference_scores(features[:3], bank, lower, upper, drop_one=True)
        brute = torch.stack([
            reference_scores(features[:3], torch.cat([bank[:j], bank[j + 1:]]), lower, upper) for j in range(len(bank))
        ]).mean(dim=0)
        assert torch.allclose(dropped, brute, atol=1e-5)
    with pytest.raises(ConfigError, match="same grid"):
        reference_scores(features[:, :10], features, 0.0, 0.3)


def test_zero_shot_verdict_flags_the_planted_defect_and_masks_agree():
    from defectscope.data.synthetic import synthetic_images
    from defectscope.methods.musc import MuSc

    images, _ = synthetic_images(12, kind="texture", size=96, defective=(3,), seed=4, defect="blotch")
    result = MuSc(MuScConfig(image_size=96)).predict(images)
    assert result.is_anomalous.dtype == bool and result.is_anomalous.shape == (12,)
    assert result.is_anomalous[3] and result.is_anomalous.sum() <= 2
    raw = np.asarray(result.extras["raw_image_scores"])
    assert np.array_equal(result.is_anomalous, raw > result.threshold)
    assert np.array_equal(result.masks.any(axis=(1, 2)), result.is_anomalous)
    assert "label-free" in result.threshold_rule


def test_reference_mode_scores_against_good_images():
    from defectscope.data.synthetic import synthetic_images
    from defectscope.methods.musc import MuSc

    good, _ = synthetic_images(6, kind="texture", size=96, seed=5)
    query, masks = synthetic_images(4, kind="texture", size=96, defective=(1,), seed=6, defect="blotch")
    detector = MuSc(MuScConfig(image_size=96)).calibrate(good, 0.2)
    result = detector.predict(query, [f"q{i}.png" for i in range(4)])
    assert int(np.argmax(result.image_scores)) == 1 and result.is_anomalous[1]
    assert np.allclose(result.image_scores, result.anomaly_maps.reshape(4, -1).max(axis=1))
    assert result.threshold_rule.startswith("conformal on 6 good images")
    assert result.settings["reference_images"] == 6
    with pytest.raises(ConfigError, match="needs at least 19 good images"):
        MuSc(MuScConfig(image_size=96)).calibrate(good, 0.05)


def test_a_tiled_batch_records_every_tile_positions_facts():
    """With tiles each tile position is scored as its own batch and decides its own MSM interval
    (the several-looks gate): the Result's batch_facts keep every position's facts, row by row,
    not the last position's alone, and they are the facts of scoring that position's crops."""
    from defectscope.data.synthetic import synthetic_images
    from defectscope.methods import pose
    from defectscope.methods.musc import MuSc, crop_tile

    # top half: one texture look; bottom half: textures and objects alternating (several looks)
    textures, _ = synthetic_images(12, kind="texture", size=64, seed=5)
    others, _ = synthetic_images(6, kind="texture", size=64, seed=3)
    objects, _ = synthetic_images(6, kind="object", size=64, seed=4)
    mixed = [image for pair in zip(others, objects) for image in pair]
    images = [np.concatenate([np.concatenate([top, top], axis=1), np.concatenate([low, low], axis=1)]) for top, low in zip(textures, mixed)]
    probe = MuSc(MuScConfig(image_size=64, tiles=2))
    positions = [(0, 0), (0, 1), (1, 0), (1, 1)]
    crops = {p: [crop_tile(image, 2, probe.config.tile_overlap, *p) for image in images] for p in positions}
    agreements = [pose.embedding_agreement(probe.feature_sets(crops[p])[2]) for p in positions]
    assert min(agreements[:2]) > max(agreements[2:])
    config = MuScConfig(image_size=64, tiles=2, looks_gate=0.5 * (max(agreements[2:]) + min(agreements[:2])))
    result = MuSc(config).predict(images)
    recorded = result.extras["batch_facts"]
    assert [facts["several_looks"] for facts in recorded["tiles"]] == [False, False, True, True]
    assert "interval" not in recorded  # no one position's interval stands for the batch's
    one = MuSc(replace(config, tiles=1))
    expected = [{"tile": list(p), **one.patch_scores(crops[p]).facts} for p in positions]
    assert recorded["tiles"] == expected and result.extras["tiles"] == expected
    # no gate: nothing decided, nothing recorded
    assert "tiles" not in MuSc(replace(config, looks_gate=None)).predict(images).extras["batch_facts"]
