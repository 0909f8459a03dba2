"""The report's histogram of verdict scores (inline SVG), bars stacked by verdict, with the
threshold and the review band drawn on it."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from defectscope.report.markup import VERDICT_COLOURS, VERDICT_ORDER, escape


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def verdict_histogram(
    values: Sequence[float],
    verdicts: Sequence[str | None],
    *,
    threshold: float | None = None,
    review_from: float | None = None,
    axis_label: str = "verdict score",
    bins: int = 30,
    width: int = 760,
    height: int = 190,
) -> str:
    """An inline SVG histogram of ``values`` (non-finite ones are left out), bars stacked by
    verdict (anomalous red, review amber, normal green, none grey), the ``threshold`` drawn as a
    red line (``class="threshold"``), the review band from ``review_from`` to it shaded amber
    with a dashed line at its lower edge (``class="review-edge"``), the region above the
    threshold shaded red. Empty string when no value is finite."""
    pairs = [(float(v), w) for v, w in zip(values, verdicts) if v is not None and math.isfinite(float(v))]
    if not pairs:
        return ""
    marks = [m for m in (threshold, review_from) if m is not None and math.isfinite(m)]
    known = [v for v, _ in pairs] + marks
    low, high = min(known), max(known)
    if high <= low:
        low, high = low - 0.5 * max(abs(low), 1.0), high + 0.5 * max(abs(high), 1.0)
    first, last = low, high
    pad = 0.02 * (high - low)
    low, high = low - pad, high + pad
    if threshold is not None and math.isfinite(threshold):
        # Bin edges fall on the threshold, so that no bar holds parts from both sides of it.
        step = (high - low) / bins
        low = threshold - math.ceil((threshold - low) / step - 1e-9) * step
        bins = max(1, math.ceil((high - low) / step - 1e-9))
        high = low + bins * step
    left, right, top, bottom = 44, width - 12, 34, height - 48

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * (right - left)

    kinds = ["normal", "review", "anomalous", None]
    counts = [dict.fromkeys(kinds, 0) for _ in range(bins)]
    for value, word in pairs:
        index = min(bins - 1, max(0, int((value - low) / (high - low) * bins)))
        counts[index][word if word in VERDICT_ORDER else None] += 1
    tallest = max(1, max(sum(c.values()) for c in counts))
    step = (right - left) / bins
    nodes = []
    if threshold is not None and math.isfinite(threshold):
        at = x(threshold)
        nodes.append(f'<rect class="zone-anomalous" x="{at:.1f}" y="{top}" width="{right - at:.1f}" height="{bottom - top}" fill="#c62828" fill-opacity="0.07"/>')
        if review_from is not None and math.isfinite(review_from) and review_from < threshold:
            edge = x(review_from)
            nodes.append(f'<rect class="zone-review" x="{edge:.1f}" y="{top}" width="{at - edge:.1f}" height="{bottom - top}" fill="#f0a202" fill-opacity="0.15"/>')
    for index, count in enumerate(counts):
        y = float(bottom)
        for word in kinds:
            if not count[word]:
                continue
            bar = count[word] / tallest * (bottom - top)
            y -= bar
            colour = VERDICT_COLOURS[word]
            nodes.append(
                f'<rect class="bar {word or "none"}" x="{left + index * step + 0.5:.1f}" y="{y:.1f}" width="{max(step - 1, 0.5):.1f}" '
                f'height="{bar:.1f}" fill="{colour}"><title>{count[word]} {word or "part(s)"}</title></rect>'
            )
    nodes.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#9ca3af"/>')
    nodes.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="#9ca3af"/>')
    for tick in np.linspace(first, last, 5):
        nodes.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#9ca3af"/>')
        nodes.append(f'<text x="{x(tick):.1f}" y="{bottom + 15}" text-anchor="middle">{_fmt(float(tick))}</text>')
    nodes.append(f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{tallest}</text>')
    nodes.append(f'<text x="{left - 4}" y="{bottom}" text-anchor="end">0</text>')
    legend = "bars: red anomalous, amber review, green normal" if any(w in VERDICT_ORDER for _, w in pairs) else "parts per bin"
    nodes.append(f'<text x="{(left + right) / 2:.1f}" y="{bottom + 32}" text-anchor="middle">{escape(axis_label)} ({legend})</text>')
    if review_from is not None and math.isfinite(review_from) and (threshold is None or review_from < threshold):
        edge = x(review_from)
        nodes.append(f'<line class="review-edge" x1="{edge:.1f}" x2="{edge:.1f}" y1="{top - 4}" y2="{bottom}" stroke="#a86b00" stroke-width="2" stroke-dasharray="5 3"/>')
        nodes.append(f'<text x="{edge - 4:.1f}" y="{top - 6}" text-anchor="end" style="fill:#a86b00">review above {_fmt(review_from)}</text>')
    if threshold is not None and math.isfinite(threshold):
        at = x(threshold)
        nodes.append(f'<line class="threshold" x1="{at:.1f}" x2="{at:.1f}" y1="{top - 28}" y2="{bottom}" stroke="#c62828" stroke-width="2.5"/>')
        anchor = "start" if at < (left + right) / 2 else "end"
        shift = 4 if anchor == "start" else -4
        nodes.append(f'<text x="{at + shift:.1f}" y="{top - 19}" text-anchor="{anchor}" style="fill:#c62828;font-weight:bold">anomalous above {_fmt(threshold)}</text>')
    label = f"histogram of {len(pairs)} parts' {axis_label}"
    return (
        f'<svg class="histogram" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">{"".join(nodes)}</svg>'
    )
