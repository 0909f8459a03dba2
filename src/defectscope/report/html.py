"""A single self-contained HTML report: the decision first, then the parts, then the details.

Layout, top to bottom: the decision in plain words ("K of N parts anomalous, R to review"), the
threshold rule in one sentence (the technical rule behind a "how the threshold was set"
disclosure), a histogram of the verdict scores with the anomalous threshold and the review band
drawn on it (inline SVG), the parts (anomalous first, then review, then normal; highest verdict
score first within each), then metrics, skipped files, communities and the settings (collapsed).

The file has inline CSS and every image embedded as a base64 data URI (JPEG thumbnails for
photos and overlays, PNG for masks): it can be mailed or archived and opened offline. It links
to nothing and runs no script. Thumbnails are shrunk to ``thumbnail_width`` pixels (160 by
default), about 15 KB per image, so a report of 1000 images stays around 15-20 MB.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from defectscope import __version__
from defectscope.report.atomic import atomic_write_text
from defectscope.report.overlay import colorbar_image, encode_image, make_thumbnail, resize_mask
from defectscope.report.tables import MEAN_LABEL, format_metric, metric_columns, metric_means

JPEG_QUALITY = 85


@dataclass
class ReportEntry:
    """One image in the report.

    Attributes:
        path: the image path as given by the user.
        score: the image score (higher = more anomalous).
        rank: 1 = most anomalous in the batch.
        thumbnail: the original image, uint8 (H, W) or (H, W, 3); shrunk for the report.
        overlay: its heat-map overlay, uint8 (H, W, 3); shrunk for the report.
        mask: the method's binary mask (any resolution) or None.
        label: ground-truth label or defect type when known, else None.
        verdict: the method's verdict (``anomalous``, ``review`` or ``normal``), or None when it gave none.
        verdict_score: the statistic the threshold applies to (scores.csv's ``verdict_score``);
            None or NaN when the verdict is no cut on a per-image number (then ``score`` is shown).
        pictures: the card's ``<img>`` tags, when already rendered by :func:`entry_pictures`
            (so that a caller rendering in threads encodes each thumbnail once); None: rendered here.
    """

    path: str
    score: float
    rank: int
    thumbnail: np.ndarray
    overlay: np.ndarray
    mask: np.ndarray | None = None
    label: str | None = None
    verdict: str | None = None
    verdict_score: float | None = None
    pictures: str | None = None

    @property
    def shown_score(self) -> float:
        """The number the card leads with: the verdict score when it is one, else the score."""
        value = self.verdict_score
        return float(self.score) if value is None or not math.isfinite(float(value)) else float(value)


VERDICT_ORDER = {"anomalous": 0, "review": 1, "normal": 2}
VERDICT_COLOURS = {"anomalous": "#c62828", "review": "#f0a202", "normal": "#2e7d32", None: "#9e9e9e"}
"""Anomalous red, review amber, normal green (no verdict grey): badges, card edges and histogram bars."""


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem;color:#1d1d1f;background:#fafafa}
h1{margin:0 0 .2rem;font-size:1.5rem}h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.meta{color:#666;margin:0}
table{border-collapse:collapse;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.mean td{font-weight:bold;background:#f6f6f6}
.kv th{width:12rem}
.none{color:#666;font-style:italic}
#decision{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;margin:.8rem 0 1rem}
.lead{font-size:1.35rem;margin:.2rem 0 .4rem}
.lead .n-anomalous{color:#c62828}.lead .n-review{color:#a86b00}.lead .n-normal{color:#2e7d32}
.rule{margin:.3rem 0;max-width:60rem}
.how{font-size:.9rem;margin:.3rem 0 .5rem}.how p{margin:.3rem 0}
.histogram{display:block;width:100%;max-width:760px;height:auto}
.histogram text{font-size:11px;fill:#374151}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(350px,1fr));gap:.8rem}
.card{background:#fff;border:1px solid #ddd;border-left:6px solid #9e9e9e;border-radius:6px;padding:.5rem;margin:0}
.card.anomalous{border-color:#c62828}.card.review{border-left-color:#f0a202}.card.normal{border-left-color:#2e7d32}
.imgs{display:flex;gap:4px}
.imgs img{width:calc(33.3% - 3px);max-width:160px;height:auto;display:block;image-rendering:auto}
figcaption{font-size:.85rem;margin-top:.3rem;word-break:break-all}
.figure{font-weight:bold;font-variant-numeric:tabular-nums}
.rank{color:#666}
.label{display:inline-block;background:#eef;border-radius:3px;padding:0 .3rem;margin-left:.3rem}
.verdict{display:inline-block;border-radius:3px;padding:0 .3rem;margin-right:.3rem;font-weight:bold;color:#fff}
.verdict.anomalous{background:#c62828}.verdict.review{background:#f0a202;color:#1d1d1f}.verdict.normal{background:#2e7d32}
.colorbar{display:flex;align-items:center;gap:.5rem;font-size:.85rem;margin:.4rem 0 .8rem}
.colorbar img{height:12px;width:256px}
details summary{cursor:pointer}
"""


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(array: np.ndarray, fmt: str) -> str:
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    payload = base64.b64encode(encode_image(array, fmt, quality=JPEG_QUALITY)).decode("ascii")
    return f"data:{mime};base64,{payload}"


def _img(array: np.ndarray, fmt: str, alt: str) -> str:
    height, width = np.asarray(array).shape[:2]
    return f'<img src="{_data_uri(array, fmt)}" width="{width}" height="{height}" alt="{_text(alt)}">'


def _setting_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _key_value_table(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_text(key)}</th><td>{_text(_setting_value(value))}</td></tr>" for key, value in items.items())
    return f'<table class="kv">{rows}</table>'


def _skipped_rows(skipped: Iterable[Any]) -> list[tuple[str, str]]:
    """Accept (path, reason) pairs, {"path", "reason"} mappings or objects with those attributes."""
    rows = []
    for item in skipped:
        if isinstance(item, Mapping):
            rows.append((str(item.get("path", "")), str(item.get("reason", ""))))
        elif hasattr(item, "path") and hasattr(item, "reason"):
            rows.append((str(item.path), str(item.reason)))
        else:
            item_path, reason = item
            rows.append((str(item_path), str(reason)))
    return rows


def _settings_section(settings: Mapping[str, Any]) -> str:
    """The run's settings, collapsed (they matter for reproducing the run, not for the decision)."""
    body = _key_value_table(settings) if settings else '<p class="none">none recorded</p>'
    return (
        f'<section id="settings"><h2>Settings</h2><details><summary>all {len(settings)} settings of this run</summary>'
        f"{body}</details></section>"
    )


def _summary_section(summary: str | Mapping[str, Any] | None) -> str:
    if summary is None:
        return ""
    body = _key_value_table(summary) if isinstance(summary, Mapping) else f"<p>{_text(summary)}</p>"
    return f'<section id="summary"><h2>Summary</h2>{body}</section>'


def _metrics_section(metrics: Mapping[str, Mapping[str, float | None]] | None) -> str:
    if not metrics:
        return ""
    columns = metric_columns(metrics)
    header = "".join(f"<th>{_text(name)}</th>" for name in ["category", *columns])
    rows = []
    for category, values in metrics.items():
        cells = "".join(f'<td class="num">{format_metric(values.get(name))}</td>' for name in columns)
        rows.append(f"<tr><td>{_text(category)}</td>{cells}</tr>")
    means = metric_means(metrics)
    mean_cells = "".join(f'<td class="num">{format_metric(means[name])}</td>' for name in columns)
    rows.append(f'<tr class="mean"><td>{MEAN_LABEL}</td>{mean_cells}</tr>')
    note = '<p class="meta">Values in percent; mean over the categories where a metric is defined.</p>'
    return f'<section id="metrics"><h2>Metrics</h2><table><tr>{header}</tr>{"".join(rows)}</table>{note}</section>'


def _skipped_section(skipped: Iterable[Any]) -> str:
    rows = _skipped_rows(skipped)
    if not rows:
        body = '<p class="none">none</p>'
    else:
        lines = "".join(f"<tr><td>{_text(item_path)}</td><td>{_text(reason)}</td></tr>" for item_path, reason in rows)
        body = f"<table><tr><th>file</th><th>reason</th></tr>{lines}</table>"
    return f'<section id="skipped"><h2>Skipped files ({len(rows)})</h2>{body}</section>'


def _communities_section(communities: Sequence[Mapping[str, Any]] | None) -> str:
    if communities is None:
        return ""
    if not communities:
        return '<section id="communities"><h2>Communities</h2><p class="none">none</p></section>'
    cards = []
    for community in communities:
        members = [str(member) for member in community.get("members", [])]
        image_png = community.get("image_png")
        picture = ""
        if image_png:
            payload = base64.b64encode(image_png).decode("ascii")
            picture = f'<img src="data:image/png;base64,{payload}" alt="community {_text(community.get("id"))}">'
        items = "".join(f"<li>{_text(member)}</li>" for member in members)
        cards.append(
            f'<div class="card"><h3>Community {_text(community.get("id"))} ({len(members)} images)</h3>'
            f"{picture}<details><summary>members</summary><ul>{items}</ul></details></div>"
        )
    return f'<section id="communities"><h2>Communities</h2><div class="grid">{"".join(cards)}</div></section>'


def _colorbar(color_range: tuple[float, float] | None) -> str:
    if color_range is None:
        return ""
    vmin, vmax = color_range
    bar = _img(colorbar_image(), "PNG", "colour scale")
    return (
        f'<div class="colorbar"><span>{vmin:.4g}</span>{bar}<span>{vmax:.4g}</span>'
        "<span>anomaly map colour scale, shared by all overlays</span></div>"
    )


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _share(value: Any) -> str:
    """0.05 -> '5 %', 0.025 -> '2.5 %'."""
    return f"{100 * float(value):.3g} %"


def entry_pictures(entry: ReportEntry, thumbnail_width: int = 160, resample: Image.Resampling = Image.Resampling.LANCZOS) -> str:
    """The card's pictures as ``<img>`` tags: image and overlay (JPEG), mask (PNG) when present;
    shrunk to ``thumbnail_width`` with ``resample``."""
    name = Path(str(entry.path)).name or str(entry.path)
    original = make_thumbnail(entry.thumbnail, thumbnail_width, resample)
    overlay = make_thumbnail(entry.overlay, thumbnail_width, resample)
    pictures = [_img(original, "JPEG", f"image {name}"), _img(overlay, "JPEG", f"heat map {name}")]
    if entry.mask is not None:
        mask = resize_mask(np.asarray(entry.mask), original.shape[:2])
        pictures.append(_img(mask, "PNG", f"mask {name}"))
    return "".join(pictures)


def card_order(entries: Sequence[ReportEntry]) -> list[ReportEntry]:
    """The cards' order, so that order and verdict agree: anomalous, then review, then normal
    (then parts without a verdict); within each, the highest verdict score first (the score where
    the verdict is no cut on a number), then the highest score, then the path."""
    return sorted(
        entries,
        key=lambda e: (VERDICT_ORDER.get(e.verdict or "", 3), -e.shown_score, -float(e.score), str(e.path)),
    )


def _short_name(path: str) -> str:
    """The last two components of a path (``crack/000.png``): the folder often names the defect."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if parts else path


def _entry_card(entry: ReportEntry, thumbnail_width: int, total: int) -> str:
    name = _short_name(str(entry.path))
    pictures = entry.pictures if entry.pictures is not None else entry_pictures(entry, thumbnail_width)
    label = f'<span class="label">{_text(entry.label)}</span>' if entry.label is not None else ""
    word = entry.verdict
    badge = f'<span class="verdict {word}">{word}</span>' if word else ""
    verdict_score = _number(entry.verdict_score)
    rank = f'<span class="rank">rank {int(entry.rank)} of {total} by score</span>'
    if word and verdict_score is not None:
        figures = f'<span class="figure">verdict score {verdict_score:.4g}</span>'
        if verdict_score != float(entry.score):
            figures += f'<br><span class="rank">ranking score {float(entry.score):.4g}, rank {int(entry.rank)} of {total}</span>'
        else:
            figures += f" {rank}"
    else:
        figures = f'<span class="figure">score {float(entry.score):.4g}</span> {rank}'
    kind = f" {word}" if word in VERDICT_ORDER else ""
    return (
        f'<figure class="card{kind}" data-verdict="{_text(word or "")}"><div class="imgs">{pictures}</div>'
        f"<figcaption>{badge}{figures}{label}"
        f'<br><span title="{_text(entry.path)}">{_text(name)}</span></figcaption></figure>'
    )


def _counts(entries: Sequence[ReportEntry], verdict_counts: Mapping[str, int] | None) -> dict[str, int] | None:
    """anomalous / review / normal counts of the whole run (``verdict_counts`` when the entries
    are only part of it), None when no part has a verdict."""
    if verdict_counts is not None:
        counts = {word: int(verdict_counts.get(word, 0)) for word in VERDICT_ORDER}
    else:
        judged = [entry.verdict for entry in entries if entry.verdict is not None]
        counts = {word: judged.count(word) for word in VERDICT_ORDER}
    return counts if sum(counts.values()) else None


def threshold_sentence(settings: Mapping[str, Any]) -> str:
    """How the verdict was reached, in one plain sentence built from the run's settings
    (``threshold``, ``threshold_applies_to``, ``false_alarm_rate``, ``good``, ``method``,
    ``review_threshold``, ``review_budget``); empty when the run had no threshold."""
    threshold = _number(settings.get("threshold"))
    rate = _number(settings.get("false_alarm_rate"))
    budget = f"at most {_share(rate)} of good parts" if rate is not None else "few good parts"
    if threshold is None:
        return _watch_sentence(settings, rate)
    if settings.get("threshold_applies_to") == "nfa":
        return (
            f"A part is called anomalous when the method's statistical test finds a region in its anomaly map that "
            f"chance alone would produce fewer than {threshold:g} time(s) on average (NFA at most {threshold:g}); "
            "this is a test on the map, not a cut on one score per part, so the histogram shows the score without a "
            "threshold line."
        )
    good = settings.get("good")
    if str(settings.get("threshold_rule", "")).startswith("uncalibrated"):
        source = "fixed by default, because the model had no normal images to calibrate it on: its false-alarm rate is unknown"
    elif good:
        source = f"set on the known-good images in {good} so that {budget} are flagged"
    elif str(settings.get("method", "")).lower() in ("prn", "uflow") or settings.get("protocol"):
        source = f"set on normal training images the model did not learn from, so that {budget} are flagged"
    else:
        source = (
            f"estimated from this batch alone (no known-good images were given), aiming to flag {budget}; "
            "give --good with known-good images for a cut you can rely on"
        )
    sentence = f"A part is called anomalous when its verdict score is above {threshold:.4g}, a cut {source}."
    review_from = _number(settings.get("review_threshold"))
    if review_from is not None:
        sentence += (
            f" Parts scoring between {review_from:.4g} and {threshold:.4g} go to review: there the scores cannot "
            "tell good parts from defective ones"
        )
        review_budget = _number(settings.get("review_budget"))
        sentence += f" (at most {_share(review_budget)} of the batch)." if review_budget is not None else "."
    return sentence


def _watch_sentence(settings: Mapping[str, Any], rate: float | None) -> str:
    """The rule of a ``watch`` run (its settings name a ``scorer``; the cut moves with the bank)."""
    scorer = settings.get("scorer")
    if scorer == "model":
        return f"Each part gets the verdict of the trained model {settings.get('model')}."
    if scorer not in ("rolling bank", "good") or rate is None:
        return ""
    if scorer == "good":
        reference = f"the known-good images in {settings.get('good')}"
    else:
        reference = f"the last {settings.get('bank_size', 'few')} parts judged normal"
    return (
        f"Each part is called anomalous when at most {_share(rate)} of the reference parts ({reference}) score as "
        f"high as it does (a conformal test that flags at most {_share(rate)} of good parts); the cut moves as the "
        "reference parts change, so the histogram shows the scores without a threshold line."
    )


def _how_section(settings: Mapping[str, Any]) -> str:
    """The technical rule behind the sentence, collapsed."""
    rows = {key: settings[key] for key in ("threshold", "review_threshold", "threshold_applies_to", "false_alarm_rate",
                                           "review_budget", "good") if settings.get(key) is not None}
    rule = settings.get("threshold_rule")
    if not rule and not rows:
        return ""
    text = f"<p>{_text(rule)}</p>" if rule else ""
    return f'<details class="how"><summary>how the threshold was set</summary>{text}{_key_value_table(rows) if rows else ""}</details>'


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
    nodes.append(f'<text x="{(left + right) / 2:.1f}" y="{bottom + 32}" text-anchor="middle">{_text(axis_label)} ({legend})</text>')
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
        f'aria-label="{_text(label)}" xmlns="http://www.w3.org/2000/svg">{"".join(nodes)}</svg>'
    )


def _decision_section(
    entries: Sequence[ReportEntry],
    settings: Mapping[str, Any],
    *,
    verdict_counts: Mapping[str, int] | None,
    histogram: Sequence[tuple[float, str | None]] | None,
    skipped_count: int,
) -> str:
    """The decision first: the counts in plain words, the rule in one sentence (the technical
    rule collapsed below it) and the histogram of the verdict scores with the cuts drawn on it."""
    counts = _counts(entries, verdict_counts)
    threshold = _number(settings.get("threshold"))
    review_from = _number(settings.get("review_threshold"))
    no_cut = settings.get("threshold_applies_to") == "nfa"
    skipped = f'<p class="meta">{skipped_count} file(s) could not be read and were not judged (listed below).</p>' if skipped_count else ""
    if histogram is None:
        by_verdict_score = not no_cut and any(_number(entry.verdict_score) is not None for entry in entries)
        histogram = [(entry.verdict_score if by_verdict_score else entry.score, entry.verdict) for entry in entries]
    if counts is None:
        lead = f'<p class="lead" id="verdicts"><strong>{len(entries)} parts ranked, most anomalous first</strong></p>'
        rule = '<p class="rule">This method gives no verdict of its own: look at the highest scores first.</p>'
        chart = verdict_histogram([v for v, _ in histogram], [None] * len(histogram), axis_label="score")
        return f'<section id="decision">{lead}{rule}{skipped}{chart}</section>'
    total = sum(counts.values())
    review = counts["review"]
    to_review = f', <span class="n-review">{review} to review</span>' if review or review_from is not None else ""
    lead = (
        f'<p class="lead" id="verdicts"><strong><span class="n-anomalous">{counts["anomalous"]} of {total} parts anomalous</span>'
        f'{to_review}</strong><span class="meta">, {counts["normal"]} normal</span></p>'
    )
    sentence = threshold_sentence(settings)
    rule = f'<p class="rule">{_text(sentence)}</p>' if sentence else ""
    values = [v for v, _ in histogram]
    words = [w for _, w in histogram]
    if no_cut or all(_number(v) is None for v in values):
        chart = verdict_histogram(values, words, axis_label="score (the verdict is no cut on it)")
    else:
        chart = verdict_histogram(values, words, threshold=None if no_cut else threshold, review_from=review_from,
                                  axis_label="verdict score (the number the threshold applies to)")
    return f'<section id="decision">{lead}{rule}{_how_section(settings)}{skipped}{chart}</section>'


def _images_section(
    entries: Sequence[ReportEntry], color_range: tuple[float, float] | None, thumbnail_width: int, total: int | None = None
) -> str:
    ordered = card_order(entries)
    count = len(ordered) if total is None else total
    cards = "".join(_entry_card(entry, thumbnail_width, count) for entry in ordered)
    body = f'<div class="grid">{cards}</div>' if ordered else '<p class="none">none</p>'
    if any(entry.verdict for entry in ordered):
        which = "verdict score" if any(_number(entry.verdict_score) is not None for entry in ordered) else "score"
        shown = "" if total is None or total == len(ordered) else f" of {total}"
        heading = f"Parts ({len(ordered)}{shown})"
        note = f"anomalous first, then to review, then normal; highest {which} first within each"
    else:
        heading, note = f"Parts ({len(ordered)})", "most anomalous first"
    return f'<section id="images"><h2>{_text(heading)}</h2><p class="meta">{_text(note)}</p>{_colorbar(color_range)}{body}</section>'


def render_report(
    *,
    title: str,
    entries: Sequence[ReportEntry],
    settings: Mapping[str, Any],
    skipped: Iterable[Any],
    summary: str | Mapping[str, Any] | None = None,
    communities: Sequence[Mapping[str, Any]] | None = None,
    metrics: Mapping[str, Mapping[str, float | None]] | None = None,
    color_range: tuple[float, float] | None = None,
    thumbnail_width: int = 160,
    generated: datetime | None = None,
    verdict_counts: Mapping[str, int] | None = None,
    histogram: Sequence[tuple[float, str | None]] | None = None,
) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    when = (generated or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    skipped_rows = _skipped_rows(skipped)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="defectscope {_text(__version__)}">',
        f"<title>{_text(title)}</title><style>{_CSS}</style></head><body>",
        f'<header><h1>{_text(title)}</h1><p class="meta">defectscope {_text(__version__)}, '
        f"generated {_text(when)}</p></header>",
        _decision_section(entries, settings, verdict_counts=verdict_counts, histogram=histogram, skipped_count=len(skipped_rows)),
        _summary_section(summary),
        _images_section(entries, color_range, thumbnail_width, None if verdict_counts is None else sum(verdict_counts.values())),
        _metrics_section(metrics),
        _skipped_section(skipped_rows),
        _communities_section(communities),
        _settings_section(settings),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def write_report(
    path: str | Path,
    *,
    title: str,
    entries: Sequence[ReportEntry],
    settings: Mapping[str, Any],
    skipped: Iterable[Any],
    summary: str | Mapping[str, Any] | None = None,
    communities: Sequence[Mapping[str, Any]] | None = None,
    metrics: Mapping[str, Mapping[str, float | None]] | None = None,
    color_range: tuple[float, float] | None = None,
    thumbnail_width: int = 160,
    verdict_counts: Mapping[str, int] | None = None,
    histogram: Sequence[tuple[float, str | None]] | None = None,
) -> Path:
    """Write one self-contained HTML report, atomically.

    Sections: the decision (verdict counts, the threshold rule in one sentence built from
    ``settings``, the technical ``threshold_rule`` collapsed, a histogram of the verdict scores
    with the threshold and the review band), optional ``summary`` (text or key/value mapping),
    the grid of ``entries`` (:func:`card_order`: anomalous, review, normal, by verdict score),
    the ``metrics`` table (fractions shown in percent), ``skipped`` files as (path, reason)
    pairs, mappings or objects with ``.path``/``.reason`` (always shown, "none" if empty),
    optional ``communities`` ({"id", "members", "image_png"}) and the ``settings`` (collapsed).
    ``color_range`` (the shared vmin/vmax used for the overlays) adds a colour-scale legend.
    When ``entries`` are only part of the run (``watch`` shows the highest scores),
    ``verdict_counts`` gives the whole run's counts and ``histogram`` its (verdict score,
    verdict) pairs. All text is escaped.
    """
    document = render_report(
        title=title,
        entries=entries,
        settings=settings,
        skipped=skipped,
        summary=summary,
        communities=communities,
        metrics=metrics,
        color_range=color_range,
        thumbnail_width=thumbnail_width,
        verdict_counts=verdict_counts,
        histogram=histogram,
    )
    return atomic_write_text(path, document)
