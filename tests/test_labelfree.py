"""The label-free verdict: Otsu's cut for batches of two groups clearly apart, else the highest of three
cuts; review down to the lowest."""

from __future__ import annotations

import numpy as np
import pytest

from defectscope.methods.labelfree import (
    MIN_SPLIT_SIZE,
    flat_separation,
    knee_cut,
    label_free_threshold,
    otsu_cut,
    separation,
)
from defectscope.methods.verdict import decide, gumbel_threshold, in_review


# The demo's 60 elpv cells (`defectscope demo`, MuSc defaults): log map maxima, 48 normal, 12
# defective. The Gumbel cut alone flagged 20 of the 48 normal cells (41.7 %).
DEMO_NORMAL = [-0.395, -0.391, -0.387, -0.386, -0.381, -0.379, -0.377, -0.371, -0.367, -0.363, -0.362, -0.357, -0.357,
               -0.354, -0.351, -0.347, -0.346, -0.343, -0.342, -0.338, -0.329, -0.327, -0.323, -0.315, -0.3, -0.299, -0.296,
               -0.292, -0.268, -0.268, -0.255, -0.254, -0.251, -0.239, -0.237, -0.23, -0.223, -0.216, -0.214, -0.202, -0.197,
               -0.194, -0.185, -0.182, -0.164, -0.164, -0.164, -0.16]
DEMO_DEFECTIVE = [-0.207, -0.138, -0.129, -0.113, -0.095, -0.094, -0.071, -0.063, -0.059, -0.007, 0.018, 0.042]


def test_the_demo_batch_keeps_the_budget_where_the_gumbel_cut_alone_did_not() -> None:
    scores = np.exp(np.array(DEMO_NORMAL + DEMO_DEFECTIVE))
    normal = np.arange(scores.size) < len(DEMO_NORMAL)
    assert decide(scores, gumbel_threshold(scores))[normal].mean() > 0.3
    threshold = label_free_threshold(scores)
    assert decide(scores, threshold)[normal].mean() <= 0.05
    assert decide(scores, threshold)[~normal].mean() >= 0.75


def _batch(rng, n: int, share: float, width: float):
    """Log scores: normals spread flat over ``width`` (several looks of normal), defects from just
    below the normal top to 0.4 above it."""
    labels = rng.random(n) < share
    logs = np.where(labels, rng.uniform(width - 0.05, width + 0.4, n), rng.uniform(0.0, width, n)) - 0.4
    return np.exp(logs), labels


@pytest.mark.parametrize("share,width", [(0.1, 0.25), (0.3, 0.35), (0.5, 0.15), (0.75, 0.15)])
def test_worst_of_many_batches_within_budget(share: float, width: float) -> None:
    rng = np.random.default_rng(0)
    worst, caught = 0.0, []
    for _ in range(20):
        scores, labels = _batch(rng, 60, share, width)
        threshold = label_free_threshold(scores)
        flagged = decide(scores, threshold)
        worst = max(worst, float(flagged[~labels].mean()))
        caught.append(float((flagged | in_review(scores, threshold))[labels].mean()) if labels.any() else 1.0)
    assert worst <= 0.05 and np.mean(caught) > 0.7, (worst, np.mean(caught))  # defects: anomalous or review


def test_anomalous_cut_is_otsu_when_apart_else_the_highest_and_review_down_to_the_lowest() -> None:
    rng = np.random.default_rng(3)
    branches = set()
    flat = np.exp(np.concatenate([rng.uniform(0.0, 0.3, 80), rng.uniform(0.25, 0.45, 10)]))
    for scores in (flat, np.exp(np.concatenate([rng.normal(0.0, 0.02, 30), rng.normal(0.5, 0.1, 60)]))):
        threshold = label_free_threshold(scores)
        logs = np.log(scores)
        cuts = [otsu_cut(logs), knee_cut(logs), np.log(gumbel_threshold(scores).value)]
        apart = separation(logs) > flat_separation(logs.size)
        assert np.log(threshold.value) == pytest.approx(cuts[0] if apart else max(cuts))
        assert threshold.review_from is None or np.log(threshold.review_from) == pytest.approx(min(cuts))
        assert not (decide(scores, threshold) & in_review(scores, threshold)).any()
        assert "Otsu" in threshold.rule and "knee" in threshold.rule and "Gumbel" in threshold.rule
        branches.add(apart)
    assert branches == {True, False}  # both branches were exercised


def test_two_groups_apart_are_cut_between_them_even_with_a_wide_defect_group() -> None:
    # A tight normal third and a wide defect group above it (a benchmark test set): the knee falls
    # inside the defects; the batch is clearly two groups, so Otsu's cut decides.
    rng = np.random.default_rng(7)
    normal, defective = rng.normal(-0.33, 0.02, 24), rng.uniform(-0.13, 0.15, 48)
    scores = np.exp(np.concatenate([normal, defective]))
    threshold = label_free_threshold(scores)
    flagged = decide(scores, threshold)
    assert separation(np.log(scores)) > flat_separation(scores.size)
    assert not flagged[:24].any() and flagged[24:].all()
    assert knee_cut(np.log(scores)) > np.log(threshold.value)  # the knee alone would miss defects


def test_separation_of_flat_batches_stays_under_its_level_nine_times_in_ten() -> None:
    rng = np.random.default_rng(11)
    for n in (20, 60):
        over = np.mean([separation(rng.random(n)) > flat_separation(n) for _ in range(300)])
        assert 0.04 <= over <= 0.17, (n, over)
    assert separation(np.linspace(0.0, 1.0, 1001)) == pytest.approx(0.75, abs=0.01)
    assert separation(np.r_[np.zeros(10), np.ones(10)]) == pytest.approx(1.0)


@pytest.mark.parametrize("n", [24, 60, 300])
def test_a_batch_of_good_parts_of_one_look_is_rarely_split(n: int) -> None:
    # One look of normal (Gumbel log maxima), no defects: the split test must not hand such
    # batches to Otsu's cut (which flags the upper part of any batch); they keep the three-cut
    # agreement, whose anomalous cut is at or above Otsu's.
    rng = np.random.default_rng(n)
    apart = 0
    for _ in range(40):
        scores = np.exp(-1.0 + rng.gumbel(0.0, 0.05, n))
        logs = np.log(scores)
        threshold = label_free_threshold(scores)
        if separation(logs) > flat_separation(n):
            apart += 1
        else:
            assert np.log(threshold.value) >= otsu_cut(logs) - 1e-12
    assert apart <= 2, apart


def test_scale_invariant() -> None:
    scores, _ = _batch(np.random.default_rng(4), 60, 0.5, 0.15)
    a, b = label_free_threshold(scores), label_free_threshold(7.0 * scores)
    assert b.value == pytest.approx(7.0 * a.value, rel=1e-6)
    assert b.review_from == pytest.approx(7.0 * a.review_from, rel=1e-6)


def test_a_small_batch_of_good_parts_gets_review_not_alarms() -> None:
    rng = np.random.default_rng(5)
    alarms = 0
    for _ in range(50):
        scores = np.exp(-1.0 + rng.gumbel(0.0, 0.05, MIN_SPLIT_SIZE - 4))
        threshold = label_free_threshold(scores)
        alarms += int(decide(scores, threshold).sum())
        assert in_review(scores, threshold).sum() <= scores.size // 2
    assert alarms <= 50 * 6 * 0.05


def test_cuts_find_a_clear_split() -> None:
    logs = np.concatenate([np.linspace(0.0, 0.1, 30), np.linspace(1.0, 2.0, 30)])
    assert otsu_cut(logs) == pytest.approx(0.1)
    assert 0.05 <= knee_cut(logs) <= 0.1
