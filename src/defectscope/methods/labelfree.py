"""The label-free verdict: three ways of finding a batch's normal group, and a review band where
they disagree.

An unlabeled batch mixes normal and defective parts in unknown shares (a production batch is
mostly normal, a benchmark test set can be three-quarters defective), and the normal parts' scores
have no fixed shape (tight on a texture, wide and flat on solar cells with several looks). No
single model of that shape held on every development batch, so three cuts that assume different
things each separate a low "normal" group from the rest of the batch's log map maxima:

1. ``gumbel``: the 90 % upper bound of the 95 % quantile of a Gumbel null (a Gumbel + Gaussian
   mixture when BIC prefers it; :func:`defectscope.methods.verdict.gumbel_threshold`): assumes
   the normal maxima follow the extreme-value law;
2. ``otsu``: the split of the sorted values into two groups with the largest between-group
   variance (Otsu's rule, the lower group holding at least ``MIN_GROUP`` of the batch): assumes
   only that the two groups differ in level;
3. ``knee``: where the sorted values bend from the slow rise of a tight normal group into the
   faster rise of spread-out defects (one knot of a continuous piecewise-linear fit of the values
   against their rank, least squares): assumes only that the normal group is the denser one.

A part is ``anomalous`` above the highest cut (all three agree), ``review`` between the lowest and
the highest (the batch cannot tell), ``normal`` at or below the lowest. Batches of fewer than
``MIN_SPLIT_SIZE`` images get one Gumbel law of the whole batch (no mixture: too few images to
find two groups), with the parts above the batch median sent to review.
Chosen on the nine shared batches and the demo's 60 elpv cells (docs/VERDICTS.md): the three-way
agreement kept false alarms at or under 2.1 % on each, where the Gumbel cut alone gave 41.7 % on
the demo; it trades recall for review (mean recall 64 -> 53 %, missed defects 36 -> 26 %).
"""

from __future__ import annotations

import math

import numpy as np

from defectscope.errors import ConfigError
from defectscope.methods.verdict import (
    CONFIDENCE,
    DEFAULT_FALSE_ALARM_RATE,
    NullFit,
    Threshold,
    check_false_alarm_rate,
    gumbel_threshold,
    weighted_gumbel,
)

MIN_GROUP = 0.2
"""Otsu and the knee keep at least this share of the batch in the lower (normal) group."""
MIN_SPLIT_SIZE = 10
"""Below this many images only the Gumbel cut is used (two groups cannot be told apart)."""
_MAX_KNOTS = 400


def otsu_cut(x: np.ndarray, min_group: float = MIN_GROUP) -> float:
    """The largest value of the lower group of Otsu's two-group split of ``x``."""
    values = np.sort(np.asarray(x, dtype=np.float64))
    n = values.size
    first = max(1, int(math.ceil(min_group * n)))
    sizes = np.arange(first, n)
    if sizes.size == 0:
        return float(values[-1])
    sums = np.cumsum(values)
    lower_mean = sums[sizes - 1] / sizes
    upper_mean = (sums[-1] - sums[sizes - 1]) / (n - sizes)
    between = sizes * (n - sizes) * (upper_mean - lower_mean) ** 2
    return float(values[sizes[int(np.argmax(between))] - 1])


def knee_cut(x: np.ndarray, min_group: float = MIN_GROUP) -> float:
    """The value at the knot of the best one-knot continuous piecewise-linear fit of sorted ``x``
    against rank (the end of the slowly rising lower group)."""
    values = np.sort(np.asarray(x, dtype=np.float64))
    n = values.size
    ranks = np.arange(n, dtype=np.float64)
    first, last = max(3, int(math.ceil(min_group * n))), n - 2
    if last <= first:
        return float(values[-1])
    knots = np.unique(np.linspace(first, last - 1, min(_MAX_KNOTS, last - first)).round().astype(int))
    errors = []
    for knot in knots:
        design = np.stack([np.ones(n), ranks, np.maximum(ranks - knot, 0.0)], axis=1)
        coef, *_ = np.linalg.lstsq(design, values, rcond=None)
        errors.append(float(((design @ coef - values) ** 2).sum()))
    return float(values[knots[int(np.argmin(errors))] - 1])


def label_free_threshold(
    scores: np.ndarray, alpha: float = DEFAULT_FALSE_ALARM_RATE, *, confidence: float = CONFIDENCE, statistic: str = "scores"
) -> Threshold:
    """The verdict of an unlabeled batch (see the module docstring): anomalous above the highest
    of the Gumbel, Otsu and knee cuts of the log ``scores`` (which must be positive), review
    between the lowest and the highest."""
    alpha = check_false_alarm_rate(alpha)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ConfigError("the label-free verdict needs finite scores")
    if np.any(values <= 0):
        raise ConfigError("the label-free verdict needs positive scores (it compares them on a log scale)")
    if values.size < MIN_SPLIT_SIZE:
        logs = np.log(values)
        null = NullFit(*weighted_gumbel(logs, np.ones(logs.size)), float(logs.size), 1) if np.ptp(logs) > 0 else None
        cut = float(values.max()) if null is None else math.exp(null.quantile_bound(alpha, confidence))
        median = float(np.median(values))
        rule = (
            f"label-free, false-alarm budget {alpha:g}, a batch of {values.size} (too few to tell a normal group from "
            f"defects): anomalous above the {confidence:.0%} upper bound of the {1 - alpha:.0%} quantile of one Gumbel "
            f"law of the batch's log {statistic}, review above the batch median"
        )
        return Threshold(cut, rule, median if median < cut else None)
    gumbel = gumbel_threshold(values, alpha, confidence=confidence, statistic=statistic)
    logs = np.log(values)
    cuts = {"Gumbel": math.log(gumbel.value), "Otsu": otsu_cut(logs), "knee": knee_cut(logs)}
    high, low = max(cuts.values()), min(cuts.values())
    listed = ", ".join(f"{name} {math.exp(value):.4g}" for name, value in cuts.items())
    rule = (
        f"label-free, false-alarm budget {alpha:g}: anomalous above the highest of three cuts that each separate "
        f"the batch's normal group in its log {statistic} ({listed}), review down to the lowest"
    )
    return Threshold(math.exp(high), rule, math.exp(low) if low < high else None)
