"""Reference banks: bank scoring against brute force, the exact special case, chunked features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defectscope.errors import ConfigError
from defectscope.methods import bank
from defectscope.methods.bank import bank_scores, merge_topk, nearest_topk, reference_sample, self_positions, use_bank
from defectscope.methods.featurestore import chunked_feature_sets
from defectscope.methods.musc import MuSc, MuScConfig, mutual_scores


def brute_force(queries: torch.Tensor, references: torch.Tensor, skip: list[int], lower: float, upper: float) -> torch.Tensor:
    """Explicit distances to every reference (float64), self left out, sorted, interval mean."""
    scores = torch.empty(queries.shape[0], queries.shape[1], dtype=torch.float64)
    for i, query in enumerate(queries.double()):
        per_reference = [torch.cdist(query, ref.double()).min(dim=1).values for j, ref in enumerate(references) if j != skip[i]]
        ordered = torch.stack(per_reference, dim=1).sort(dim=1).values
        m = len(per_reference)
        start = min(int(math.floor(lower * m)), m - 1)
        end = max(min(int(math.floor(upper * m)), m), start + 1)
        scores[i] = ordered[:, start:end].mean(dim=1)
    return scores


def unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("lower,upper", [(0.0, 0.3), (0.1, 0.5), (0.0, 1.0)])
def test_bank_scores_match_brute_force_with_self_exclusion(lower, upper):
    batch = unit(14, 12, 6, seed=1)
    chosen = [1, 4, 5, 9, 13]
    skip = self_positions(range(14), chosen)
    fast = bank_scores(batch, batch[chosen], lower, upper, self_index=skip)
    slow = brute_force(batch, batch[chosen], skip.tolist(), lower, upper)
    assert torch.allclose(fast.double(), slow, atol=1e-5)


def test_external_bank_uses_every_reference():
    queries, references = unit(3, 10, 4, seed=2), unit(7, 15, 4, seed=3)
    fast = bank_scores(queries, references)
    assert torch.allclose(fast.double(), brute_force(queries, references, [-1] * 3, 0.0, 0.3), atol=1e-5)


def test_bank_of_the_whole_batch_is_exact_mutual_scoring():
    batch = unit(20, 16, 8, seed=4)
    exact = mutual_scores(batch)
    assert torch.allclose(bank_scores(batch, batch, self_index=torch.arange(20)), exact, atol=1e-6)


def test_running_topk_reduction_and_merge(monkeypatch):
    monkeypatch.setattr(bank, "BUFFER_ROWS", 3)
    monkeypatch.setattr(bank, "BLOCK_BYTES", 1)
    queries, references = unit(4, 9, 5, seed=5), unit(23, 9, 5, seed=6)
    k = 7
    whole = nearest_topk(queries, references, k, workers=2)
    sims = torch.stack([(q @ references.reshape(-1, 5).T).view(9, 23, 9).amax(2).T for q in queries])
    assert torch.allclose(whole, sims.topk(k, dim=1).values, atol=1e-6)
    merged = merge_topk(nearest_topk(queries, references[:10], k), nearest_topk(queries, references[10:], k), k)
    assert torch.allclose(merged, whole, atol=1e-6)


def test_reference_sample_and_bank_rule():
    first = reference_sample(1000, 50, seed=3)
    assert len(first) == 50 and len(set(first.tolist())) == 50 and (np.diff(first) > 0).all()
    assert np.array_equal(first, reference_sample(1000, 50, seed=3))
    assert not np.array_equal(first, reference_sample(1000, 50, seed=4))
    assert reference_sample(10, 50).tolist() == list(range(10))
    assert not use_bank(401, 200) and use_bank(402, 200) and not use_bank(10**6, None)
    with pytest.raises(ConfigError, match="max_references"):
        MuScConfig(max_references=0)


def test_chunked_feature_sets_equal_musc_features_in_memory_and_on_disk(tmp_path):
    from defectscope.data.synthetic import synthetic_images

    images, _ = synthetic_images(7, kind="texture", size=64, seed=2)
    musc = MuSc(MuScConfig(image_size=64, batch_size=3))
    sets, grid, embeddings = musc.feature_sets(images, native_grids=True)
    for store in (None, tmp_path):
        chunked = chunked_feature_sets(musc.backbone, images, (1, 3, 5), 3, native_grids=True, store=store)
        assert chunked.on_disk == (store is not None) and chunked.grid == grid
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(chunked.sets, sets))
        assert torch.allclose(chunked.embeddings, embeddings)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:mutual scoring of only")
def test_musc_switches_to_the_bank_above_the_size_and_matches_its_parts():
    from defectscope.data.synthetic import synthetic_images

    images, _ = synthetic_images(12, kind="texture", size=64, defective=(5,), seed=7, defect="spot")
    config = MuScConfig(image_size=64, max_references=4, reference_seed=1)
    musc = MuSc(config)
    scores = musc.patch_scores(images)
    sets, grid, _ = musc.feature_sets(images, native_grids=True)
    chosen = reference_sample(12, 4, seed=1).tolist()
    skip = self_positions(range(12), chosen)
    from defectscope.methods.musc import to_finest_grid

    expected = torch.stack([to_finest_grid(bank_scores(s, s[chosen], config.lower, config.upper, self_index=skip), grid) for s in sets]).mean(0)
    assert torch.allclose(scores.patch_scores, expected, atol=1e-5)
    exact = MuSc(MuScConfig(image_size=64, max_references=None)).patch_scores(images).patch_scores
    assert not torch.allclose(scores.patch_scores, exact, atol=1e-5)
    assert int(scores.patch_scores.amax(1).argmax()) == 5


@pytest.mark.filterwarnings("ignore:mutual scoring of only")
def test_the_bank_keeps_the_batch_aspect_as_the_exact_path_does():
    """Long narrow images on the bank path get the batch's aspect input (not a square), so the
    bank's grid and its parts match the exact path's features at the same shape."""
    from defectscope.data.synthetic import synthetic_images
    from defectscope.methods.musc import to_finest_grid

    images, _ = synthetic_images(12, kind="texture", size=128, defective=(5,), seed=7, defect="spot")
    strips = [image[40:72] for image in images]  # 32 x 128: aspect 4
    config = MuScConfig(image_size=64, max_references=4, reference_seed=1)
    musc = MuSc(config)
    scores = musc.patch_scores(strips)
    sets, grid, _ = musc.feature_sets(strips, native_grids=True)
    assert scores.grid == grid and grid[1] >= 3 * grid[0]
    chosen = reference_sample(12, 4, seed=1).tolist()
    skip = self_positions(range(12), chosen)
    expected = torch.stack([to_finest_grid(bank_scores(s, s[chosen], config.lower, config.upper, self_index=skip), grid) for s in sets]).mean(0)
    assert torch.allclose(scores.patch_scores, expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore:mutual scoring of only")
def test_the_several_looks_gate_applies_on_the_bank_path_with_looks_bank():
    """Two looks of normal (textures and objects) in one banked batch: with ``looks_bank`` the
    gate sees the global embeddings disagree and scores the bank with ``looks_interval``; one
    look, or ``looks_bank`` off (the default), keeps [lower, upper)."""
    from defectscope.data.synthetic import synthetic_images
    from defectscope.methods import pose
    from defectscope.methods.musc import to_finest_grid

    textures, _ = synthetic_images(6, kind="texture", size=64, seed=3)
    objects, _ = synthetic_images(6, kind="object", size=64, seed=4)
    mixed = [image for pair in zip(textures, objects) for image in pair]
    chosen = reference_sample(12, 4, seed=0).tolist()
    skip = self_positions(range(12), chosen)

    def banked(images, gate):
        musc = MuSc(MuScConfig(image_size=64, max_references=4, looks_gate=gate, looks_bank=True))
        scores = musc.patch_scores(images)
        sets, grid, embeddings = musc.feature_sets(images, native_grids=True)
        return musc, scores, sets, grid, pose.embedding_agreement(embeddings)

    def expected(sets, grid, lower, upper):
        return torch.stack([to_finest_grid(bank_scores(s, s[chosen], lower, upper, self_index=skip), grid) for s in sets]).mean(0)

    # a gate between the mixed batch's agreement and the one-look batch's
    same, _ = synthetic_images(12, kind="texture", size=64, seed=5)
    mixed_agreement = banked(mixed, None)[4]
    same_agreement = banked(same, None)[4]
    assert mixed_agreement < same_agreement
    gate = 0.5 * (mixed_agreement + same_agreement)

    musc, scores, sets, grid, _ = banked(mixed, gate)
    assert scores.facts["several_looks"] is True and scores.facts["interval"] == [0.0, 0.3]
    assert scores.facts["embedding_agreement"] == pytest.approx(mixed_agreement, abs=1e-6)
    config = musc.config
    gated = expected(sets, grid, *config.looks_interval)
    plain = expected(sets, grid, config.lower, config.upper)
    assert not torch.allclose(gated, plain, atol=1e-4)
    assert torch.allclose(scores.patch_scores, calibrate(gated, grid, config), atol=1e-5)
    off = banked(mixed, None)[1]
    assert torch.allclose(off.patch_scores, calibrate(plain, grid, config), atol=1e-5)
    off = MuSc(MuScConfig(image_size=64, max_references=4, looks_gate=gate, looks_groups=None))  # looks_bank off, no groups rule
    ungated = off.patch_scores(mixed)
    assert torch.allclose(ungated.patch_scores, calibrate(plain, grid, config), atol=1e-5)
    assert ungated.facts == {}

    musc, scores, sets, grid, _ = banked(same, gate)
    assert scores.facts["several_looks"] is False
    assert torch.allclose(scores.patch_scores, calibrate(expected(sets, grid, config.lower, config.upper), grid, config), atol=1e-5)


def calibrate(scores, grid, config):
    from defectscope.methods.mutual import calibrate_border

    return calibrate_border(scores, grid, config.border_depth)


@pytest.mark.parametrize("lower, upper", [(0.0, 0.3), (0.5, 1.0)])
def test_bank_scores_against_the_nearest_references_only(lower, upper):
    from defectscope.methods.bank import nearest_references

    batch = unit(14, 9, 6, seed=21)
    embeddings = torch.randn(14, 5, generator=torch.Generator().manual_seed(22))
    chosen = torch.tensor([1, 4, 6, 9, 12])
    nearest = nearest_references(embeddings, chosen, 3)
    assert nearest.shape == (14, 3)
    own = self_positions(range(14), chosen.tolist())
    e = F.normalize(embeddings, dim=1)
    for i in range(14):
        assert int(own[i]) not in nearest[i].tolist()
        others = [j for j in range(5) if j != int(own[i])]
        best = sorted(others, key=lambda j: -float(e[i] @ e[chosen[j]]))[:3]
        assert sorted(best) == sorted(nearest[i].tolist())
    fast = bank_scores(batch, batch[chosen], lower, upper, nearest=nearest)
    for i in range(14):
        expected = brute_force(batch[i : i + 1], batch[chosen[nearest[i]]], [-1], lower, upper)
        assert torch.allclose(fast[i : i + 1].double(), expected, atol=1e-5)
    assert not torch.allclose(fast, bank_scores(batch, batch[chosen], lower, upper, self_index=own), atol=1e-4)


@pytest.mark.filterwarnings("ignore:mutual scoring of only")
def test_several_looks_on_the_bank_compare_each_image_with_its_nearest_references():
    from defectscope.data.synthetic import synthetic_images
    from defectscope.methods import pose
    from defectscope.methods.bank import nearest_references
    from defectscope.methods.mutual import calibrate_border
    from defectscope.methods.musc import to_finest_grid

    textures, _ = synthetic_images(6, kind="texture", size=64, seed=3)
    objects, _ = synthetic_images(6, kind="object", size=64, seed=4)
    mixed = [image for pair in zip(textures, objects) for image in pair]
    probe = MuSc(MuScConfig(image_size=64))
    sets, grid, embeddings = probe.feature_sets(mixed, native_grids=True)
    gate = pose.embedding_agreement(embeddings) + 0.01  # the batch counts as several looks
    chosen = torch.from_numpy(reference_sample(12, 5, seed=0))
    config = MuScConfig(image_size=64, max_references=5, looks_gate=gate, looks_bank=True, looks_nearest=2)
    musc = MuSc(config)
    scores = musc.patch_scores(mixed)
    assert scores.facts["several_looks"] is True and scores.facts["nearest_references"] == 2
    nearest = nearest_references(embeddings, chosen, 2)
    lower, upper = config.looks_interval
    expected = torch.stack([to_finest_grid(bank_scores(s, s[chosen], lower, upper, nearest=nearest), grid) for s in sets]).mean(0)
    assert torch.allclose(scores.patch_scores, calibrate_border(expected, grid, config.border_depth), atol=1e-5)
    whole = MuSc(MuScConfig(image_size=64, max_references=5, looks_gate=gate, looks_bank=True, looks_nearest=None)).patch_scores(mixed)
    assert not torch.allclose(scores.patch_scores, whole.patch_scores, atol=1e-4)
    # one look: the gate stays off and the whole bank is used whatever looks_nearest says
    plain = MuSc(MuScConfig(image_size=64, max_references=5, looks_gate=gate - 0.5, looks_bank=True, looks_nearest=2))
    facts = plain.patch_scores(mixed).facts
    assert facts["several_looks"] is False and "nearest_references" not in facts


def _two_groups(n_first: int, n_second: int, seed: int, dim: int = 112, distance: float = 8.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, generator=g) * 10.0
    axis = F.normalize(torch.randn(dim, generator=g), dim=0)
    first = base + torch.randn(n_first, dim, generator=g)
    second = base + distance * axis + torch.randn(n_second, dim, generator=g)
    return torch.cat([first, second])[torch.randperm(n_first + n_second, generator=g)]


def test_look_groups_tells_separated_groups_from_one_spread():
    """Two separated groups (balanced or 1:5) -> separation far above the default 5.5; one
    Gaussian spread (stretched along one axis), one uniform spread, one tight group -> below it."""
    from defectscope.methods.pose import look_groups

    threshold = MuScConfig().looks_groups
    balanced = look_groups(_two_groups(300, 200, seed=1))
    assert balanced["separation"] > threshold + 1.0 and balanced["minor"] == pytest.approx(0.4, abs=0.01)
    unbalanced = look_groups(_two_groups(500, 100, seed=2))
    assert unbalanced["separation"] > threshold + 1.0 and unbalanced["minor"] == pytest.approx(1 / 6, abs=0.01)

    g = torch.Generator().manual_seed(3)
    base = torch.randn(112, generator=g) * 10.0
    stretched = base + torch.randn(600, 112, generator=g) * torch.linspace(4.0, 0.5, 112)
    uniform = base.clone() + torch.randn(600, 112, generator=g) * 0.2
    uniform[:, 0] += torch.rand(600, generator=g) * 8.0
    tight = base + torch.randn(600, 112, generator=g) * 0.1
    for spread in (stretched, uniform, tight):
        separation = look_groups(spread)["separation"]
        assert 2.0 < separation < threshold - 1.0
    # too few images, or all alike: no groups
    assert look_groups(torch.randn(3, 8))["separation"] == 0.0
    assert look_groups(torch.ones(10, 8))["separation"] == 0.0


def test_bank_looks_takes_the_scoring_only_for_separated_groups_below_the_gate():
    from defectscope.methods.pose import bank_looks, embedding_agreement

    groups = _two_groups(300, 200, seed=4, distance=40.0)
    g = torch.Generator().manual_seed(5)
    spread = torch.randn(500, 112, generator=g) * torch.linspace(4.0, 0.5, 112) + 1.0
    gate = max(embedding_agreement(groups), embedding_agreement(spread)) + 0.01  # both disagree
    config = MuScConfig(looks_gate=gate)
    lower, upper, facts = bank_looks(config, groups)
    assert (lower, upper) == config.looks_interval and facts["several_looks"] is True
    assert facts["group_separation"] >= config.looks_groups and facts["embedding_agreement"] < gate
    lower, upper, facts = bank_looks(config, spread)
    assert (lower, upper) == (config.lower, config.upper) and facts["several_looks"] is False
    assert facts["group_separation"] < config.looks_groups and facts["interval"] == [config.lower, config.upper]
    # separated groups that agree (above the gate) keep the plain interval
    agreeing = MuScConfig(looks_gate=embedding_agreement(groups) - 0.01)
    assert bank_looks(agreeing, groups)[2]["several_looks"] is False
    # looks_bank: the gate alone, as before (the spread fires too); looks_groups=None: off
    assert bank_looks(MuScConfig(looks_gate=gate, looks_bank=True), spread)[2]["several_looks"] is True
    assert bank_looks(MuScConfig(looks_gate=gate, looks_groups=None), groups) == (config.lower, config.upper, {})


@pytest.mark.filterwarnings("ignore:mutual scoring of only")
def test_the_bank_path_takes_the_groups_decision():
    """A banked batch of two looks: with ``looks_groups`` just below the batch's separation the
    bank is scored with looks_interval against the nearest references; just above it (one spread
    as far as the rule knows) the scores equal the plain bank's exactly."""
    from defectscope.data.synthetic import synthetic_images
    from defectscope.methods import pose
    from defectscope.methods.bank import nearest_references
    from defectscope.methods.musc import to_finest_grid

    textures, _ = synthetic_images(6, kind="texture", size=64, seed=3)
    objects, _ = synthetic_images(6, kind="object", size=64, seed=4)
    mixed = [image for pair in zip(textures, objects) for image in pair]
    probe = MuSc(MuScConfig(image_size=64))
    sets, grid, embeddings = probe.feature_sets(mixed, native_grids=True)
    gate = pose.embedding_agreement(embeddings) + 0.01
    separation = pose.look_groups(embeddings)["separation"]
    assert separation > 0
    chosen = torch.from_numpy(reference_sample(12, 5, seed=0))
    skip = self_positions(range(12), chosen.tolist())

    def run(threshold):
        musc = MuSc(MuScConfig(image_size=64, max_references=5, looks_gate=gate, looks_groups=threshold, looks_nearest=2))
        scores = musc.patch_scores(mixed)
        return scores.facts, scores.patch_scores

    config = MuScConfig(image_size=64, max_references=5, looks_nearest=2)
    facts, on = run(separation * 0.99)
    assert facts["several_looks"] is True and facts["nearest_references"] == 2
    assert facts["group_separation"] == pytest.approx(separation)
    nearest = nearest_references(embeddings, chosen, 2)
    expected = torch.stack([to_finest_grid(bank_scores(s, s[chosen], *config.looks_interval, nearest=nearest), grid) for s in sets]).mean(0)
    assert torch.allclose(on, calibrate(expected, grid, config), atol=1e-5)

    facts, off = run(separation * 1.01)
    assert facts["several_looks"] is False and "nearest_references" not in facts
    plain = torch.stack([to_finest_grid(bank_scores(s, s[chosen], config.lower, config.upper, self_index=skip), grid) for s in sets]).mean(0)
    assert torch.equal(off, calibrate(plain, grid, config))
    before = MuSc(MuScConfig(image_size=64, max_references=5, looks_gate=None)).patch_scores(mixed).patch_scores
    assert torch.equal(off, before)
    assert not torch.allclose(on, off, atol=1e-4)
