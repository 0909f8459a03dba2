"""Verdict rules: label-free false-alarm rate on synthetic batches, conformal guarantee by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defectscope.errors import ConfigError
from defectscope.methods.verdict import (
    Threshold,
    conformal_count,
    conformal_threshold,
    decide,
    NullFit,
    fit_null,
    gumbel_and_gaussian,
    gumbel_threshold as label_free_threshold,
    pixel_masks,
    weighted_gumbel,
)
from image_helpers import save_images


def _batch(
    rng: np.random.Generator, n: int, defect_share: float, shift: float = 0.5, law: str = "gumbel"
) -> tuple[np.ndarray, np.ndarray]:
    """Normal scores whose log follows a Gumbel law (as the maximum of a map does; mode log 0.35,
    scale 0.05) or, with ``law="gaussian"``, a Gaussian (log-sd 0.06); defects shifted up in log
    by a spread amount (some barely, most clearly)."""
    labels = (rng.random(n) < defect_share).astype(int)
    noise = rng.gumbel(0.0, 0.05, n) if law == "gumbel" else 0.06 * rng.standard_normal(n)
    log_scores = np.log(0.35) + noise + labels * rng.uniform(0.3 * shift, 2 * shift, n)
    return np.exp(log_scores), labels


def _rates(law: str, defect_share: float, batches: int = 40) -> tuple[float, float | None]:
    rng = np.random.default_rng(1)
    flagged, normals, caught, defects = 0, 0, 0, 0
    for _ in range(batches):
        scores, labels = _batch(rng, 80, defect_share, law=law)
        verdict = decide(scores, label_free_threshold(scores, 0.05))
        flagged += int(verdict[labels == 0].sum())
        normals += int((labels == 0).sum())
        caught += int(verdict[labels == 1].sum())
        defects += int((labels == 1).sum())
    return flagged / normals, (caught / defects if defects else None)


@pytest.mark.parametrize("defect_share", [0.0, 0.2, 0.5, 0.75])
def test_label_free_false_alarm_rate_stays_near_budget(defect_share: float) -> None:
    rate, recall = _rates("gumbel", defect_share)
    assert 0.002 < rate <= 0.05, rate
    if recall is not None:
        assert recall > 0.7


@pytest.mark.parametrize("defect_share", [0.0, 0.5])
def test_label_free_stays_within_budget_on_gaussian_normals(defect_share: float) -> None:
    # A lighter tail than the Gumbel null assumes: the rule is conservative, not wrong.
    rate, recall = _rates("gaussian", defect_share)
    assert rate <= 0.05, rate
    if recall is not None:
        assert recall > 0.6


def test_a_gaussian_null_would_miss_the_budget_on_maxima() -> None:
    # What the Gumbel null is for: a Gaussian 95 % quantile of Gumbel-distributed normal scores
    # flags more than 5 % of them (the right tail is longer).
    rng = np.random.default_rng(7)
    x = rng.gumbel(0.0, 1.0, 20000)
    assert np.mean(x > x.mean() + 1.645 * x.std()) > 0.055
    fitted = NullFit(*weighted_gumbel(x, np.ones_like(x)), count=x.size, components=1)
    assert np.mean(x > fitted.quantile_bound(0.05, 0.5)) == pytest.approx(0.05, abs=0.005)


def test_label_free_budget_moves_the_threshold() -> None:
    scores, _ = _batch(np.random.default_rng(2), 100, 0.3)
    strict = label_free_threshold(scores, 0.01).value
    loose = label_free_threshold(scores, 0.2).value
    assert strict > loose
    assert "0.01" in label_free_threshold(scores, 0.01).rule


def test_label_free_is_scale_invariant() -> None:
    scores, _ = _batch(np.random.default_rng(3), 60, 0.5)
    assert label_free_threshold(3.0 * scores).value == pytest.approx(3.0 * label_free_threshold(scores).value, rel=1e-6)


def test_two_components_found_when_separated_and_not_when_one() -> None:
    rng = np.random.default_rng(4)
    mixed = np.concatenate([rng.gumbel(0.0, 1.0, 30), rng.normal(10.0, 1.5, 70)])
    null = fit_null(mixed)
    assert null.components == 2
    assert null.location == pytest.approx(0.0, abs=0.6) and null.count == pytest.approx(30, abs=3)
    single = fit_null(rng.gumbel(0.0, 1.0, 100))
    assert single.components == 1 and single.count == 100
    assert abs(single.location) < 0.3 and 0.8 < single.scale < 1.2
    weight, location, scale, mean, sd, _ = gumbel_and_gaussian(mixed)
    assert location < mean and 0.2 < weight < 0.4 and scale > 0 and sd > 0


def test_gumbel_fit_recovers_its_parameters_and_the_bound_widens_for_small_samples() -> None:
    x = np.random.default_rng(6).gumbel(2.0, 0.5, 5000)
    location, scale = weighted_gumbel(x, np.ones_like(x))
    assert location == pytest.approx(2.0, abs=0.03) and scale == pytest.approx(0.5, abs=0.02)
    small, large = NullFit(0.0, 1.0, 10, 1), NullFit(0.0, 1.0, 1000, 1)
    plain = -math.log(-math.log(0.95))
    assert small.quantile_bound(0.05) > large.quantile_bound(0.05) > plain
    assert NullFit(0.0, 1.0, 10**8, 1).quantile_bound(0.05) == pytest.approx(plain, abs=0.01)


def test_label_free_refuses_bad_input() -> None:
    with pytest.raises(ConfigError, match="positive"):
        label_free_threshold(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ConfigError, match="false-alarm-rate"):
        label_free_threshold(np.array([1.0, 2.0]), 1.5)


@pytest.mark.parametrize("n,alpha", [(19, 0.05), (50, 0.05), (200, 0.05), (40, 0.1)])
def test_conformal_guarantee_per_good_set_by_simulation(n: int, alpha: float) -> None:
    """The anomalous cut keeps the budget in 90 % of good sets (or the stated per-set budget when
    n is too small); the review band's lower edge is the split-conformal cut (average guarantee)."""
    from scipy import stats

    from defectscope.methods.verdict import set_budget, set_rank

    rng = np.random.default_rng(5)
    true_rates, edge_rates = [], []
    for _ in range(2000):
        threshold = conformal_threshold(rng.standard_normal(n), alpha)
        true_rates.append(float(stats.norm.sf(threshold.value)))  # the exact share of normal scores above the cut
        edge = threshold.value if threshold.review_from is None else threshold.review_from
        edge_rates.append(float(stats.norm.sf(edge)))
    budget = alpha if set_rank(n, alpha) is not None else set_budget(n)
    assert np.mean(np.array(true_rates) > budget) <= 0.1 + 0.02
    assert np.mean(edge_rates) <= alpha + 0.003  # the split-conformal edge: alpha on average
    assert np.mean(edge_rates) == pytest.approx(1 - math.ceil((n + 1) * (1 - alpha)) / (n + 1), abs=0.004)


def test_conformal_picks_order_statistics_states_the_budget_and_refuses_too_few() -> None:
    small = conformal_threshold(np.arange(1.0, 25.0), 0.05, guard=False)  # 24 values: only the largest can hold per set
    assert small.value == 24.0 and small.review_from is None
    assert "at most 9.1% in 90% of good sets" in small.rule and "45 good images" in small.rule
    guarded = conformal_threshold(np.arange(1.0, 25.0), 0.05)  # the default: a guard band above the largest
    assert guarded.value > 24.0 and guarded.review_from == 24.0
    assert "at most 9.1% in 90% of good sets, no assumption" in guarded.rule and "45 would be enough" in guarded.rule
    large = conformal_threshold(np.arange(1.0, 201.0), 0.05)
    assert large.value == 195.0 and large.review_from == 191.0  # ranks 195 (per set) and 191 (on average)
    assert "review down to the 191-th" in large.rule
    assert conformal_count(0.05) == 19 and conformal_count(0.1) == 9
    with pytest.raises(ConfigError, match="at least 19 good images, got 18"):
        conformal_threshold(np.arange(18.0), 0.05)


def test_decide_and_masks_are_strict() -> None:
    threshold = Threshold(1.0, "test")
    assert decide(np.array([0.5, 1.0, 1.5]), threshold).tolist() == [False, False, True]
    maps = np.array([[[0.2, 1.2], [1.0, 0.0]]])
    assert pixel_masks(maps, threshold).tolist() == [[[False, True], [False, False]]]


def _rows_agree_with_threshold(out, threshold: float, review_from: float | None = None) -> list[dict[str, str]]:
    """scores.csv rows, after checking that each verdict is ``verdict_score > threshold``, review
    down to ``review_from``, else normal."""
    import csv

    def expected(value: float) -> str:
        if value > threshold:
            return "anomalous"
        return "review" if review_from is not None and value > review_from else "normal"

    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert list(rows[0])[:5] == ["path", "score", "rank", "verdict", "verdict_score"]
    assert all(r["verdict"] == expected(float(r["verdict_score"])) for r in rows)
    return rows


def test_musc_run_decides_on_its_verdict_scores_end_to_end(tmp_path) -> None:
    import json

    from defectscope.data.synthetic import synthetic_images
    from defectscope.pipeline import RunOptions, score_folder

    images, _ = synthetic_images(12, kind="texture", size=96, defective=(3, 8), seed=4, defect="blotch")
    folder = tmp_path / "parts"
    save_images(folder, images)
    out = tmp_path / "out"
    result = score_folder(folder, out, RunOptions(image_size=64))
    assert result.verdict_scores is not None and result.is_anomalous.any()
    assert np.array_equal(result.decision_scores(), np.asarray(result.extras["raw_image_scores"]))
    assert np.array_equal(result.is_anomalous, result.decision_scores() > result.threshold)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["threshold_applies_to"] == "verdict_score" and settings["threshold"] == result.threshold
    assert settings["review_threshold"] == result.review_threshold
    rows = _rows_agree_with_threshold(out, settings["threshold"], settings["review_threshold"])
    by_path = dict(zip(result.paths, result.verdict_scores))
    assert all(float(r["verdict_score"]) == by_path[r["path"]] for r in rows)
    # The score column (RsCIN, rescaled per batch) is not in the threshold's units.
    assert not np.allclose(result.image_scores, result.verdict_scores)
    assert float(np.min(result.verdict_scores)) < result.threshold < float(np.max(result.verdict_scores))


def test_review_band_three_outcomes_and_budget_cap():
    from defectscope.methods.verdict import Threshold, cap_review, decide, in_review, verdict_words

    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    threshold = Threshold(0.75, "rule", review_from=0.25)
    anomalous, review = decide(scores, threshold), in_review(scores, threshold)
    assert verdict_words(anomalous, review) == ["normal"] * 2 + ["review"] * 5 + ["anomalous"] * 3
    capped = cap_review(scores, threshold, 0.2)  # at most 2 of 10 to review: the two highest of the band
    assert capped.value == threshold.value and "capped" in capped.rule
    assert verdict_words(decide(scores, capped), in_review(scores, capped)) == ["normal"] * 5 + ["review"] * 2 + ["anomalous"] * 3
    none = cap_review(scores, threshold, 0.0)
    assert not in_review(scores, none).any() and decide(scores, none).sum() == 3
    assert cap_review(scores, threshold, 0.5) == threshold
    with pytest.raises(ConfigError, match="--review-budget"):
        cap_review(scores, threshold, 1.5)


def test_a_part_with_a_mask_is_never_called_normal():
    from defectscope.methods.base import Result
    from defectscope.methods.verdict import limit_review, with_verdict

    masks = np.zeros((4, 8, 8), dtype=bool)
    masks[1, 2:4, 2:4] = True  # outlined, but its statistic is below the cut (U-Flow: NFA mask vs good-image cut)
    result = Result(paths=list("abcd"), image_scores=np.array([0.1, 0.2, 0.3, 0.9]), anomaly_maps=np.zeros((4, 8, 8), np.float32), masks=masks)
    with_verdict(result, Threshold(0.5, "cut"))
    assert result.verdicts() == ["normal", "review", "normal", "anomalous"]
    limit_review(with_verdict(result, Threshold(0.5, "cut", review_from=0.0)), 0.0)  # no review budget at all
    assert result.verdicts()[1] == "review"
