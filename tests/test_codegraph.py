"""CoDeGraph: burnout statistic, graph, communities, filtered re-scoring, end to end.

The end-to-end tests run the embedded EfficientNet-Lite0 backbone at 128 px on 24 synthetic
texture images (about 10 s per batch on two loaded cores); the others use small hand-built
distance tables.
"""

from __future__ import annotations

import dataclasses

import math

import numpy as np
import pytest
import torch

from defectscope.data.synthetic import synthetic_images
from defectscope.errors import ConfigError
from defectscope.methods.codegraph import (
    CoDeGraph,
    CoDeGraphConfig,
    excluded_interval_mean,
    find_communities,
    graph_picture,
    image_graph,
    linking_patches,
    max_support,
    neighbour_burnout,
)
from defectscope.methods.musc import MuScConfig, interval_bounds, interval_mean
from defectscope.metrics import pixel_metrics

N_IMAGES = 24
RECURRING = tuple(range(2, 18, 2))


def _table(n: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    table = 0.5 + 0.1 * torch.rand(n, n, length, generator=generator)
    table[torch.arange(n), torch.arange(n)] = math.inf
    return table


def test_burnout_finds_the_jump_and_its_supporters() -> None:
    n, length = 20, 30
    table = _table(n, length)
    group = [3, 7, 11, 15]
    for i in group:
        table[i, :, 5] += 0.3
        for j in group:
            if i != j:
                table[i, j, 5] = 0.01
    burnout = neighbour_burnout(table, max_support(n, 0.5))
    assert burnout.ratio[group, 5].min() > 10 * burnout.ratio[:, :5].median()
    assert burnout.support[group, 5].tolist() == [3, 3, 3, 3]
    for i in group:
        assert sorted(burnout.neighbours[i, 5, :3].tolist()) == sorted(set(group) - {i})
    linking = linking_patches(burnout, threshold=20.0, score_quantile=0.99)
    assert linking.sum() == 4
    weights = image_graph(burnout, linking)
    assert np.array_equal(weights, weights.T)
    assert weights[3, 7] == 2 and weights[0].sum() == 0
    assert find_communities(weights, 0.5) == [group]


def test_find_communities_drops_weak_groups() -> None:
    weights = np.zeros((6, 6))
    weights[0, 1] = weights[1, 0] = 1.0
    weights[2, 3] = weights[3, 2] = weights[2, 4] = weights[4, 2] = weights[3, 4] = weights[4, 3] = 9.0
    assert find_communities(weights, 0.5, min_pair_weight=4.0) == [[2, 3, 4]]
    assert find_communities(np.zeros((5, 5)), 0.5) == []


def test_excluded_interval_mean_matches_brute_force() -> None:
    n, length = 12, 7
    table = _table(n, length, seed=1)
    nothing = torch.zeros(n, n, dtype=torch.bool)
    assert torch.equal(excluded_interval_mean(table, nothing), interval_mean(table))
    excluded = nothing.clone()
    excluded[0, [1, 2, 3]] = True
    scores = excluded_interval_mean(table, excluded, 0.0, 0.3)
    references = [j for j in range(1, n) if j not in (1, 2, 3)]
    start, end = interval_bounds(len(references), 0.0, 0.3)
    expected = table[0, references].sort(dim=0).values[start:end].mean(dim=0)
    assert torch.allclose(scores[0], expected)
    assert torch.equal(scores[1:], interval_mean(table)[1:])


def test_pipeline_builds_codegraph_with_method_options() -> None:
    from defectscope.pipeline import RunOptions, build_detector

    detector = build_detector(RunOptions(method="codegraph", image_size=128, method_options={"burnout_threshold": 25.0}))
    assert isinstance(detector, CoDeGraph)
    assert detector.config.burnout_threshold == 25.0 and detector.config.image_size == 128


def test_graph_picture_is_a_png() -> None:
    weights = np.zeros((6, 6))
    weights[1, 4] = weights[4, 1] = 3.0
    assert graph_picture(weights, [[1, 4]], 0).startswith(b"\x89PNG")
    assert graph_picture(np.zeros((3, 3)), []).startswith(b"\x89PNG")


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        CoDeGraph(CoDeGraphConfig(resolution=0.0))
    with pytest.raises(ConfigError):
        CoDeGraph(CoDeGraphConfig(max_support_fraction=1.5))
    with pytest.raises(ConfigError):
        max_support(2, 0.5)
    with pytest.raises(ConfigError):
        CoDeGraph(MuScConfig())


@pytest.fixture(scope="module")
def detector() -> CoDeGraph:
    return CoDeGraph(CoDeGraphConfig(backbone="efficientnet-lite0", image_size=128))


@pytest.mark.parametrize("interval", [(0.0, 0.3), None], ids=["authors-interval", "default-interval"])
def test_recurring_defect_is_found_and_grouped(detector: CoDeGraph, interval) -> None:
    """With the authors' MSM interval [0, 0.3) MuSc misses a defect on a third of the batch (its
    copies vouch for each other) and CoDeGraph recovers it; with the default [0.5, 1) MuSc's
    interval already skips the nearest references, and CoDeGraph still groups the copies."""
    if interval is not None:
        detector = CoDeGraph(dataclasses.replace(detector.config, lower=interval[0], upper=interval[1]))
    images, masks = synthetic_images(N_IMAGES, kind="texture", size=128, defective=RECURRING, defect="recurring", seed=0)
    paths = [f"img{i:02d}.png" for i in range(N_IMAGES)]
    scores = detector.analyse(images)
    result = detector.result(scores, paths)
    truth = np.stack(masks)
    musc_maps = detector.maps_from_patch_scores(scores.musc_patch_scores, scores.grid).numpy()
    musc_ap = pixel_metrics(musc_maps, truth)["pixel_ap"]
    codegraph_ap = pixel_metrics(result.anomaly_maps, truth)["pixel_ap"]
    if interval is not None:
        assert musc_ap < 0.1
    assert codegraph_ap > 0.5
    defective = np.zeros(N_IMAGES, dtype=bool)
    defective[list(RECURRING)] = True
    assert result.image_scores[defective].min() > result.image_scores[~defective].max()
    communities = result.extras["communities"]
    assert len(communities) == 1
    assert communities[0]["members"] == [paths[i] for i in RECURRING]
    assert communities[0]["image_png"].startswith(b"\x89PNG")
    assert result.settings["method"] == "codegraph"


def test_no_community_without_recurrence(detector: CoDeGraph) -> None:
    images, masks = synthetic_images(N_IMAGES, kind="texture", size=128, defective=(3, 11, 17), seed=0)
    scores = detector.analyse(images)
    result = detector.result(scores)
    assert result.extras["communities"] == []
    assert torch.equal(scores.patch_scores, scores.musc_patch_scores)
    assert pixel_metrics(result.anomaly_maps, np.stack(masks))["pixel_ap"] > 0.4


def test_score_without_supporters_matches_brute_force() -> None:
    n, length = 15, 9
    table = _table(n, length, seed=2)
    burnout = neighbour_burnout(table, max_support(n, 0.5), 0.0, 0.3)
    for i in range(n):
        for p in range(length):
            k = int(burnout.support[i, p])
            ordered = table[i, :, p].sort().values[: n - 1]
            start, end = interval_bounds(n - 1 - k, 0.0, 0.3)
            assert burnout.unsupported[i, p] == pytest.approx(float(ordered[k + start : k + end].mean()), abs=1e-6)
    assert torch.allclose(burnout.score, interval_mean(table))


def test_a_community_is_confirmed_only_when_its_members_stand_out_once_separated() -> None:
    from defectscope.methods.codegraph import confirmed

    musc = torch.tensor([[0.1, 0.2], [0.2, 0.3], [0.3, 0.1], [0.2, 0.2], [0.1, 0.1], [0.15, 0.1]])
    filtered = musc.clone()
    # members 3, 4, 5: outside image scores are 0.2, 0.3, 0.3 -> 90th percentile 0.3
    filtered[3:] = torch.tensor([[0.9, 0.1], [0.1, 0.8], [0.5, 0.4]])
    assert confirmed([3, 4, 5], musc, filtered, quantile=0.9, share=0.9)
    filtered[5] = torch.tensor([0.25, 0.2])  # one of three members stays ordinary
    assert not confirmed([3, 4, 5], musc, filtered, quantile=0.9, share=0.9)
    assert confirmed([3, 4, 5], musc, filtered, quantile=0.9, share=0.6)
    assert not confirmed(list(range(6)), musc, filtered, quantile=0.9, share=0.0)  # nobody outside


def test_given_groups_replace_detection_and_bad_groups_fail() -> None:
    images, _ = synthetic_images(6, size=64, seed=3, defective=(0, 1, 2), defect="recurring")
    detector = CoDeGraph(CoDeGraphConfig(image_size=64))
    scores = detector.analyse(images, groups=[[0, 1, 2]])
    assert scores.communities == [[0, 1, 2]]
    assert torch.equal(scores.patch_scores[3:], scores.musc_patch_scores[3:])
    assert not torch.equal(scores.patch_scores[:3], scores.musc_patch_scores[:3])
    with pytest.raises(ConfigError, match="outside the batch"):
        detector.analyse(images, groups=[[0, 9]])
