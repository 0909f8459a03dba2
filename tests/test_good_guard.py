"""The known-good guard band (n below goods_for): where it holds, where it cannot, what it says."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from defectscope.methods.verdict import (
    Threshold,
    conformal_threshold,
    decide,
    goods_for,
    guard_cut,
    in_review,
    pixel_masks,
    set_rank,
)


def per_set_failures(law, n: int, sets: int = 400, rate: float = 0.05, seed: int = 3) -> np.ndarray:
    """The exact share of normal parts above each set's anomalous cut, n good scores per set."""
    rng = np.random.default_rng(seed)
    return np.array([law.sf(conformal_threshold(law.rvs(size=n, random_state=rng), rate).value) for _ in range(sets)])


@pytest.mark.parametrize("n", [19, 24, 38])
def test_guard_holds_per_set_when_the_tail_is_no_longer_than_a_gumbel(n: int) -> None:
    """Gumbel and Gaussian normal scores: the per-set promise (at most 5 % for 90 % of good sets)
    holds with the guard; the largest good score alone (guard=False) fails it at these n."""
    for law in (stats.gumbel_r(loc=0.6, scale=0.02), stats.norm(loc=3.0, scale=0.5)):
        rates = per_set_failures(law, n)
        assert np.mean(rates > 0.05) <= 0.06
        assert np.mean(rates > 0.10) <= 0.01
    rng = np.random.default_rng(3)
    law = stats.gumbel_r(loc=0.6, scale=0.02)
    plain = np.array([law.sf(conformal_threshold(law.rvs(size=n, random_state=rng), 0.05, guard=False).value) for _ in range(400)])
    # the largest of n exchangeable scores leaves more than 5 % above it with probability 0.95^n
    # (0.38, 0.29, 0.14 at n = 19, 24, 38): above the 10 % the promise allows until 45 good images
    assert np.mean(plain > 0.05) == pytest.approx(0.95**n, abs=0.06)
    assert np.mean(plain > 0.05) > np.mean(per_set_failures(law, n) > 0.05) + 0.08


def test_guard_fails_when_the_tail_is_longer_than_assumed() -> None:
    """The band rests on an assumption: log-normal scores (a longer upper tail than any Gumbel
    fitted to 19 of them) break the per-set promise. The rule says so; this test shows it."""
    rates = per_set_failures(stats.lognorm(1.0), 19)
    assert np.mean(rates > 0.05) > 0.2


def test_guard_band_edges_and_rule() -> None:
    good = np.random.default_rng(0).gumbel(0.6, 0.02, size=24)
    odd = conformal_threshold(good, 0.05)  # this draw's largest score lies above the fitted bound: the cut stays there
    assert odd.value == good.max() and odd.review_from is None and "the largest score, which lies above the 99% upper bound" in odd.rule
    good = np.random.default_rng(5).gumbel(0.6, 0.02, size=24)
    threshold = conformal_threshold(good, 0.05, source="good images (leave-one-out)")
    assert set_rank(24, 0.05) is None and goods_for(0.05) == 45
    assert threshold.value == pytest.approx(guard_cut(good, 0.05)) and threshold.value > good.max()
    assert threshold.review_from == good.max()  # the split-conformal cut at n = 24: the largest score
    for words in ("guard band", "assumes the scores of normal parts have no longer upper tail", "45 would be enough",
                  "review from the largest score"):
        assert words in threshold.rule
    # a part between the largest good score and the cut goes to review, above it is anomalous
    parts = np.array([good.max() - 1e-6, (good.max() + threshold.value) / 2, threshold.value + 1e-6])
    assert decide(parts, threshold).tolist() == [False, False, True]
    assert in_review(parts, threshold).tolist() == [False, True, False]
    # masks use the anomalous cut per pixel: a map whose maximum lies in the band has an empty mask
    maps = parts[:, None, None] * np.ones((3, 2, 2))
    assert pixel_masks(maps, threshold).reshape(3, -1).any(axis=1).tolist() == [False, False, True]


def test_guard_is_affine_equivariant_and_degenerate_sets_keep_the_largest() -> None:
    good = np.random.default_rng(1).gumbel(0.6, 0.02, size=30)
    assert guard_cut(3.0 * good + 2.0) == pytest.approx(3.0 * guard_cut(good) + 2.0, rel=1e-6)
    flat = conformal_threshold(np.full(24, 0.7), 0.05)
    assert flat.value == 0.7 and flat.review_from is None


def test_enough_good_images_keep_the_rank_cut_without_guard() -> None:
    good = np.random.default_rng(2).gumbel(0.6, 0.02, size=60)
    threshold = conformal_threshold(good, 0.05)
    rank = set_rank(60, 0.05)
    assert rank is not None and threshold.value == np.sort(good)[rank - 1]
    assert "guard" not in threshold.rule
    assert conformal_threshold(good, 0.05) == conformal_threshold(good, 0.05, guard=False)


def test_band_between_split_cut_and_guard_for_n_where_they_differ() -> None:
    """n = 40 at 0.05: the split-conformal cut is the 39-th smallest (not the largest); review starts there."""
    good = np.sort(np.random.default_rng(4).gumbel(0.6, 0.02, size=40))
    threshold = conformal_threshold(good, 0.05)
    assert threshold.review_from == good[38] and threshold.value > good[-1]
    assert "review from the 39-th smallest (at most 0.05 on average, no assumption)" in threshold.rule
    assert isinstance(threshold, Threshold)


def test_report_sentence_follows_the_rule_the_verdict_module_wrote() -> None:
    """The report learns "guard band" from verdict.has_guard_band, the module that writes the rule."""
    from defectscope.methods.verdict import has_guard_band, is_uncalibrated
    from defectscope.report.decision import threshold_sentence

    small = conformal_threshold(np.random.default_rng(5).gumbel(0.6, 0.02, size=24), 0.05)
    large = conformal_threshold(np.random.default_rng(2).gumbel(0.6, 0.02, size=60), 0.05)
    assert has_guard_band(small.rule) and not has_guard_band(large.rule) and not has_guard_band(None)
    assert not is_uncalibrated(small.rule)
    said = {}
    for name, threshold in (("small", small), ("large", large)):
        said[name] = threshold_sentence({"threshold": threshold.value, "threshold_rule": threshold.rule, "good": "good/",
                                         "false_alarm_rate": 0.05, "review_threshold": threshold.review_from})
    assert "by a margin estimated from their scores" in said["small"]
    assert "margin" not in said["large"]


def test_probability_scores_keep_a_reachable_band() -> None:
    """Fitted on the raw values, probabilities near 1 put the cut above 1 (no part could ever be
    anomalous); fitted on their log-odds it lies between the largest good score and 1."""
    good = np.random.default_rng(0).uniform(0.80, 0.97, size=24)
    assert guard_cut(good) > 1.0
    cut = guard_cut(good, probability=True)
    assert good.max() <= cut < 1.0
    threshold = conformal_threshold(good, 0.05, probability=True)
    assert threshold.value == pytest.approx(cut) and "log-odds" in threshold.rule
    assert decide(np.array([0.999]), threshold).tolist() == [True]


def test_prn_declares_probability_scores() -> None:
    from defectscope.methods.base import Detector
    from defectscope.methods.prn.detector import PRN

    assert PRN.probability_scores and not Detector.probability_scores
