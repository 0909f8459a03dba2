"""The report's cards, one per part: its pictures, verdict, figures and name, in verdict order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from defectscope.report.markup import VERDICT_ORDER, escape, finite_number, img_tag
from defectscope.report.overlay import colorbar_image, make_thumbnail, resize_mask


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


def _colorbar(color_range: tuple[float, float] | None) -> str:
    if color_range is None:
        return ""
    vmin, vmax = color_range
    bar = img_tag(colorbar_image(), "PNG", "colour scale")
    return (
        f'<div class="colorbar"><span>{vmin:.4g}</span>{bar}<span>{vmax:.4g}</span>'
        "<span>anomaly map colour scale, shared by all overlays</span></div>"
    )


def entry_pictures(entry: ReportEntry, thumbnail_width: int = 160, resample: Image.Resampling = Image.Resampling.LANCZOS) -> str:
    """The card's pictures as ``<img>`` tags: image and overlay (JPEG), mask (PNG) when present;
    shrunk to ``thumbnail_width`` with ``resample``."""
    name = Path(str(entry.path)).name or str(entry.path)
    original = make_thumbnail(entry.thumbnail, thumbnail_width, resample)
    overlay = make_thumbnail(entry.overlay, thumbnail_width, resample)
    pictures = [img_tag(original, "JPEG", f"image {name}"), img_tag(overlay, "JPEG", f"heat map {name}")]
    if entry.mask is not None:
        mask = resize_mask(np.asarray(entry.mask), original.shape[:2])
        pictures.append(img_tag(mask, "PNG", f"mask {name}"))
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
    label = f'<span class="label">{escape(entry.label)}</span>' if entry.label is not None else ""
    word = entry.verdict
    badge = f'<span class="verdict {word}">{word}</span>' if word else ""
    verdict_score = finite_number(entry.verdict_score)
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
        f'<figure class="card{kind}" data-verdict="{escape(word or "")}"><div class="imgs">{pictures}</div>'
        f"<figcaption>{badge}{figures}{label}"
        f'<br><span title="{escape(entry.path)}">{escape(name)}</span></figcaption></figure>'
    )


def images_section(
    entries: Sequence[ReportEntry], color_range: tuple[float, float] | None, thumbnail_width: int, total: int | None = None
) -> str:
    ordered = card_order(entries)
    count = len(ordered) if total is None else total
    cards = "".join(_entry_card(entry, thumbnail_width, count) for entry in ordered)
    body = f'<div class="grid">{cards}</div>' if ordered else '<p class="none">none</p>'
    if any(entry.verdict for entry in ordered):
        which = "verdict score" if any(finite_number(entry.verdict_score) is not None for entry in ordered) else "score"
        shown = "" if total is None or total == len(ordered) else f" of {total}"
        heading = f"Parts ({len(ordered)}{shown})"
        note = f"anomalous first, then to review, then normal; highest {which} first within each"
    else:
        heading, note = f"Parts ({len(ordered)})", "most anomalous first"
    return f'<section id="images"><h2>{escape(heading)}</h2><p class="meta">{escape(note)}</p>{_colorbar(color_range)}{body}</section>'
