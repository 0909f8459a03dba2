"""A single self-contained HTML report: settings, metrics, skipped files and a ranked image grid.

The file has inline CSS and every image embedded as a base64 data URI (JPEG thumbnails for
photos and overlays, PNG for masks): it can be mailed or archived and opened offline. It links
to nothing. Thumbnails are shrunk to ``thumbnail_width`` pixels (160 by default), about 15 KB
per image, so a report of 1000 images stays around 15-20 MB.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

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
    """

    path: str
    score: float
    rank: int
    thumbnail: np.ndarray
    overlay: np.ndarray
    mask: np.ndarray | None = None
    label: str | None = None
    verdict: str | None = None


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem;color:#1d1d1f;background:#fafafa}
h1{margin:0 0 .2rem}h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.meta{color:#666;margin:0}
table{border-collapse:collapse;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.mean td{font-weight:bold;background:#f6f6f6}
.kv th{width:12rem}
.none{color:#666;font-style:italic}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(350px,1fr));gap:.8rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem;margin:0}
.imgs{display:flex;gap:4px;flex-wrap:wrap}
.imgs img{max-width:160px;height:auto;display:block;image-rendering:auto}
figcaption{font-size:.85rem;margin-top:.3rem;word-break:break-all}
.rank{font-weight:bold}
.label{display:inline-block;background:#eef;border-radius:3px;padding:0 .3rem;margin-left:.3rem}
.verdict{display:inline-block;border-radius:3px;padding:0 .3rem;margin-left:.3rem;font-weight:bold;color:#fff}
.verdict.anomalous{background:#c62828}.verdict.review{background:#ef6c00}.verdict.normal{background:#2e7d32}
.card.anomalous{border-color:#c62828}
.lead{font-size:1.2rem;margin:.8rem 0}
.colorbar{display:flex;align-items:center;gap:.5rem;font-size:.85rem;margin-bottom:.8rem}
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
    body = _key_value_table(settings) if settings else '<p class="none">none recorded</p>'
    return f'<section id="settings"><h2>Settings</h2>{body}</section>'


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


def _entry_card(entry: ReportEntry, thumbnail_width: int) -> str:
    name = Path(str(entry.path)).name or str(entry.path)
    original = make_thumbnail(entry.thumbnail, thumbnail_width)
    overlay = make_thumbnail(entry.overlay, thumbnail_width)
    pictures = [_img(original, "JPEG", f"image {name}"), _img(overlay, "JPEG", f"heat map {name}")]
    if entry.mask is not None:
        mask = resize_mask(np.asarray(entry.mask), original.shape[:2])
        pictures.append(_img(mask, "PNG", f"mask {name}"))
    label = f'<span class="label">{_text(entry.label)}</span>' if entry.label is not None else ""
    word = entry.verdict
    badge = f'<span class="verdict {word}">{word}</span>' if word else ""
    return (
        f'<figure class="card{" anomalous" if word == "anomalous" else ""}"><div class="imgs">{"".join(pictures)}</div>'
        f'<figcaption><span class="rank">#{int(entry.rank)}</span> score {float(entry.score):.4g}{badge}{label}'
        f'<br><span title="{_text(entry.path)}">{_text(name)}</span></figcaption></figure>'
    )


def _verdict_lead(entries: Sequence[ReportEntry], settings: Mapping[str, Any]) -> str:
    """"K of N parts anomalous" and the rule, when the method gave verdicts."""
    judged = [entry.verdict for entry in entries if entry.verdict is not None]
    if not judged:
        return ""
    rule = settings.get("threshold_rule")
    detail = f'<br><span class="meta">{_text(rule)}</span>' if rule else ""
    review = judged.count("review")
    to_review = f", {review} to review" if review or settings.get("review_threshold") is not None else ""
    return f'<p class="lead" id="verdicts"><strong>{judged.count("anomalous")} of {len(judged)} parts anomalous{to_review}</strong>{detail}</p>'


def _images_section(
    entries: Sequence[ReportEntry], color_range: tuple[float, float] | None, thumbnail_width: int
) -> str:
    ordered = sorted(entries, key=lambda entry: (-float(entry.score), str(entry.path)))
    cards = "".join(_entry_card(entry, thumbnail_width) for entry in ordered)
    body = f'<div class="grid">{cards}</div>' if ordered else '<p class="none">none</p>'
    return (
        f'<section id="images"><h2>Images, most anomalous first ({len(ordered)})</h2>'
        f"{_colorbar(color_range)}{body}</section>"
    )


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
) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    when = (generated or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="defectscope {_text(__version__)}">',
        f"<title>{_text(title)}</title><style>{_CSS}</style></head><body>",
        f'<header><h1>{_text(title)}</h1><p class="meta">defectscope {_text(__version__)}, '
        f"generated {_text(when)}</p></header>",
        _verdict_lead(entries, settings),
        _settings_section(settings),
        _summary_section(summary),
        _metrics_section(metrics),
        _skipped_section(skipped),
        _communities_section(communities),
        _images_section(entries, color_range, thumbnail_width),
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
) -> Path:
    """Write one self-contained HTML report, atomically.

    Sections: header with ``settings`` (method, backbone, image size, version, ...), optional
    ``summary`` (text or key/value mapping), ``metrics`` table (fractions shown in percent),
    ``skipped`` files as (path, reason) pairs, mappings or objects with ``.path``/``.reason``
    (always shown, "none" if empty), optional ``communities`` ({"id", "members", "image_png"}),
    and the grid of ``entries`` sorted by score, most anomalous first. ``color_range`` (the
    shared vmin/vmax used for the overlays) adds a colour-scale legend. All text is escaped.
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
    )
    return atomic_write_text(path, document)
