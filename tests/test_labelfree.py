"""The label-free verdict: three cuts, anomalous where all agree, review where they disagree."""

from __future__ import annotations

import numpy as np
import pytest

from defectscope.methods.labelfree import MIN_SPLIT_SIZE, knee_cut, label_free_threshold, otsu_cut
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


def test_anomalous_only_above_every_cut_and_review_between() -> None:
    scores, _ = _batch(np.random.default_rng(3), 90, 0.4, 0.15)
    threshold = label_free_threshold(scores)
    logs = np.log(scores)
    cuts = [np.log(gumbel_threshold(scores).value), otsu_cut(logs), knee_cut(logs)]
    assert np.log(threshold.value) == pytest.approx(max(cuts))
    assert threshold.review_from is None or np.log(threshold.review_from) == pytest.approx(min(cuts))
    assert not (decide(scores, threshold) & in_review(scores, threshold)).any()
    assert "Otsu" in threshold.rule and "knee" in threshold.rule


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
