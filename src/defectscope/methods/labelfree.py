"""The label-free verdict: find the batch's normal group with rules that assume little about its
shape, and send to review what they disagree on.

An unlabeled batch mixes normal and defective parts in unknown shares (a production batch is
mostly normal, a benchmark test set can be three-quarters defective), and the normal parts' scores
have no fixed shape (tight on a texture, wide and flat or even two-grouped on solar cells with
several looks). The rule works on the batch's log map maxima with three cuts, each separating a low
"normal" group from the rest under a different assumption:

1. ``Gumbel``: the 90 % upper bound of the 95 % quantile of a Gumbel null (a Gumbel + Gaussian
   mixture when BIC prefers it; :func:`defectscope.methods.verdict.gumbel_threshold`): assumes
   the normal maxima follow the extreme-value law;
2. ``Otsu``: the split of the sorted values into two groups with the largest between-group
   variance (the lower group holding at least ``MIN_GROUP`` of the batch): assumes only that the
   groups differ in level;
3. ``knee``: where the sorted values bend from the slow rise of a dense normal group into the
   faster rise of spread-out defects (one knot of a continuous piecewise-linear fit of the values
   against their rank, least squares): assumes only that the normal group is the denser one.

Which cut makes a part ``anomalous`` depends on whether the batch splits into two groups at all:
Otsu's separation (between-group variance over total variance, :func:`separation`) is compared with
what ``SPLIT_LEVEL`` (90 %) of batches of the same size drawn from a flat law reach
(:func:`flat_separation`; a flat law is the most two-group-like of the symmetric one-peak laws: its
separation is 3/4, a Gaussian's 2/pi). Beyond it the batch holds two groups clearly apart and the
anomalous cut is Otsu's (the Gumbel and the knee then tend to fall inside a wide defect group);
otherwise (one group, several looks of normal, groups that overlap, a batch of good parts) it is
the highest of the three (all agree). ``review`` lies between the anomalous cut and the lowest of
the three (``--review-budget`` caps it), ``normal`` at or below. Batches of fewer than
``MIN_SPLIT_SIZE`` images get one Gumbel law of the whole batch (no mixture: too few images to
find two groups), with the parts above the batch median sent to review.

Chosen on development data (docs/VERDICTS.md: the nine shared batches, the demo's 60 elpv cells,
all 2,624 elpv cells, the pose-and-look proxy and batches of their normal images alone, MuSc and
CoDeGraph): false alarms at most 5 % on each mixed batch, mean recall 61 % on the shared batches and
the demo (the three-way agreement everywhere: 53 %). Leaving the Gumbel cut out where the batch
is not clearly two groups (the highest of Otsu, the knee and a rank-based lower-part cut instead)
would reach 72 %, but flags 12-29 % of the parts of most batches of good parts; a cut on map
maxima cannot tell a batch's upper normal tail from defects there.
"""

from __future__ import annotations

import math
from functools import lru_cache

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
SPLIT_LEVEL = 0.9
"""A batch counts as two groups clearly apart when its separation exceeds this quantile of the
separation of same-size batches from a flat law."""
_FLAT_DRAWS = 400
MIN_SPLIT_SIZE = 10
"""Below this many images only the Gumbel cut is used (two groups cannot be told apart)."""
_MAX_KNOTS = 400


def _between_shares(values: np.ndarray, min_group: float) -> tuple[np.ndarray, np.ndarray]:
    """(sizes of the lower group, between-group variance of each split / n^2) for sorted ``values``."""
    n = values.size
    first = max(1, int(math.ceil(min_group * n)))
    sizes = np.arange(first, n)
    sums = np.cumsum(values)
    lower_mean = sums[sizes - 1] / sizes
    upper_mean = (sums[-1] - sums[sizes - 1]) / (n - sizes)
    return sizes, sizes * (n - sizes) * (upper_mean - lower_mean) ** 2 / float(n * n)


def separation(x: np.ndarray, min_group: float = MIN_GROUP) -> float:
    """Otsu's separation of ``x``: the largest between-group variance of a two-group split (the
    lower group holding at least ``min_group``) over the total variance, in [0, 1]; 0 for a
    constant batch. A flat law gives 3/4, a Gaussian 2/pi, two groups far apart nearly 1."""
    values = np.sort(np.asarray(x, dtype=np.float64).reshape(-1))
    total = float(values.var()) if values.size else 0.0
    if values.size < 2 or total <= 0:
        return 0.0
    sizes, between = _between_shares(values, min_group)
    return float(between.max() / total) if sizes.size else 0.0


@lru_cache(maxsize=64)
def flat_separation(n: int, level: float = SPLIT_LEVEL, min_group: float = MIN_GROUP) -> float:
    """The ``level`` quantile of :func:`separation` over batches of ``n`` draws from a flat
    (uniform) law: Monte Carlo, seeded by ``n`` (the same answer every time)."""
    rng = np.random.default_rng(n)
    draws = [separation(rng.random(n), min_group) for _ in range(_FLAT_DRAWS)]
    return float(np.quantile(draws, level))


def otsu_cut(x: np.ndarray, min_group: float = MIN_GROUP) -> float:
    """The largest value of the lower group of Otsu's two-group split of ``x``."""
    values = np.sort(np.asarray(x, dtype=np.float64).reshape(-1))
    sizes, between = _between_shares(values, min_group)
    if sizes.size == 0:
        return float(values[-1])
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
    scores: np.ndarray, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, *, confidence: float = CONFIDENCE, statistic: str = "scores"
) -> Threshold:
    """The verdict of an unlabeled batch (see the module docstring): anomalous above Otsu's cut of
    the log ``scores`` (which must be positive) when the batch splits into two groups clearly
    apart, else above the highest of the Gumbel, Otsu and knee cuts; review down to the lowest."""
    false_alarm_rate = check_false_alarm_rate(false_alarm_rate)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ConfigError("the label-free verdict needs finite scores")
    if np.any(values <= 0):
        raise ConfigError("the label-free verdict needs positive scores (it compares them on a log scale)")
    if values.size < MIN_SPLIT_SIZE:
        logs = np.log(values)
        null = NullFit(*weighted_gumbel(logs, np.ones(logs.size)), float(logs.size), 1) if np.ptp(logs) > 0 else None
        cut = float(values.max()) if null is None else math.exp(null.quantile_bound(false_alarm_rate, confidence))
        median = float(np.median(values))
        rule = (
            f"label-free, false-alarm budget {false_alarm_rate:g}, a batch of {values.size} (too few to tell a normal group from "
            f"defects): anomalous above the {confidence:.0%} upper bound of the {1 - false_alarm_rate:.0%} quantile of one Gumbel "
            f"law of the batch's log {statistic}, review above the batch median"
        )
        return Threshold(cut, rule, median if median < cut else None)
    gumbel = gumbel_threshold(values, false_alarm_rate, confidence=confidence, statistic=statistic)
    logs = np.log(values)
    cuts = {"Gumbel": math.log(gumbel.value), "Otsu": otsu_cut(logs), "knee": knee_cut(logs)}
    split, flat = separation(logs), flat_separation(values.size)
    apart = split > flat
    high = cuts["Otsu"] if apart else max(cuts.values())
    low = min(cuts.values())
    listed = ", ".join(f"{name} {math.exp(value):.4g}" for name, value in cuts.items())
    if apart:
        how = (
            f"two groups clearly apart (Otsu's separation {split:.3f}, above {flat:.3f}, which {SPLIT_LEVEL:.0%} of flat "
            f"batches of {values.size} stay under): anomalous above Otsu's cut"
        )
    else:
        how = (
            f"no clear two-group split (Otsu's separation {split:.3f}, {SPLIT_LEVEL:.0%} of flat batches of {values.size} "
            f"stay under {flat:.3f}): anomalous above the highest of three cuts"
        )
    rule = (
        f"label-free, false-alarm budget {false_alarm_rate:g}, on the batch's log {statistic}: {how}; review down to the lowest "
        f"({listed})"
    )
    return Threshold(math.exp(high), rule, math.exp(low) if low < high else None)
