"""Verdicts: from image scores to "anomalous" / "normal" with a false-alarm budget.

Two rules, both pure functions of score arrays:

- :func:`label_free_threshold` (zero-shot batches, no labels). The batch is a mixture of normal
  images and defective ones in unknown shares (a production batch is mostly normal, a test set
  can be two-thirds defective), and defective images score higher. On the log scores a one- and
  a two-component Gaussian mixture are fitted (EM); when BIC prefers two components the lower one
  is the null (the normal images), else the whole batch is. The threshold is an upper confidence
  bound (``confidence``, default 90 %) of the null's ``1 - alpha`` quantile: the one-sided normal
  tolerance factor for the null's effective sample size. So, if the normal images' log scores
  are Gaussian and the mixture finds them, with probability about ``confidence`` the share of
  normal images flagged is at most ``alpha``; small batches get a wider margin. A lower component holding less than ``MIN_NULL_SHARE`` of the batch is taken for
  a handful of unusually clean images and the upper one is the null. Log scores make the rule
  invariant to a rescaling of the scores (a different backbone or distance scale). The choices
  (map maxima as the statistic, 90 %, 10 %) were made on the shared categories; see
  docs/BENCHMARKS.md, "Verdicts".
- :func:`conformal_threshold` (known-good images): split-conformal calibration. With n good
  scores, the threshold is the ``ceil((n + 1)(1 - alpha))``-th smallest; a new normal image
  (exchangeable with the good ones) scores above it with probability at most ``alpha``.

An image is anomalous when its statistic is strictly above the threshold (:func:`decide`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from defectscope.errors import ConfigError

if TYPE_CHECKING:
    from defectscope.methods.base import Result

DEFAULT_FALSE_ALARM_RATE = 0.05
CONFIDENCE = 0.9
MIN_NULL_SHARE = 0.1
_EM_STARTS = (0.25, 0.5, 0.75)
_EM_ITERATIONS = 300
_MIN_MIXTURE_SIZE = 6


@dataclass(frozen=True)
class Threshold:
    """A cut on a score statistic: ``value`` in the statistic's units, ``rule`` says how it was set."""

    value: float
    rule: str


@dataclass(frozen=True)
class NullFit:
    """The Gaussian fitted to the normal images' (log) scores and its effective sample size."""

    mean: float
    sd: float
    count: float
    components: int


def check_false_alarm_rate(alpha: float) -> float:
    """Refuse a false-alarm budget outside (0, 1) in one sentence."""
    if not (isinstance(alpha, (int, float)) and 0.0 < float(alpha) < 1.0):
        raise ConfigError(f"--false-alarm-rate must be a number between 0 and 1 (exclusive), got {alpha}")
    return float(alpha)


def _scores(scores: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ConfigError(f"{what} needs at least one score")
    if not np.all(np.isfinite(values)):
        raise ConfigError(f"{what} got scores that are not finite")
    return values


def tolerance_factor(count: float, alpha: float, confidence: float = CONFIDENCE) -> float:
    """k such that mean + k sd of ``count`` Gaussian draws exceeds the true ``1 - alpha``
    quantile with probability ``confidence`` (one-sided normal tolerance bound, noncentral t)."""
    n = max(float(count), 2.0)
    return float(stats.nct.ppf(confidence, n - 1.0, stats.norm.ppf(1.0 - alpha) * math.sqrt(n)) / math.sqrt(n))


def _gaussian_log_density(x: np.ndarray, mean: float, variance: float) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * variance) + (x - mean) ** 2 / variance)


def two_gaussians(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Maximum-likelihood two-component 1-D Gaussian mixture by EM (best of a few starts that
    split the data at its quartiles and median). Returns (weights, means, sds, log-likelihood),
    components ordered by mean. Variances are floored at (1e-2 sd(x))^2 so that a component
    cannot collapse onto one point."""
    x = np.asarray(x, dtype=np.float64)
    floor = max((1e-2 * x.std()) ** 2, 1e-12)
    best: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
    for start in _EM_STARTS:
        upper = (x > np.quantile(x, start)).astype(np.float64)
        if not 0 < upper.sum() < x.size:
            continue
        resp = np.stack([1.0 - upper, upper])
        previous = -np.inf
        for _ in range(_EM_ITERATIONS):
            mass = resp.sum(axis=1) + 1e-12
            weights = mass / x.size
            means = resp @ x / mass
            variances = np.maximum((resp * (x - means[:, None]) ** 2).sum(axis=1) / mass, floor)
            joint = np.log(weights + 1e-300)[:, None] + np.stack(
                [_gaussian_log_density(x, m, v) for m, v in zip(means, variances)]
            )
            total = np.logaddexp(joint[0], joint[1])
            resp = np.exp(joint - total)
            likelihood = float(total.sum())
            if likelihood - previous < 1e-7:
                break
            previous = likelihood
        if best is None or likelihood > best[3]:
            order = np.argsort(means)
            best = (weights[order], means[order], np.sqrt(variances[order]), likelihood)
    if best is None:
        raise ConfigError("a two-component fit needs at least two distinct scores")
    return best


def fit_null(x: np.ndarray) -> NullFit:
    """The null (normal-image) Gaussian of the values ``x``: the lower of two mixture components
    when BIC prefers two (and it holds at least MIN_NULL_SHARE of the batch, else the upper one),
    otherwise a single Gaussian of all values."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    single = NullFit(float(x.mean()), float(x.std(ddof=1)) if n > 1 else 0.0, float(n), 1)
    if n < _MIN_MIXTURE_SIZE or np.ptp(x) == 0:
        return single
    variance = max(float(x.var()), 1e-12)
    bic_one = -2.0 * float(_gaussian_log_density(x, float(x.mean()), variance).sum()) + 2.0 * math.log(n)
    weights, means, sds, likelihood = two_gaussians(x)
    bic_two = -2.0 * likelihood + 5.0 * math.log(n)
    if bic_two >= bic_one:
        return single
    j = 0 if weights[0] >= MIN_NULL_SHARE else 1
    return NullFit(float(means[j]), float(sds[j]), float(weights[j] * n), 2)


def label_free_threshold(
    scores: np.ndarray, alpha: float = DEFAULT_FALSE_ALARM_RATE, *, confidence: float = CONFIDENCE, statistic: str = "scores"
) -> Threshold:
    """Threshold for an unlabeled batch (see the module docstring). ``scores`` must be positive
    (they are compared on a log scale); ``statistic`` names them in the rule text."""
    alpha = check_false_alarm_rate(alpha)
    values = _scores(scores, "the label-free verdict")
    if np.any(values <= 0):
        raise ConfigError("the label-free verdict needs positive scores (it compares them on a log scale)")
    null = fit_null(np.log(values))
    value = math.exp(null.mean + tolerance_factor(null.count, alpha, confidence) * null.sd)
    if null.components == 2:
        fitted = f"the lower of two Gaussian components of the batch's log {statistic} ({null.count / values.size:.0%} of the batch)"
    else:
        fitted = f"one Gaussian of the batch's log {statistic}"
    rule = (
        f"label-free, false-alarm budget {alpha:g}: {confidence:.0%} upper bound of the {1 - alpha:.0%} quantile of {fitted}"
    )
    return Threshold(value, rule)


def conformal_count(alpha: float) -> int:
    """The fewest good images for which split-conformal calibration at ``alpha`` is possible."""
    alpha = check_false_alarm_rate(alpha)
    n = 1
    while math.ceil((n + 1) * (1 - alpha) - 1e-9) > n:
        n += 1
    return n


def require_good_images(count: int, alpha: float) -> None:
    """Refuse, before any heavy work, a --good folder too small for conformal calibration."""
    needed = conformal_count(alpha)
    if count < needed:
        raise ConfigError(f"--good holds {count} image(s); a false-alarm rate of {alpha:g} needs at least {needed} good images")


def conformal_threshold(good_scores: np.ndarray, alpha: float = DEFAULT_FALSE_ALARM_RATE, *, source: str = "good images") -> Threshold:
    """Split-conformal threshold: the ceil((n + 1)(1 - alpha))-th smallest of n good scores;
    refuses when n < 1/alpha - 1 (no order statistic gives the guarantee)."""
    alpha = check_false_alarm_rate(alpha)
    values = np.sort(_scores(good_scores, "conformal calibration"))
    n = values.size
    rank = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    if rank > n:
        raise ConfigError(
            f"calibrating a false-alarm rate of {alpha:g} needs at least {conformal_count(alpha)} {source}, got {n}"
        )
    rule = f"conformal on {n} {source}: the {rank}-th smallest score, false-alarm rate at most {alpha:g}"
    return Threshold(float(values[rank - 1]), rule)


def decide(scores: np.ndarray, threshold: Threshold) -> np.ndarray:
    """(N,) bool: True where the statistic is strictly above the threshold."""
    return np.asarray(scores, dtype=np.float64).reshape(-1) > threshold.value


def pixel_masks(maps: np.ndarray, threshold: Threshold) -> np.ndarray:
    """The same cut per pixel: (N, H, W) bool masks of ``maps > threshold`` (the image statistic
    must be the map maximum for masks and image verdicts to agree)."""
    return np.asarray(maps) > threshold.value


def with_verdict(result: "Result", threshold: Threshold, statistic: np.ndarray | None = None) -> "Result":
    """Set ``result``'s verdict fields from ``threshold`` applied to ``statistic`` (kept as its
    ``verdict_scores``; default: its image scores); returns ``result``."""
    if statistic is not None:
        result.verdict_scores = np.asarray(statistic, dtype=np.float64).reshape(-1)
    result.is_anomalous = decide(result.decision_scores(), threshold)
    result.threshold = threshold.value
    result.threshold_rule = threshold.rule
    return result
