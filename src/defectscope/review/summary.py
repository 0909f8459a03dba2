"""What the review says about the run: progress, overturned verdicts and a suggested threshold.

* A **false alarm** is a part the run called ``anomalous`` that the reviewer confirmed good; a
  **miss** is one the run called ``normal`` that the reviewer confirmed defective. Parts the run
  sent to ``review`` are neither: ``review_settled`` counts how many of them the reviewer
  confirmed good and defective (None when the run sent none to review).
* The **suggested threshold** is the cut on the run's verdict statistic (``verdict_score``, or
  ``score`` for folders without that column; the units of the run's threshold) that puts the
  fewest confirmed parts on the wrong side (confirmed defective at or below it, confirmed good above it). Cuts are taken midway
  between neighbouring confirmed scores; among equally good cuts the lowest wins, so that defects
  are caught first. It needs at least one confirmed good and one confirmed defective part.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from defectscope.review.decisions import DECISIONS, DEFECTIVE, Decision
from defectscope.review.folder import ReviewRun

THRESHOLD_RULE = (
    "fewest confirmed parts on the wrong side of the cut (cuts midway between neighbouring "
    "confirmed scores; ties go to the lowest cut)"
)


def suggest_threshold(good: list[float], defective: list[float]) -> dict[str, Any] | None:
    """The cut that best separates confirmed-good from confirmed-defective scores (module rule).

    Returns ``{"threshold", "wrong", "rule"}`` (``wrong`` = confirmed parts on the wrong side),
    or None without both kinds of part or without two distinct scores.
    """
    if not good or not defective:
        return None
    values = np.unique(np.asarray(good + defective, dtype=np.float64))
    if values.size < 2:
        return None
    cuts = (values[:-1] + values[1:]) / 2.0
    good_array, defective_array = np.asarray(good), np.asarray(defective)
    wrong = (good_array[None, :] > cuts[:, None]).sum(axis=1) + (defective_array[None, :] <= cuts[:, None]).sum(axis=1)
    best = int(np.argmin(wrong))
    return {"threshold": float(cuts[best]), "wrong": int(wrong[best]), "rule": THRESHOLD_RULE}


def review_summary(run: ReviewRun, decisions: Mapping[str, Decision]) -> dict[str, Any]:
    """Counts per decision, reviewed (good or defective) of total, overturned verdicts, suggestion."""
    counts = {name: 0 for name in DECISIONS}
    good: list[float] = []
    defective: list[float] = []
    false_alarms = misses = 0
    settled = {"good": 0, "defective": 0}
    for path, entry in decisions.items():
        part = run.part(path)
        if part is None:
            continue
        counts[entry.decision] += 1
        if entry.decision == "good":
            good.append(part.decision_score)
            false_alarms += part.verdict == "anomalous"
            settled["good"] += part.verdict == "review"
        elif entry.decision in DEFECTIVE:
            defective.append(part.decision_score)
            misses += part.verdict == "normal"
            settled["defective"] += part.verdict == "review"
    return {
        "total": len(run.parts),
        "reviewed": len(good) + len(defective),
        "counts": counts,
        "false_alarms": false_alarms if run.has_verdicts else None,
        "misses": misses if run.has_verdicts else None,
        "review_settled": settled if any(part.verdict == "review" for part in run.parts) else None,
        "threshold": run.threshold,
        "threshold_rule": run.threshold_rule,
        "suggested": suggest_threshold(good, defective),
    }
