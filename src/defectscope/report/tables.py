"""Score tables (CSV) and metric tables (markdown).

Metric values are shown as percentages with one decimal (``0.9734`` -> ``97.3``), the usual way
anomaly-detection results are reported; files meant for machines (``metrics.json``) keep
fractions. Undefined values (``None`` or NaN, e.g. a pixel metric for a category without masks)
are shown as ``n/a``; the **mean** row averages each column over the categories where it is
defined.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from defectscope.report.atomic import atomic_write_text

METRIC_ORDER: tuple[str, ...] = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "verdict_false_alarm_rate",
    "verdict_recall",
    "verdict_review_share",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_aupro",
)
SHORT_NAMES: dict[str, str] = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1_max": "I-F1",
    "verdict_false_alarm_rate": "false alarms",
    "verdict_recall": "recall",
    "verdict_review_share": "review",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1_max": "P-F1",
    "pixel_aupro": "AUPRO",
}
"""Column headers for a terminal: the verdict's false-alarm rate (normal images called anomalous),
recall (defective images called anomalous) and review share (images sent to review) next to the
ranking metrics (I- image, P- pixel)."""
TERMINAL_METRICS: tuple[str, ...] = tuple(name for name in METRIC_ORDER if name not in ("image_ap", "pixel_f1_max"))
"""The columns the terminal table shows (80 columns wide); metrics.md and metrics.json keep all."""
NOT_AVAILABLE = "n/a"
MEAN_LABEL = "mean"


def score_order(paths: Sequence[str], scores: Sequence[float] | np.ndarray) -> list[int]:
    """Indices sorted most anomalous first: score descending, ties broken by path ascending."""
    score_array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(paths) != score_array.size:
        raise ValueError(f"got {len(paths)} paths but {score_array.size} scores")
    if not np.all(np.isfinite(score_array)):
        bad = [str(paths[i]) for i in np.flatnonzero(~np.isfinite(score_array))[:3]]
        raise ValueError(f"scores must be finite; not finite for {', '.join(bad)}")
    return sorted(range(score_array.size), key=lambda index: (-score_array[index], str(paths[index])))


def write_scores_csv(
    path: str | Path,
    paths: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    *,
    labels: Sequence[str | None] | None = None,
    extra_columns: Mapping[str, Sequence[Any]] | None = None,
    verdicts: Sequence[str | None] | None = None,
    verdict_scores: Sequence[float | None] | None = None,
) -> Path:
    """Write a CSV of image scores, most anomalous first, atomically.

    Columns: ``path, score, rank`` (rank 1 = most anomalous; ties in score are ordered by path
    and still get distinct ranks), then ``verdict`` when ``verdicts`` is given, ``verdict_score``
    (the statistic the threshold applies to) when ``verdict_scores`` is given, ``label`` when
    ``labels`` is given, then the ``extra_columns`` in their given order. Scores are written
    with full float precision; None and NaN as empty cells.
    """
    order = score_order(paths, scores)
    score_array = np.asarray(scores, dtype=np.float64).reshape(-1)
    columns: dict[str, Sequence[Any]] = {}
    if verdicts is not None:
        columns["verdict"] = verdicts
    if verdict_scores is not None:
        columns["verdict_score"] = [None if v is None or math.isnan(v) else repr(float(v)) for v in verdict_scores]
    if labels is not None:
        columns["label"] = labels
    for name, values in (extra_columns or {}).items():
        if name in ("path", "score", "rank") or name in columns:
            raise ValueError(f"extra column name '{name}' collides with a standard column")
        columns[name] = values
    for name, values in columns.items():
        if len(values) != len(paths):
            raise ValueError(f"column '{name}' has {len(values)} values for {len(paths)} paths")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "score", "rank", *columns])
    for rank, index in enumerate(order, start=1):
        extra = ["" if values[index] is None else values[index] for values in columns.values()]
        writer.writerow([str(paths[index]), repr(float(score_array[index])), rank, *extra])
    return atomic_write_text(path, buffer.getvalue())


def _defined(value: float | None) -> bool:
    return value is not None and not math.isnan(float(value))


def format_metric(value: float | None) -> str:
    """A metric fraction as a percentage with one decimal, or ``n/a`` when undefined."""
    if not _defined(value):
        return NOT_AVAILABLE
    return f"{100.0 * float(value):.1f}"


def short_name(metric: str) -> str:
    """The terminal header of ``metric`` (:data:`SHORT_NAMES`, else the name itself)."""
    return SHORT_NAMES.get(metric, metric)


def metric_columns(metrics: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """Metric names present in any category: the standard ones in fixed order, then the rest."""
    seen: list[str] = []
    for category_metrics in metrics.values():
        for name in category_metrics:
            if name not in seen:
                seen.append(name)
    standard = [name for name in METRIC_ORDER if name in seen]
    return standard + [name for name in seen if name not in METRIC_ORDER]


def metric_means(metrics: Mapping[str, Mapping[str, float | None]]) -> dict[str, float | None]:
    """Mean of each metric over the categories where it is defined (None if defined nowhere)."""
    means: dict[str, float | None] = {}
    for name in metric_columns(metrics):
        values = [float(m[name]) for m in metrics.values() if _defined(m.get(name))]
        means[name] = float(np.mean(values)) if values else None
    return means


def _markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def metrics_markdown(metrics: Mapping[str, Mapping[str, float | None]]) -> str:
    """A markdown table: one row per category plus a final **mean** row; values in percent."""
    if not metrics:
        raise ValueError("metrics_markdown needs at least one category")
    columns = metric_columns(metrics)
    lines = [
        "| " + " | ".join(["category", *columns]) + " |",
        "|" + "|".join([":---", *(["---:"] * len(columns))]) + "|",
    ]
    for category, category_metrics in metrics.items():
        cells = [_markdown_cell(str(category)), *(format_metric(category_metrics.get(name)) for name in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    means = metric_means(metrics)
    lines.append("| " + " | ".join([f"**{MEAN_LABEL}**", *(format_metric(means[name]) for name in columns)]) + " |")
    return "\n".join(lines) + "\n"
