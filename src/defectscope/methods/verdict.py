"""Verdicts: from image scores to "anomalous" / "normal" with a false-alarm budget.

Two rules, both pure functions of score arrays:

- :func:`gumbel_threshold` (zero-shot batches, no labels; since the review band, one of the three
  cuts of :func:`defectscope.methods.labelfree.label_free_threshold`). The batch is a mixture of normal
  images and defective ones in unknown shares (a production batch is mostly normal, a test set
  can be two-thirds defective), and defective images score higher. The statistic is the maximum
  of each image's map, so the normal images' values follow an extreme-value (Gumbel) law, whose
  right tail is longer than a Gaussian's. On the log scores a single Gumbel and a Gumbel +
  Gaussian mixture (EM) are fitted; when BIC prefers the mixture, its Gumbel component is the
  null (the normal images), else the whole batch is. The threshold is an upper confidence bound
  (``confidence``, default 90 %) of the null's ``1 - false_alarm_rate`` quantile, from the asymptotic
  standard error of the maximum-likelihood quantile at the null's effective sample size. So, if
  the mixture finds the normal images, with probability about ``confidence`` the share of them
  flagged is at most ``false_alarm_rate``; small batches get a wider margin. A Gumbel component holding
  less than ``MIN_NULL_SHARE`` of the batch is taken for a handful of unusually clean images and
  a single Gumbel of the whole batch is the null. Log scores make the rule invariant to a
  rescaling of the scores (a different backbone or distance scale). The choices (map maxima as
  the statistic, the Gumbel null instead of a Gaussian one, 90 %, 10 %) were made on the shared
  categories; see docs/BENCHMARKS.md, "Verdicts".
- :func:`conformal_threshold` (known-good images): conformal calibration that holds per good
  set. With n good scores the anomalous cut is the smallest order statistic that keeps at most
  ``false_alarm_rate`` of normal images above it for 90 % of good sets; where n is too small for any
  order statistic to do that (n < 45 at 0.05), a guard band above the largest good score
  (:func:`guard_cut`: a Gumbel law fitted to the good scores, an assumption about the normal
  scores' upper tail that the rule states). The split-conformal
  ``ceil((n + 1)(1 - false_alarm_rate))``-th smallest (at most ``false_alarm_rate`` on average, no
  assumption) opens a review band below the anomalous cut.

An image is anomalous when its statistic is strictly above the threshold (:func:`decide`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

# scipy.stats (about 0.45 s of CPU to import, most of it building the distributions' docstrings)
# and scipy.optimize are imported where they are used: the label-free rule needs only the normal
# quantile (``special.ndtri``, the function ``scipy.stats.norm.ppf`` evaluates) and brentq.

from defectscope.errors import ConfigError
from defectscope.methods.config import (  # noqa: F401  (the shared defaults are kept importable from here)
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_REVIEW_BUDGET,
    FALSE_ALARM_RATE,
    REVIEW_BUDGET,
    require,
)

if TYPE_CHECKING:
    from defectscope.methods.base import Result

CONFIDENCE = 0.9
MIN_NULL_SHARE = 0.1
_EM_STARTS = (0.25, 0.5, 0.75)
_EM_ITERATIONS = 300
_MIN_MIXTURE_SIZE = 6
EULER = 0.5772156649015329


NORMAL, REVIEW, ANOMALOUS = "normal", "review", "anomalous"
VERDICT_WORDS = (NORMAL, REVIEW, ANOMALOUS)


GUARD_BAND = "with a guard band"
"""The words every guard-band rule carries (:func:`conformal_threshold`); :func:`has_guard_band` reads them."""
UNCALIBRATED = "uncalibrated"
"""The first word of a rule that set no cut from data (a model with nothing to calibrate on)."""


def has_guard_band(rule: object) -> bool:
    """Whether a threshold rule (a Threshold's ``rule``, as settings.json stores it) is a guard band's."""
    return GUARD_BAND in str(rule or "")


def is_uncalibrated(rule: object) -> bool:
    """Whether a threshold rule says the cut was fixed without calibration data."""
    return str(rule or "").startswith(UNCALIBRATED)


@dataclass(frozen=True)
class Threshold:
    """A cut on a score statistic: ``value`` in the statistic's units, ``rule`` says how it was set.

    ``review_from`` (optional, at most ``value``) opens a review band: a statistic above
    ``value`` is anomalous, one in ``(review_from, value]`` goes to review (the data cannot tell),
    one at or below ``review_from`` is normal. The false-alarm budget bounds only ``anomalous``."""

    value: float
    rule: str
    review_from: float | None = None


@dataclass(frozen=True)
class NullFit:
    """The Gumbel law fitted to the normal images' (log) scores: ``location`` (mode), ``scale``,
    the effective sample size ``count`` and the number of mixture components of the fit."""

    location: float
    scale: float
    count: float
    components: int

    def quantile_bound(self, false_alarm_rate: float, confidence: float = CONFIDENCE) -> float:
        """Upper ``confidence`` bound of the null's ``1 - false_alarm_rate`` quantile: the fitted quantile
        plus the one-sided normal quantile times its asymptotic standard error (maximum
        likelihood, Gumbel: scale^2 / n (1.1087 + 0.5140 y + 0.6079 y^2), y the reduced variate)."""
        y = -math.log(-math.log(1.0 - false_alarm_rate))
        spread = math.sqrt((1.10866 + 0.51404 * y + 0.60793 * y * y) / max(self.count, 2.0))
        return self.location + self.scale * (y + float(special.ndtri(confidence)) * spread)


def check_false_alarm_rate(false_alarm_rate: float) -> float:
    """Refuse a false-alarm budget outside (0, 1) in one sentence (the rule of every config's
    ``false_alarm_rate``, :data:`defectscope.methods.config.FALSE_ALARM_RATE`)."""
    return require("--false-alarm-rate", false_alarm_rate, FALSE_ALARM_RATE)


def _scores(scores: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ConfigError(f"{what} needs at least one score")
    if not np.all(np.isfinite(values)):
        raise ConfigError(f"{what} got scores that are not finite")
    return values


def _gaussian_log_density(x: np.ndarray, mean: float, variance: float) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * variance) + (x - mean) ** 2 / variance)


def _gumbel_log_density(x: np.ndarray, location: float, scale: float) -> np.ndarray:
    z = (x - location) / scale
    return -math.log(scale) - z - np.exp(-z)


def weighted_gumbel(x: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood Gumbel (location, scale) of ``x`` with non-negative ``weights``.

    The scale solves scale = mean_w(x) - sum_w(x e^(-x/scale)) / sum_w(e^(-x/scale)) (a
    one-dimensional root, bracketed); the location follows in closed form."""
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    mean = float((w * x).sum() / total)
    spread = math.sqrt(max(float((w * (x - mean) ** 2).sum() / total), 1e-24))

    def exp_weights(scale: float) -> np.ndarray:
        return w * np.exp(-(x - x.min()) / scale)

    def equation(scale: float) -> float:
        e = exp_weights(scale)
        return scale - mean + float((e * x).sum() / e.sum())

    low, high = 1e-3 * spread, 2.0 * spread
    while equation(high) < 0 and high < 1e3 * spread:
        high *= 2.0
    while equation(low) > 0 and low > 1e-9 * spread:
        low /= 2.0
    if equation(low) * equation(high) < 0:
        from scipy import optimize

        scale = float(optimize.brentq(equation, low, high, xtol=1e-12 * spread))
    else:
        scale = 0.78 * spread  # the moment estimate, sd sqrt(6) / pi
    location = float(x.min() - scale * math.log(exp_weights(scale).sum() / total))
    return location, scale


def gumbel_and_gaussian(x: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """Maximum-likelihood mixture of a Gumbel (the lower, normal images) and a Gaussian (the
    defective ones) by EM, best of a few starts that split the data at its quartiles and median.
    Returns (Gumbel weight, location, scale, Gaussian mean, sd, log-likelihood). The Gaussian's
    variance is floored at (1e-2 sd(x))^2 so that it cannot collapse onto one point."""
    x = np.asarray(x, dtype=np.float64)
    best: tuple[float, float, float, float, float, float] | None = None
    for start in _EM_STARTS:
        lower = (x <= np.quantile(x, start)).astype(np.float64)
        if not 0 < lower.sum() < x.size:
            continue
        fit = mixture_from(x, lower)
        if best is None or fit[5] > best[5]:
            best = fit
    if best is None:
        raise ConfigError("a two-component fit needs at least two distinct scores")
    return best


def mixture_from(x: np.ndarray, lower: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """EM of the Gumbel + Gaussian mixture of :func:`gumbel_and_gaussian` from one start:
    ``lower`` holds each value's initial share in the Gumbel (normal) component. Returns (Gumbel
    weight, location, scale, Gaussian mean, sd, log-likelihood)."""
    x = np.asarray(x, dtype=np.float64)
    floor = max((1e-2 * x.std()) ** 2, 1e-12)
    lower = np.asarray(lower, dtype=np.float64)
    previous = -np.inf
    for _ in range(_EM_ITERATIONS):
        upper = 1.0 - lower
        weight = float(np.clip(lower.sum() / x.size, 1e-9, 1 - 1e-9))
        location, scale = weighted_gumbel(x, lower + 1e-12)
        mean = float((upper * x).sum() / (upper.sum() + 1e-12))
        variance = max(float((upper * (x - mean) ** 2).sum() / (upper.sum() + 1e-12)), floor)
        a = math.log(weight) + _gumbel_log_density(x, location, scale)
        b = math.log(1 - weight) + _gaussian_log_density(x, mean, variance)
        total = np.logaddexp(a, b)
        lower = np.exp(a - total)
        likelihood = float(total.sum())
        if likelihood - previous < 1e-7:
            break
        previous = likelihood
    return weight, location, scale, mean, math.sqrt(variance), likelihood


def fit_null(x: np.ndarray) -> NullFit:
    """The null (normal-image) Gumbel law of the values ``x``: the Gumbel component of a Gumbel +
    Gaussian mixture when BIC prefers it to a single Gumbel, the Gaussian lies above it and the
    Gumbel holds at least MIN_NULL_SHARE of the batch; otherwise a single Gumbel of all values.
    A Gumbel because each value is the maximum of an image's map: the largest of many patch
    scores follows an extreme-value law, with a longer right tail than a Gaussian."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if np.ptp(x) == 0:
        return NullFit(float(x[0]), 0.0, float(n), 1)
    location, scale = weighted_gumbel(x, np.ones(n))
    single = NullFit(location, scale, float(n), 1)
    if n < _MIN_MIXTURE_SIZE:
        return single
    bic_one = -2.0 * float(_gumbel_log_density(x, location, scale).sum()) + 2.0 * math.log(n)
    weight, location, scale, mean, _, likelihood = gumbel_and_gaussian(x)
    bic_two = -2.0 * likelihood + 5.0 * math.log(n)
    if bic_two >= bic_one or weight < MIN_NULL_SHARE or mean <= location + EULER * scale:
        return single
    return NullFit(location, scale, weight * n, 2)


def gumbel_threshold(
    scores: np.ndarray, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, *, confidence: float = CONFIDENCE, statistic: str = "scores"
) -> Threshold:
    """The Gumbel-null cut for an unlabeled batch (see the module docstring; one of the three cuts
    of :func:`defectscope.methods.labelfree.label_free_threshold`). ``scores`` must be positive
    (they are compared on a log scale); ``statistic`` names them in the rule text."""
    false_alarm_rate = check_false_alarm_rate(false_alarm_rate)
    values = _scores(scores, "the label-free verdict")
    if np.any(values <= 0):
        raise ConfigError("the label-free verdict needs positive scores (it compares them on a log scale)")
    null = fit_null(np.log(values))
    value = math.exp(null.quantile_bound(false_alarm_rate, confidence))
    if null.components == 2:
        fitted = (
            f"the Gumbel component (normal images, {null.count / values.size:.0%} of the batch) of a Gumbel + "
            f"Gaussian mixture of the batch's log {statistic}"
        )
    else:
        fitted = f"one Gumbel law of the batch's log {statistic}"
    rule = (
        f"label-free, false-alarm budget {false_alarm_rate:g}: {confidence:.0%} upper bound of the {1 - false_alarm_rate:.0%} quantile of {fitted}"
    )
    return Threshold(value, rule)


def conformal_count(false_alarm_rate: float) -> int:
    """The fewest good images for which split-conformal calibration at ``false_alarm_rate`` is possible."""
    false_alarm_rate = check_false_alarm_rate(false_alarm_rate)
    n = 1
    while math.ceil((n + 1) * (1 - false_alarm_rate) - 1e-9) > n:
        n += 1
    return n


def require_good_images(count: int, false_alarm_rate: float) -> None:
    """Refuse, before any heavy work, a --good folder too small for conformal calibration."""
    needed = conformal_count(false_alarm_rate)
    if count < needed:
        raise ConfigError(f"--good holds {count} image(s); a false-alarm rate of {false_alarm_rate:g} needs at least {needed} good images")


GOOD_SET_CONFIDENCE = 0.9
"""Known-good mode: the share of good sets for which the false-alarm budget must hold."""


def set_rank(n: int, false_alarm_rate: float, confidence: float = GOOD_SET_CONFIDENCE) -> int | None:
    """The smallest rank k <= n such that, for exchangeable scores, the k-th smallest of n good
    scores leaves at most ``false_alarm_rate`` of normal images above it for at least ``confidence`` of all
    good sets (the true coverage of the k-th order statistic is Beta(k, n + 1 - k) distributed);
    None when even the largest good score cannot promise that."""
    from scipy import stats

    for k in range(1, n + 1):
        if float(stats.beta.cdf(1.0 - false_alarm_rate, k, n + 1 - k)) <= 1.0 - confidence + 1e-12:
            return k
    return None


def set_budget(n: int, confidence: float = GOOD_SET_CONFIDENCE) -> float:
    """The false-alarm rate the largest of n good scores keeps for ``confidence`` of good sets:
    1 - (1 - confidence)^(1/n)."""
    return 1.0 - (1.0 - confidence) ** (1.0 / n)


GUARD_CONFIDENCE = 0.99
"""Known-good mode below :func:`goods_for` good images: the confidence of the guard band's upper
bound (:func:`guard_cut`). Chosen once on all nine shared categories together (development data;
docs/GOOD_SETS.md, ``bench/good_guard.py``)."""


def guard_cut(
    good_scores: np.ndarray, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, confidence: float = GUARD_CONFIDENCE,
    probability: bool = False,
) -> float:
    """The guard band's anomalous cut for a good set too small for its ranks alone: the upper
    ``confidence`` bound of the ``1 - false_alarm_rate`` quantile of a Gumbel law fitted by maximum
    likelihood to the good scores (:meth:`NullFit.quantile_bound`, whose margin widens as n
    shrinks), never below the largest good score. It extrapolates past the largest good score,
    so it rests on an assumption: the upper tail of normal parts' scores is no longer than
    that Gumbel law's. Affine-equivariant: shifting or rescaling the scores moves the cut alike.

    ``probability=True`` (scores that are probabilities, such as PRN's): the law is fitted to their
    log-odds and the bound mapped back, so the cut stays below 1 and a part can still reach it."""
    values = np.sort(_scores(good_scores, "the guard band"))
    if probability:
        odds = np.clip(values, 1e-12, 1.0 - 1e-12)
        cut = guard_cut(np.log(odds / (1.0 - odds)), false_alarm_rate, confidence)
        return max(float(values[-1]), float(1.0 / (1.0 + math.exp(-cut))))
    top = float(values[-1])
    if values.size < 2 or np.ptp(values) == 0:
        return top
    location, scale = weighted_gumbel(values, np.ones(values.size))
    bound = NullFit(location, scale, float(values.size), 1).quantile_bound(false_alarm_rate, confidence)
    return max(top, float(bound))


def conformal_threshold(
    good_scores: np.ndarray, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, *, source: str = "good images",
    confidence: float = GOOD_SET_CONFIDENCE, guard: bool = True, guard_confidence: float = GUARD_CONFIDENCE,
    probability: bool = False,
) -> Threshold:
    """Conformal calibration on n good scores, holding per good set, not only on average.

    With n >= :func:`goods_for` the anomalous cut is the :func:`set_rank`-th smallest good
    score: for ``confidence`` (90 %) of good sets at most ``false_alarm_rate`` of normal images
    score above it. With fewer good images no rank can promise that, and the cut is the guard
    band's (:func:`guard_cut`): above the largest good score by a margin estimated from the good
    scores themselves, an assumption about the normal scores' upper tail that the rule states;
    ``probability=True`` fits the band on the scores' log-odds (:func:`guard_cut`);
    ``guard=False`` keeps the largest good score instead and states the per-set budget it does
    keep (:func:`set_budget`; ``watch``'s rolling bank does this). The split-conformal cut (the
    ceil((n + 1)(1 - false_alarm_rate))-th smallest: at most ``false_alarm_rate`` on average over
    good sets, no assumption) opens the review band below the anomalous cut. Refuses when
    n < 1/false_alarm_rate - 1 (no order statistic gives even the average guarantee)."""
    false_alarm_rate = check_false_alarm_rate(false_alarm_rate)
    values = np.sort(_scores(good_scores, "conformal calibration"))
    n = values.size
    rank = math.ceil((n + 1) * (1 - false_alarm_rate) - 1e-9)
    if rank > n:
        raise ConfigError(
            f"calibrating a false-alarm rate of {false_alarm_rate:g} needs at least {conformal_count(false_alarm_rate)} {source}, got {n}"
        )
    strict = set_rank(n, false_alarm_rate, confidence)
    needed = goods_for(false_alarm_rate, confidence)
    split = "the largest score" if rank == n else f"the {rank}-th smallest"
    if strict is None and guard:
        value = guard_cut(values, false_alarm_rate, guard_confidence, probability)
        review_from = float(values[rank - 1]) if values[rank - 1] < value else None
        ranks_only = (
            f"at most {set_budget(n, confidence):.1%} in {confidence:.0%} of good sets" if rank == n
            else f"at most {false_alarm_rate:g} on average"
        )
        band = f"; review from {split} ({ranks_only}, no assumption)" if review_from is not None else ""
        fitted = "the log-odds of their scores" if probability else "their scores"
        bound = f"the {guard_confidence:.0%} upper bound of the {1 - false_alarm_rate:.0%} quantile of a Gumbel law fitted to {fitted}"
        where = f"{value:.6g}, {bound}" if value > values[-1] else f"the largest score, which lies above {bound}"
        rule = (
            f"conformal on {n} {source} {GUARD_BAND}: anomalous above {where} (aims at false alarms at most "
            f"{false_alarm_rate:g} in {confidence:.0%} of good sets; {n} good images are too few for their ranks alone, "
            f"{needed} would be enough; this assumes the scores of normal parts have no longer upper tail than that law)"
            f"{band}"
        )
        return Threshold(value, rule, review_from)
    top = n if strict is None else strict
    where = "the largest score" if top == n else f"the {top}-th smallest score"
    if strict is None:
        promise = (
            f"false alarms at most {set_budget(n, confidence):.1%} in {confidence:.0%} of good sets; "
            f"{needed} good images would keep {false_alarm_rate:g}"
        )
    else:
        promise = f"false alarms at most {false_alarm_rate:g} in {confidence:.0%} of good sets"
    review_from = float(values[rank - 1]) if rank < top else None
    band = f"; review down to the {rank}-th smallest (at most {false_alarm_rate:g} on average)" if review_from is not None else ""
    rule = f"conformal on {n} {source}: anomalous above {where} ({promise}){band}"
    return Threshold(float(values[top - 1]), rule, review_from)


def goods_for(false_alarm_rate: float, confidence: float = GOOD_SET_CONFIDENCE) -> int:
    """The fewest good images whose largest score keeps ``false_alarm_rate`` for ``confidence`` of good sets."""
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - false_alarm_rate))


def decide(scores: np.ndarray, threshold: Threshold) -> np.ndarray:
    """(N,) bool: True where the statistic is strictly above the threshold."""
    return np.asarray(scores, dtype=np.float64).reshape(-1) > threshold.value


def in_review(scores: np.ndarray, threshold: Threshold) -> np.ndarray:
    """(N,) bool: True where the statistic lies in the threshold's review band."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if threshold.review_from is None:
        return np.zeros(values.shape, dtype=bool)
    return (values > threshold.review_from) & (values <= threshold.value)


def check_review_budget(budget: float) -> float:
    """Refuse a review budget outside [0, 1] in one sentence."""
    return require("--review-budget", budget, REVIEW_BUDGET)


def cap_review(scores: np.ndarray, threshold: Threshold, budget: float) -> Threshold:
    """``threshold`` with its review band narrowed from below so that at most ``budget`` of the
    images go to review (the highest statistics of the band stay; the others become normal).
    The anomalous cut, and so the false-alarm budget, is unchanged."""
    budget = check_review_budget(budget)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    band = np.sort(values[in_review(values, threshold)])
    allowed = int(math.floor(budget * values.size + 1e-9))
    if band.size <= allowed:
        return threshold
    review_from = threshold.value if allowed == 0 else float(band[band.size - allowed - 1])
    note = f"; review capped at {budget:.0%} of the batch"
    return Threshold(threshold.value, threshold.rule + note, review_from)


def verdict_words(anomalous: np.ndarray | None, review: np.ndarray | None = None) -> list[str] | None:
    """Per image ``normal``, ``review`` or ``anomalous`` (None without a verdict)."""
    if anomalous is None:
        return None
    flags = np.asarray(anomalous, dtype=bool).reshape(-1)
    doubt = np.zeros_like(flags) if review is None else np.asarray(review, dtype=bool).reshape(-1)
    return [ANOMALOUS if a else (REVIEW if r else NORMAL) for a, r in zip(flags, doubt)]


def pixel_masks(maps: np.ndarray, threshold: Threshold) -> np.ndarray:
    """The same cut per pixel: (N, H, W) bool masks of ``maps > threshold`` (the image statistic
    must be the map maximum for masks and image verdicts to agree)."""
    return np.asarray(maps) > threshold.value


def with_verdict(result: "Result", threshold: Threshold, statistic: np.ndarray | None = None) -> "Result":
    """Set ``result``'s verdict fields from ``threshold`` applied to ``statistic`` (kept as its
    ``verdict_scores``; default: its image scores); returns ``result``. A part whose mask is not
    empty but whose statistic is at or below the cut goes to review, never to normal (the mask
    and the verdict come from different rules for U-Flow with good images)."""
    if statistic is not None:
        result.verdict_scores = np.asarray(statistic, dtype=np.float64).reshape(-1)
    result.is_anomalous = decide(result.decision_scores(), threshold)
    result.needs_review = in_review(result.decision_scores(), threshold)
    if result.masks is not None:  # a part the method outlined a defect on is never called normal
        outlined = np.asarray(result.masks).reshape(len(result.is_anomalous), -1).any(axis=1)
        result.needs_review = result.needs_review | (outlined & ~result.is_anomalous)
    result.threshold = threshold.value
    result.review_threshold = threshold.review_from
    result.threshold_rule = threshold.rule
    return result


def limit_review(result: "Result", budget: float) -> "Result":
    """Cap ``result``'s review share at ``budget`` (:func:`cap_review`); returns ``result``."""
    if result.review_threshold is None or result.threshold is None or result.is_anomalous is None:
        return result
    threshold = Threshold(result.threshold, result.threshold_rule or "", result.review_threshold)
    return with_verdict(result, cap_review(result.decision_scores(), threshold, budget))
