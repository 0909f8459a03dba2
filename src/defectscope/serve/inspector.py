"""What the service runs: one detector loaded once, batches of images -> decisions, and the
journal every decision is appended to before its answer is sent.

Two kinds of detector:

* a trained model (``model``: U-Flow or PRN, :func:`defectscope.training.load_detector`),
  optionally with its verdict calibrated on known-good images (``good``), as ``predict`` does;
* a zero-shot method in reference mode (``good`` alone: MuSc or CoDeGraph calibrated on the good
  images, :meth:`defectscope.methods.musc.MuSc.calibrate`), as ``score --good`` does. The input
  shape is fixed to the good images' (their median aspect ratio, ``keep_aspect``), so an image's
  score does not depend on the requests it shares a batch with; images of another aspect ratio
  are resized to it.

Regions: the connected components (8-neighbourhood) of the method's mask (U-Flow's a contrario
regions, PRN's and MuSc's threshold per pixel), at the map's resolution, with their boxes and
areas given in the pixels of the image as it was sent.
"""

from __future__ import annotations

import csv
import io
import math
import os
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from defectscope import __version__
from defectscope.errors import ConfigError, DefectscopeError
from defectscope.methods.base import Detector, Result
from defectscope.options import RunOptions
from defectscope.report.atomic import atomic_write_bytes, atomic_write_text, cut_torn_line, is_defectscope_folder, write_marker

JOURNAL = "verdicts.csv"
SETTINGS = "settings.json"
COLUMNS = ["path", "score", "verdict", "verdict_score", "seconds", "id", "name", "received_at", "regions"]
MAX_REGIONS = 100


@dataclass
class Pending:
    """One admitted request on its way to the detector."""

    id: str
    name: str
    image: np.ndarray
    received: float
    """time.monotonic() when the request arrived."""
    received_at: str
    data: bytes | None = None
    """The bytes as sent, kept only when the service keeps the images."""


@dataclass
class Decision:
    """The detector's answer for one image."""

    id: str
    name: str
    score: float
    verdict: str | None
    verdict_score: float | None
    anomaly_map: np.ndarray
    mask: np.ndarray | None
    image_shape: tuple[int, int]
    regions: list[dict[str, Any]] = field(default_factory=list)
    regions_total: int = 0
    seconds: float = 0.0
    path: str = ""


def find_regions(mask: np.ndarray | None, anomaly_map: np.ndarray, image_shape: tuple[int, int]) -> tuple[list[dict[str, Any]], int]:
    """Connected components of ``mask`` (at the map's resolution) as boxes ``[x0, y0, x1, y1]``
    (x1, y1 exclusive) and areas in the pixels of an image of ``image_shape`` (H, W), with the
    share of the image they cover and the highest map value in them; the ``MAX_REGIONS`` with
    the highest peaks, and the total count."""
    if mask is None or not mask.any():
        return [], 0
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    map_h, map_w = mask.shape
    image_h, image_w = image_shape
    sy, sx = image_h / map_h, image_w / map_w
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index)
    peaks = ndimage.maximum(anomaly_map, labels, index)
    found = []
    for number, box in enumerate(ndimage.find_objects(labels)):
        rows, cols = box
        found.append({
            "box": [int(math.floor(cols.start * sx)), int(math.floor(rows.start * sy)),
                    min(image_w, int(math.ceil(cols.stop * sx))), min(image_h, int(math.ceil(rows.stop * sy)))],
            "area": int(round(float(sizes[number]) * sy * sx)),
            "area_fraction": float(sizes[number]) / float(map_h * map_w),
            "peak": float(peaks[number]),
        })
    found.sort(key=lambda region: -region["peak"])
    return found[:MAX_REGIONS], int(count)


class ServeJournal:
    """``OUT/verdicts.csv``: one row per decision, appended and fsynced before the answer is
    sent (the rows of one batch share one write and one fsync). On start a torn last line left
    by a killed service is cut off, so a restart neither loses a completed row nor repeats one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        cut_torn_line(path)
        if not path.exists() or path.stat().st_size == 0:
            self._write([COLUMNS])
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            ids = [row[COLUMNS.index("id")] for row in reader if len(row) == len(COLUMNS)]
        if header != COLUMNS:
            raise DefectscopeError(f"'{path}' is not a journal of `defectscope serve` (columns {', '.join(header)}); choose another --out")
        self.rows = len(ids)
        self.next_id = 1 + max((int(i) for i in ids if i.isdigit()), default=0)

    def _write(self, rows: Sequence[Sequence[object]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows(rows)
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, decisions: Sequence[Decision], received_at: Sequence[str]) -> None:
        rows = []
        for decision, when in zip(decisions, received_at):
            rows.append([
                decision.path,
                repr(decision.score),
                decision.verdict or "",
                "" if decision.verdict_score is None else repr(decision.verdict_score),
                f"{decision.seconds:.4f}",
                decision.id,
                decision.name,
                when,
                decision.regions_total,
            ])
        with self._lock:
            self._write(rows)
            self.rows += len(rows)


def _safe_suffix(name: str, data: bytes) -> str:
    for signature, suffix in ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif")):
        if data.startswith(signature):
            return suffix
    return Path(name).suffix.lower() or ".bin"


class Inspector:
    """A loaded detector behind the service: :meth:`run` scores a batch, journals it and returns
    one :class:`Decision` per image."""

    def __init__(self, detector: Detector, out: str | Path, *, description: dict[str, Any], keep_images: bool = False) -> None:
        self.detector = detector
        self.out = Path(out).absolute()
        self.keep_images = keep_images
        self.description = dict(description)
        self.threshold: float | None = None
        self.threshold_rule: str | None = None
        self.threshold_applies_to: str | None = None
        self._prepare_out()
        self.journal = ServeJournal(self.out / JOURNAL)

    def _prepare_out(self) -> None:
        check_out(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        write_marker(self.out, data={"command": "serve", "method": self.description.get("method")})

    def warm_up(self, image: np.ndarray) -> None:
        """Run one image through the detector (first-call costs) and learn the threshold and its
        rule; refuse an ``out`` whose journal was written under another model or threshold."""
        import json

        result = self.detector.predict([image], ["warm-up"])
        from defectscope.report.batch import threshold_applies_to

        self.threshold = None if result.threshold is None else float(result.threshold)
        self.threshold_rule = result.threshold_rule
        self.threshold_applies_to = threshold_applies_to(result) if result.threshold is not None else None
        settings = {
            "command": "serve",
            "version": __version__,
            **self.description,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "threshold_applies_to": self.threshold_applies_to,
            "settings": self.detector.settings(),
        }
        settings = json.loads(json.dumps(settings, default=str))
        previous_file = self.out / SETTINGS
        if previous_file.is_file() and self.journal.rows:
            previous = json.loads(previous_file.read_text(encoding="utf-8"))
            for key in ("method", "model", "good", "threshold", "threshold_rule"):
                if previous.get(key) != settings.get(key):
                    raise DefectscopeError(
                        f"the journal in '{self.out}' was written with {key} {previous.get(key)!r} but this service has {settings.get(key)!r}; "
                        "choose another --out"
                    )
        atomic_write_text(previous_file, json.dumps(settings, indent=2) + "\n")
        self.settings = settings

    def decisions(self, result: Result, batch: Sequence[Pending]) -> list[Decision]:
        decision_scores = result.decision_scores()
        found = []
        for index, item in enumerate(batch):
            verdict = None if result.is_anomalous is None else result.verdicts()[index]  # anomalous, review or normal
            statistic = float(decision_scores[index])
            mask = None if result.masks is None else np.asarray(result.masks[index], dtype=bool)
            anomaly_map = np.asarray(result.anomaly_maps[index])
            regions, total = find_regions(mask, anomaly_map, item.image.shape[:2])
            found.append(Decision(
                id=item.id, name=item.name, score=float(result.image_scores[index]), verdict=verdict,
                verdict_score=statistic if math.isfinite(statistic) else None, anomaly_map=anomaly_map, mask=mask,
                image_shape=tuple(item.image.shape[:2]), regions=regions, regions_total=total,
            ))
        return found

    def _keep(self, item: Pending, decision: Decision) -> str:
        """Save the image as sent and its overlay; returns the journal path of the image."""
        from defectscope.report.overlay import heatmap_overlay, save_png

        suffix = _safe_suffix(item.name, item.data or b"")
        path = self.out / "inputs" / f"{item.id}{suffix}"
        atomic_write_bytes(path, item.data or b"")
        low, high = (float(decision.anomaly_map.min()), float(decision.anomaly_map.max()))
        if self.threshold_applies_to == "verdict_score" and self.threshold is not None:
            high = max(high, self.threshold)
        save_png(self.out / "maps" / f"{item.id}.png", heatmap_overlay(item.image, decision.anomaly_map, vmin=low, vmax=high if high > low else low + 1e-6))
        return str(path)

    def run(self, batch: Sequence[Pending]) -> list[Decision]:
        """Score ``batch`` together, append one journal row per image (on disk before this
        returns) and return the decisions in order."""
        import time

        images = [item.image for item in batch]
        result = self.detector.predict(images, [item.id for item in batch])
        decisions = self.decisions(result, batch)
        for item, decision in zip(batch, decisions):
            decision.path = self._keep(item, decision) if self.keep_images else item.id
        now = time.monotonic()
        for item, decision in zip(batch, decisions):
            decision.seconds = now - item.received
        self.journal.append(decisions, [item.received_at for item in batch])
        return decisions


def check_out(out: str | Path) -> None:
    """Refuse, before any work, an ``out`` that is not absent, empty or an earlier serve journal."""
    import json

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DefectscopeError(f"output path '{out}' exists and is not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not is_defectscope_folder(out):
            raise DefectscopeError(f"output folder '{out}' holds files that defectscope did not write; choose another or an empty folder")
        marker = json.loads((out / "defectscope-run.json").read_text(encoding="utf-8"))
        if marker.get("command") != "serve":
            raise DefectscopeError(f"output folder '{out}' holds another defectscope run ({marker.get('command') or 'score/evaluate'}), not a serve journal; choose another --out")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _gray(side: int) -> np.ndarray:
    return np.full((side, side, 3), 128, dtype=np.uint8)


def build_inspector(
    out: str | Path,
    options: RunOptions,
    *,
    model: str | Path | None = None,
    good: str | Path | None = None,
    keep_images: bool = False,
    progress=None,
) -> Inspector:
    """Load the service's detector once: a trained ``model`` (optionally calibrated on ``good``),
    or ``options.method`` (MuSc, CoDeGraph) in reference mode on ``good``; warm it up."""
    from defectscope.calibration import calibrate_on_good
    from defectscope.device import device_name
    from defectscope.methods.registry import get_method

    from defectscope.runs.spec import resolve_run

    options = resolve_run("serve", options, model=model, good=good)  # defaults applied; ignored options refused
    false_alarm_rate = options.false_alarm_rate
    check_out(out)
    if model is None and good is None:
        raise ConfigError("serve needs --model DIR (a trained U-Flow or PRN model) or --good DIR (known-good images for MuSc/CoDeGraph)")
    if model is not None:
        from defectscope.training import load_detector

        detector = load_detector(model, options.device)
        setting = get_method(detector.method).option_fields.get("false_alarm_rate")
        if setting is not None:
            detector.config = replace(detector.config, **{setting: false_alarm_rate})
        good_count = None
        if good is not None:
            good_count = len(calibrate_on_good(detector, good, false_alarm_rate, progress).images)
        side = int(getattr(detector.config, "image_size", 256) or 256)
        warm = _gray(side)
    else:
        from defectscope.pipeline import build_detector

        detector = build_detector(options)
        images = calibrate_on_good(detector, good, false_alarm_rate, progress).images
        shape = detector.input_shape(images)
        detector.input_shape = lambda batch, _shape=shape: _shape  # one input shape for every batch
        good_count = len(images)
        warm = images[0]
    description = {
        "method": detector.method,
        "model": None if model is None else str(Path(model).absolute()),
        "good": None if good is None else str(Path(good).absolute()),
        "good_images": good_count,
        "false_alarm_rate": false_alarm_rate if options.uses_false_alarm_rate else None,
        "device": device_name(options.device),
        "threads": options.threads,
    }
    inspector = Inspector(detector, out, description=description, keep_images=keep_images)
    inspector.warm_up(warm)
    return inspector
