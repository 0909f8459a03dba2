"""The outputs of `defectscope watch` besides its journals: each image's overlay in ``OUT/maps/``
and ``OUT/report.html`` (the report code of ``score``: :func:`defectscope.report.html.write_report`).

Overlays share the colour rule of ``score``'s report (1st to 99th percentile of the map values,
:func:`defectscope.report.overlay.batch_color_range`) over the maps shown so far; images decided
together (the first batch) share one scale, and the report redraws its thumbnails on the scale of
the moment it is written. The report shows the (up to 100) highest scores so far.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from defectscope.data.io import read_image
from defectscope.errors import ImageReadError

REPORT_ENTRIES = 100
REPORT_THUMBNAIL = 160
COLOR_SAMPLE_PER_MAP = 4096
"""Values of each shown map kept for the colour scale (fixed stride)."""
COLOR_SAMPLE_MAPS = 200
"""Shown maps the colour scale comes from: the latest ones."""


def overlay_name(key: str, root: Path) -> str:
    """The file name in ``maps/`` of the image ``key`` found under ``root``."""
    relative = Path(key).relative_to(root) if Path(key).is_relative_to(root) else Path(Path(key).name)
    text = "__".join(relative.with_suffix("").parts) or "image"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) + ".png"


@dataclass
class _Top:
    """A report entry kept while the image is among the highest scores (thumbnail size)."""

    score: float
    verdict: str
    thumbnail: np.ndarray
    small_map: np.ndarray | None
    overlay: np.ndarray


class WatchReport:
    """Overlays and report.html of a watch run writing into ``out`` for images under ``in_dir``."""

    def __init__(self, out: Path, in_dir: Path, settings: dict) -> None:
        self.out, self.in_dir, self.settings = out, in_dir, settings
        self.top: dict[str, _Top] = {}
        self._shown: list[np.ndarray] = []
        self._color_range: tuple[float, float] | None = None

    def note_map(self, anomaly_map: np.ndarray) -> None:
        """Add a fixed-stride sample of a shown map to the values the colour scale comes from."""
        values = np.asarray(anomaly_map, dtype=np.float32).reshape(-1)
        self._shown.append(values[:: max(1, -(-values.size // COLOR_SAMPLE_PER_MAP))].copy())
        if len(self._shown) > COLOR_SAMPLE_MAPS:
            self._shown.pop(0)
        self._color_range = None

    def color_range(self) -> tuple[float, float] | None:
        """The overlays' colour scale over the maps shown so far (the latest ``COLOR_SAMPLE_MAPS``,
        each sampled); None before any map was shown."""
        from defectscope.report.overlay import batch_color_range

        if self._color_range is None and self._shown:
            self._color_range = batch_color_range(np.concatenate(self._shown))
        return self._color_range

    def save_overlay(self, key: str, image: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
        """Write the image's overlay to ``maps/`` on the current colour scale; returns it."""
        from defectscope.report.batch import OVERLAY_MAX_SIDE
        from defectscope.report.overlay import heatmap_overlay, make_thumbnail, save_png

        vmin, vmax = self.color_range()
        shown = image
        if max(shown.shape[:2]) > OVERLAY_MAX_SIDE:
            shown = make_thumbnail(shown, width=max(1, round(shown.shape[1] * OVERLAY_MAX_SIDE / max(shown.shape[:2]))))
        overlay = heatmap_overlay(shown, anomaly_map, vmin=vmin, vmax=vmax)
        save_png(self.out / "maps" / overlay_name(key, self.in_dir), overlay)
        return overlay

    def remember(self, key: str, score: float, verdict: str, image: np.ndarray, anomaly_map: np.ndarray | None, overlay: np.ndarray) -> None:
        """Keep small copies of the image, its map and overlay while it is among the highest
        scores; the report redraws the overlay from the map on the colour scale of that moment
        (an entry restored after a restart has no map and keeps its saved overlay)."""
        from defectscope.report.overlay import make_thumbnail, resize_map

        thumbnail = make_thumbnail(image, width=REPORT_THUMBNAIL)
        small_map = None if anomaly_map is None else resize_map(anomaly_map, thumbnail.shape[:2])
        self.top[key] = _Top(score, verdict, thumbnail, small_map, make_thumbnail(overlay, width=REPORT_THUMBNAIL))
        if len(self.top) > REPORT_ENTRIES:
            del self.top[min(self.top, key=lambda k: self.top[k].score)]

    def load_top(self, rows: Sequence[dict[str, str]]) -> None:
        """After a restart: the highest-scoring journal rows, their overlays read from maps/ and
        their images from the input folder (the overlay stands in for an image since removed)."""
        scored = [row for row in rows if row["score"]]
        for row in sorted(scored, key=lambda r: -float(r["score"]))[:REPORT_ENTRIES]:
            try:
                overlay = read_image(self.out / "maps" / overlay_name(row["path"], self.in_dir))
            except ImageReadError:
                continue
            try:
                image = read_image(row["path"])
            except ImageReadError:
                image = overlay
            self.remember(row["path"], float(row["score"]), row["verdict"], image, None, overlay)

    def write(self, counts: Counter, verdict_rows: Sequence[dict[str, str]], skip_rows: Sequence[dict[str, str]]) -> None:
        """Refresh report.html: counts and the highest-scoring images so far."""
        from defectscope.report.html import ReportEntry, write_report
        from defectscope.report.overlay import heatmap_overlay

        ordered = sorted(self.top.items(), key=lambda item: -item[1].score)
        color_range = self.color_range()

        def overlay_of(top: _Top) -> np.ndarray:
            if top.small_map is None or color_range is None:
                return top.overlay
            return heatmap_overlay(top.thumbnail, top.small_map, vmin=color_range[0], vmax=color_range[1])

        entries = [
            ReportEntry(path=key, score=top.score, rank=rank, thumbnail=top.thumbnail, overlay=overlay_of(top), verdict=top.verdict or None)
            for rank, (key, top) in enumerate(ordered, start=1)
        ]
        summary = {
            "images": sum(counts.values()),
            "anomalous": counts["anomalous"],
            "review": counts["review"],
            "normal": counts["normal"],
            "shown": f"the {len(entries)} highest scores",
        }
        write_report(
            self.out / "report.html",
            title=f"defectscope watch: {self.in_dir.name}",
            verdict_counts=counts,
            histogram=[(float(row["score"]), row["verdict"] or None) for row in verdict_rows if row["score"]],
            entries=entries,
            settings=self.settings,
            skipped=[(row["path"], row["reason"]) for row in skip_rows],
            summary=summary,
            color_range=color_range,
            thumbnail_width=REPORT_THUMBNAIL,
        )
