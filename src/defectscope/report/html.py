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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from defectscope import __version__
from defectscope.report.atomic import atomic_write_text
from defectscope.report.cards import ReportEntry, card_order, entry_pictures, images_section  # noqa: F401  (importable from here)
from defectscope.report.decision import decision_section, threshold_sentence  # noqa: F401  (importable from here)
from defectscope.report.histogram import verdict_histogram  # noqa: F401  (importable from here)
from defectscope.report.markup import escape, key_value_table
from defectscope.report.tables import MEAN_LABEL, format_metric, metric_columns, metric_means


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
    body = key_value_table(settings) if settings else '<p class="none">none recorded</p>'
    return (
        f'<section id="settings"><h2>Settings</h2><details><summary>all {len(settings)} settings of this run</summary>'
        f"{body}</details></section>"
    )


def _summary_section(summary: str | Mapping[str, Any] | None) -> str:
    if summary is None:
        return ""
    body = key_value_table(summary) if isinstance(summary, Mapping) else f"<p>{escape(summary)}</p>"
    return f'<section id="summary"><h2>Summary</h2>{body}</section>'


def _metrics_section(metrics: Mapping[str, Mapping[str, float | None]] | None) -> str:
    if not metrics:
        return ""
    columns = metric_columns(metrics)
    header = "".join(f"<th>{escape(name)}</th>" for name in ["category", *columns])
    rows = []
    for category, values in metrics.items():
        cells = "".join(f'<td class="num">{format_metric(values.get(name))}</td>' for name in columns)
        rows.append(f"<tr><td>{escape(category)}</td>{cells}</tr>")
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
        lines = "".join(f"<tr><td>{escape(item_path)}</td><td>{escape(reason)}</td></tr>" for item_path, reason in rows)
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
            picture = f'<img src="data:image/png;base64,{payload}" alt="community {escape(community.get("id"))}">'
        items = "".join(f"<li>{escape(member)}</li>" for member in members)
        cards.append(
            f'<div class="card"><h3>Community {escape(community.get("id"))} ({len(members)} images)</h3>'
            f"{picture}<details><summary>members</summary><ul>{items}</ul></details></div>"
        )
    return f'<section id="communities"><h2>Communities</h2><div class="grid">{"".join(cards)}</div></section>'


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
    """The report as one self-contained HTML string.

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
    when = (generated or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    skipped_rows = _skipped_rows(skipped)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="defectscope {escape(__version__)}">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f'<header><h1>{escape(title)}</h1><p class="meta">defectscope {escape(__version__)}, '
        f"generated {escape(when)}</p></header>",
        decision_section(entries, settings, verdict_counts=verdict_counts, histogram=histogram, skipped_count=len(skipped_rows)),
        _summary_section(summary),
        images_section(entries, color_range, thumbnail_width, None if verdict_counts is None else sum(verdict_counts.values())),
        _metrics_section(metrics),
        _skipped_section(skipped_rows),
        _communities_section(communities),
        _settings_section(settings),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def write_report(path: str | Path, **content: Any) -> Path:
    """Write the report of :func:`render_report` (``content`` is its keywords) to ``path``, atomically."""
    return atomic_write_text(path, render_report(**content))
