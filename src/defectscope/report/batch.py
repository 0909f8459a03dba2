"""Writing one scored batch to a folder: scores.csv, settings.json, maps/ overlays and report.html."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from defectscope.methods.base import Result
from defectscope.report.atomic import atomic_write_bytes, atomic_write_text, json_text, sync_files
from defectscope.report.html import ReportEntry, entry_pictures, write_report
from defectscope.report.overlay import batch_color_range, encode_image, heatmap_overlay, make_thumbnail, resize_mask
from defectscope.report.tables import score_order, write_scores_csv

OVERLAY_MAX_SIDE = 512
FAST_RESAMPLE = Image.Resampling.BILINEAR
REPORT_THUMBNAIL = 160
OVERLAY_QUALITY = 90
"""JPEG quality of the ``maps/`` overlays (pictures to look at; the masks stay lossless PNG)."""


def _overlay_name(index: int, path: str, suffix: str = ".png") -> str:
    stem = Path(path).stem or "image"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
    return f"{index:05d}_{safe}{suffix}"


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """The picture the overlay is drawn on: at most ``max_side`` pixels, antialiased bilinear
    (within 46 dB PSNR of Lanczos on the bottle images, at half the cost; see docs/REPORT.md)."""
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    return make_thumbnail(image, width=max(1, round(width * max_side / max(height, width))), resample=FAST_RESAMPLE)


def _append_skipped(csv_path: Path, skipped: Sequence[tuple[Any, str]], *, with_label: bool) -> None:
    """Add skipped files to scores.csv: empty score, rank, verdict and verdict score, status "skipped: <reason>"."""
    buffer = io.StringIO(csv_path.read_text())
    buffer.seek(0, io.SEEK_END)
    writer = csv.writer(buffer, lineterminator="\n")
    for path, reason in skipped:
        writer.writerow([str(path), "", "", "", "", *([""] if with_label else []), "", f"skipped: {reason}"])
    atomic_write_text(csv_path, buffer.getvalue())


def threshold_applies_to(result: Result) -> str | None:
    """What settings.json's threshold is a cut on: ``"verdict_score"`` (the scores.csv column),
    ``"nfa"`` for a verdict that is no cut on a per-image statistic (U-Flow's a contrario test:
    the threshold is the NFA level), None without a threshold."""
    if result.threshold is None:
        return None
    return "verdict_score" if np.all(np.isfinite(result.decision_scores())) else "nfa"


def write_batch_outputs(
    folder: Path,
    result: Result,
    images: Sequence[np.ndarray],
    *,
    title: str,
    skipped: Sequence[tuple[Any, str]] = (),
    labels: Sequence[str | None] | None = None,
    metrics: Mapping[str, Mapping[str, float | None]] | None = None,
    summary: Mapping[str, Any] | str | None = None,
    communities: Sequence[Mapping[str, Any]] | None = None,
    workers: int = 2,
) -> None:
    """Write ``scores.csv``, ``settings.json``, ``maps/<n>_<name>.jpg`` overlays (JPEG, quality
    ``OVERLAY_QUALITY``; ``masks/<n>_<name>.png``, lossless, when the method produced masks)
    and a self-contained ``report.html`` for one batch into
    ``folder``. ``settings.json`` holds the run settings plus ``threshold``, ``threshold_rule`` and
    ``threshold_applies_to`` (:func:`threshold_applies_to`), and ``batch_facts`` when the method
    took decisions from the batch itself (``result.extras["batch_facts"]``).

    Overlays share one colour scale over the batch (1st to 99th percentile of all map values),
    so a hot spot means the same in every picture. Images are rendered in ``workers`` threads.
    Skipped files appear in scores.csv (empty score and rank, status 'skipped: <reason>'), in
    skipped.csv and in the report.
    """
    folder.mkdir(parents=True, exist_ok=True)
    maps_dir = folder / "maps"
    maps_dir.mkdir(exist_ok=True)
    masks_dir = folder / "masks"
    if result.masks is not None:
        masks_dir.mkdir(exist_ok=True)
    vmin, vmax = batch_color_range(result.anomaly_maps)
    order = score_order(result.paths, result.image_scores)
    ranks = np.empty(len(order), dtype=int)
    ranks[order] = np.arange(1, len(order) + 1)
    verdicts = result.verdicts()
    decision_scores = None if verdicts is None else np.asarray(result.decision_scores(), dtype=np.float64)

    def one_image(index: int) -> tuple[str, ReportEntry]:
        path, image = result.paths[index], images[index]
        shown = _shrink(image, OVERLAY_MAX_SIDE)
        mask = None
        if result.masks is not None:
            mask = resize_mask(result.masks[index], shown.shape[:2])
            written.append(atomic_write_bytes(masks_dir / _overlay_name(index, path), encode_image(mask, "PNG"), sync=False))
        overlay = heatmap_overlay(shown, result.anomaly_maps[index], vmin=vmin, vmax=vmax, mask=mask)
        name = _overlay_name(index, path, ".jpg")
        written.append(atomic_write_bytes(maps_dir / name, encode_image(overlay, "JPEG", quality=OVERLAY_QUALITY, optimize=False), sync=False))
        label = None if labels is None else labels[index]
        verdict = None if verdicts is None else verdicts[index]
        verdict_score = None if decision_scores is None else float(decision_scores[index])
        # The report keeps only thumbnail-sized copies (a 2,624-image batch would otherwise hold
        # two 512-pixel pictures per image until the report is written) and their encoded tags.
        small = make_thumbnail(shown, REPORT_THUMBNAIL, FAST_RESAMPLE)
        entry = ReportEntry(path=str(path), score=float(result.image_scores[index]), rank=int(ranks[index]), thumbnail=small,
                            overlay=make_thumbnail(overlay, REPORT_THUMBNAIL, FAST_RESAMPLE),
                            mask=None if mask is None else resize_mask(mask, small.shape[:2]),
                            label=label, verdict=verdict, verdict_score=verdict_score)
        entry.pictures = entry_pictures(entry, REPORT_THUMBNAIL)
        return f"maps/{name}", entry

    written: list[Path] = []
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(one_image, range(len(result.paths))))
    sync_files(written)
    map_files = [name for name, _ in done]
    entries = [entry for _, entry in done]
    write_scores_csv(
        folder / "scores.csv",
        result.paths,
        result.image_scores,
        labels=labels,
        extra_columns={"map": map_files, "status": ["scored"] * len(map_files)},
        verdicts=[None] * len(map_files) if verdicts is None else verdicts,
        verdict_scores=[None] * len(map_files) if verdicts is None else [float(v) for v in result.decision_scores()],
    )
    settings = {
        **result.settings,
        "threshold": result.threshold,
        "threshold_rule": result.threshold_rule,
        "threshold_applies_to": threshold_applies_to(result),
        "review_threshold": result.review_threshold,
    }
    if result.extras.get("batch_facts"):
        # Decisions a method took from the batch itself (e.g. MuSc's several-looks gate: the
        # embedding agreement, whether it fired, the interval used), so a run can be explained.
        settings["batch_facts"] = result.extras["batch_facts"]
    atomic_write_text(folder / "settings.json", json_text(settings, indent=2) + "\n")
    if skipped:
        _append_skipped(folder / "scores.csv", skipped, with_label=labels is not None)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "reason"])
        writer.writerows((str(path), reason) for path, reason in skipped)
        atomic_write_text(folder / "skipped.csv", buffer.getvalue())
    write_report(
        folder / "report.html",
        title=title,
        entries=entries,
        settings=settings,
        skipped=[(str(p), reason) for p, reason in skipped],
        summary=summary,
        communities=communities,
        metrics=metrics,
        color_range=(vmin, vmax),
        thumbnail_width=REPORT_THUMBNAIL,
    )
