"""Pose- and look-robust MuSc options (defectscope.methods.pose) and the pose proxy's warp."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defectscope.errors import ConfigError
from defectscope.methods import pose
from defectscope.methods.musc import MuSc, MuScConfig, interval_mean, mutual_scores, nearest_similarities, similarities_to_distances

pytestmark = [pytest.mark.filterwarnings("ignore:mutual scoring of only"), pytest.mark.filterwarnings("ignore:CoDeGraph of only")]


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _turn_features(z: torch.Tensor, grid: tuple[int, int], turns: int, mirrored: bool) -> torch.Tensor:
    maps = z.reshape(z.shape[0], *grid, z.shape[-1])
    if mirrored:
        maps = torch.flip(maps, dims=(2,))
    return torch.rot90(maps, turns, dims=(1, 2)).reshape(z.shape)


def test_turned_references_of_an_equivariant_network_change_nothing():
    # a network whose features only move with the image: every copy holds the same patch vectors
    grid = (3, 3)
    plain = _unit(5, 9, 4, seed=0)
    group = pose.turn_group(8, square=True)
    turned = [_turn_features(plain, grid, t, m) for t, m in group]
    assert torch.allclose(pose.rotated_similarities(plain, turned, group, grid), nearest_similarities(plain, workers=1))


def test_turned_references_take_the_best_copy_in_both_directions():
    grid = (2, 2)
    plain = _unit(4, 4, 3, seed=1)
    group = pose.turn_group(4, square=True)
    turned = [plain] + [_unit(4, 4, 3, seed=10 + g) for g in range(1, 4)]
    table = pose.rotated_similarities(plain, turned, group, grid)
    per_turn = pose.rotated_similarities(plain, turned, group, grid, per_turn=True)
    assert torch.allclose(per_turn.amax(dim=0), table)
    for i in range(4):
        assert torch.isinf(table[i, i]).all()
        for j in range(i + 1, 4):
            forward = torch.stack([(plain[i] @ turned[g][j].T).amax(dim=1) for g in range(4)]).amax(dim=0)
            assert torch.allclose(table[i, j], forward)
            # j against i: j's copy g against unturned i, moved back onto j's grid
            backward = torch.stack([
                pose.unturn_map((plain[i] @ turned[g][j].T).amax(dim=0), grid, *group[g]) for g in range(4)
            ]).amax(dim=0)
            assert torch.allclose(table[j, i], backward)


def test_unturn_map_inverts_every_turn_and_mirror():
    grid = (2, 3)
    values = torch.arange(6.0).reshape(2, 3)
    for turns in range(4):
        for mirrored in (False, True):
            moved = torch.flip(values, dims=(1,)) if mirrored else values
            moved = torch.rot90(moved, turns, dims=(0, 1))
            image = pose.turn_image(values.numpy(), turns, mirrored)
            assert np.array_equal(image, moved.numpy())
            assert torch.equal(pose.unturn_map(moved.reshape(1, -1), grid, turns, mirrored), values.reshape(1, -1))
    assert pose.turn_group(4, square=False) == [(0, False), (2, False), (0, True), (2, True)]


def test_self_similarities_skip_the_neighbourhood():
    # 1 x 5 grid: patch 0 equals patch 1 (inside radius 1) and patch 4 nearly
    a, b, c = torch.eye(3)
    z = torch.stack([a, a, b, c, F.normalize(a + 0.1 * b, dim=0)])[None]
    own = pose.self_similarities(z, (1, 5), radius=1)
    assert own[0, 0] == pytest.approx(float(F.normalize(a + 0.1 * b, dim=0)[0]))
    assert own[0, 2] == pytest.approx(float(F.normalize(a + 0.1 * b, dim=0)[1]))
    assert torch.isinf(pose.self_similarities(z, (1, 5), radius=4)).all()


def test_scores_from_tables_without_options_is_mutual_scoring():
    sets = [_unit(9, 16, 5, seed=3), _unit(9, 4, 5, seed=4)]
    tables = [nearest_similarities(s, workers=1) for s in sets]
    embeddings = _unit(9, 8, seed=5)
    plain, facts = pose.scores_from_tables(tables, (4, 4), embeddings, 0.5, 1.0)
    from defectscope.methods.musc import to_finest_grid

    expected = (mutual_scores(sets[0], 0.5, 1.0) + to_finest_grid(mutual_scores(sets[1], 0.5, 1.0), (4, 4))) / 2
    assert torch.allclose(plain, expected, atol=1e-6)
    assert facts == {"self_term_used": False}
    everyone, _ = pose.scores_from_tables(tables, (4, 4), embeddings, 0.5, 1.0, nearest_images=8)
    assert torch.allclose(everyone, expected, atol=1e-6)
    few, _ = pose.scores_from_tables(tables, (4, 4), embeddings, 0.0, 1.0, nearest_images=3)
    keep = pose.nearest_image_mask(embeddings, 3)
    assert keep.sum(dim=1).eq(3).all() and not keep.diagonal().any()
    distances = similarities_to_distances(tables[0])
    manual = torch.stack([distances[i][keep[i]].mean(dim=0) for i in range(9)])
    assert not torch.allclose(few, plain)
    assert torch.allclose(
        pose.scores_from_tables(tables[:1], (4, 4), embeddings, 0.0, 1.0, nearest_images=3)[0], manual, atol=1e-6
    )
    assert torch.allclose(interval_mean(distances, 0.5, 1.0), mutual_scores(sets[0], 0.5, 1.0), atol=1e-6)


def test_self_term_gate_follows_the_data():
    # patch (0, 0): high mutual score, explained by its own image; (0, 3): the opposite
    mutual = torch.tensor([[2.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    own = torch.tensor([[0.5, 0.5, 0.5, 2.0], [0.5, 0.5, 0.5, 0.5]])  # rescaled by 2 (medians 1 / 0.5)
    assert torch.equal(pose.mix_self(mutual, own, "min"), torch.ones(2, 4))
    assert pose.mix_self(mutual, own, "mean")[0].tolist() == [1.5, 1.0, 1.0, 2.5]
    assert pose.own_image_ratio(own, torch.full((2, 4), 0.5)) == pytest.approx(1.0)
    assert pose.own_image_ratio(own * 3, torch.full((2, 4), 0.5)) == pytest.approx(3.0)


def test_top_share_image_score():
    maps = torch.zeros(2, 10, 10)
    maps[0, 0, :5] = 1.0
    maps[1, 0, 0] = 2.0
    assert torch.equal(pose.top_share_scores(maps, 0.0), torch.tensor([1.0, 2.0]))
    assert torch.allclose(pose.top_share_scores(maps, 0.05), torch.tensor([1.0, 0.4]))


@pytest.mark.parametrize(
    "key,value",
    [("rotations", 3), ("self_term", "maybe"), ("self_mix", "max"), ("self_radius", -1), ("self_gate", 0.0),
     ("nearest_images", 0), ("image_top", 1.0)],
)
def test_pose_options_are_validated(key, value):
    with pytest.raises(ConfigError, match=key):
        MuScConfig(**{key: value})


def _turned_stripes(count: int, size: int, seed: int) -> list[np.ndarray]:
    """Stripes at a random angle per image (a texture lying at any angle)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    images = []
    for _ in range(count):
        angle = rng.uniform(0, np.pi)
        value = 128 + 70 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / 8 + rng.uniform(0, 6.3))
        value += rng.normal(0, 5, value.shape)
        images.append(np.repeat(np.clip(value, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2))
    return images


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many small tensor ops: one thread is fastest and steady on a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def backbone96():
    return MuSc(MuScConfig(image_size=96)).backbone


def test_pose_options_find_a_spot_on_a_texture_at_random_angles(backbone96):
    images = _turned_stripes(10, 96, seed=2)
    yy, xx = np.mgrid[0:96, 0:96]
    images[6][(yy - 40) ** 2 + (xx - 55) ** 2 <= 36] = 20
    for options in ({"rotations": 4}, {"self_term": "on"}, {"rotations": 2, "self_term": "auto", "image_top": 0.01}):
        detector = MuSc(MuScConfig(image_size=96, **options), backbone=backbone96)
        result = detector.predict(images)
        assert int(np.argmax(result.image_scores)) == 6, options
        assert result.anomaly_maps.shape == (10, 96, 96)
        peak = np.unravel_index(np.argmax(result.anomaly_maps[6]), (96, 96))
        assert abs(peak[0] - 40) <= 12 and abs(peak[1] - 55) <= 12
    assert result.extras["batch_facts"]["reference_copies"] == 2
    assert result.extras["batch_facts"]["own_image_ratio"] > 0


def test_pose_options_refuse_the_reference_bank():
    images = _turned_stripes(5, 64, seed=3)
    with pytest.raises(ConfigError, match="rotations"):
        MuSc(MuScConfig(image_size=64, rotations=2, max_references=1)).predict(images)


def test_proxy_warp_keeps_size_fills_corners_and_keeps_masks_binary():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from pose_proxy import draw_pose, warp

    flat = np.full((40, 60, 3), 77, dtype=np.uint8)
    for seed in range(5):
        angle, scale, shift = draw_pose(np.random.default_rng(seed))
        assert 0.8 <= scale <= 1.25 and max(map(abs, shift)) <= 0.08
        assert np.array_equal(warp(flat, angle, scale, shift, "reflect"), flat)
        mask = np.zeros((40, 60), dtype=np.uint8)
        mask[10:20, 30:45] = 255
        moved = warp(mask, angle, scale, shift, "reflect", nearest=True)
        assert moved.shape == (40, 60) and set(np.unique(moved)) <= {0, 255} and moved.any()
    ramp = np.tile(np.arange(50, dtype=np.uint8), (50, 1))
    quarter = warp(ramp, 90.0, 1.0, (0.0, 0.0), "edge")
    # +90 degrees is a quarter turn clockwise on screen (rows run downwards)
    assert np.abs(quarter.astype(int) - np.rot90(ramp, -1).astype(int)).max() <= 1


def test_codegraph_takes_turned_references_and_refuses_the_musc_only_options(backbone96):
    from defectscope.methods.codegraph import CoDeGraph, CoDeGraphConfig

    images = _turned_stripes(6, 64, seed=4)
    scores = CoDeGraph(CoDeGraphConfig(image_size=96, rotations=2), backbone=backbone96).analyse(images)
    assert scores.patch_scores.shape[0] == 6 and torch.isfinite(scores.patch_scores).all()
    with pytest.raises(ConfigError, match="MuSc options"):
        CoDeGraph(CoDeGraphConfig(image_size=96, self_term="on"), backbone=backbone96).analyse(images)


def test_looks_gate_switches_the_interval_only_when_the_embeddings_disagree():
    same = F.normalize(torch.ones(6, 4) + 0.01 * torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    looks = torch.cat([same[:3], -same[3:]])
    assert pose.embedding_agreement(same) > 0.99
    assert pose.embedding_agreement(looks) < 0.0
    off = MuScConfig(looks_gate=None)
    assert pose.batch_interval(off, looks)[:2] == (off.lower, off.upper)
    gated = MuScConfig(looks_gate=0.89)
    assert pose.batch_interval(gated, same)[:2] == (gated.lower, gated.upper)
    lower, upper, facts = pose.batch_interval(gated, looks)
    assert (lower, upper) == (0.0, 0.3) and facts["several_looks"] is True
    with pytest.raises(ConfigError, match="looks_gate"):
        MuScConfig(looks_gate=1.5)


def test_looks_gate_reaches_the_default_path(backbone96):
    images = _turned_stripes(6, 64, seed=5)
    result = MuSc(MuScConfig(image_size=96, looks_gate=1.0), backbone=backbone96).predict(images)
    assert result.extras["several_looks"] is True and result.extras["interval"] == [0.0, 0.3]
    off = MuSc(MuScConfig(image_size=96, looks_gate=None), backbone=backbone96).predict(images)
    assert "several_looks" not in off.extras
    assert MuScConfig().looks_gate == 0.89
