"""`defectscope watch`: inspect each new image of a folder as it arrives, crash-safely.

Each image gets one row in ``OUT/verdicts.csv`` (``path, score, verdict, seconds``: from
reading the file to its row being on disk, for the first batch including the wait) and its
overlay in ``OUT/maps/``; ``OUT/report.html`` is refreshed as rows come in. Three scorers:

- zero-shot against a rolling bank (default): the last ``bank_size`` images judged normal
  (:class:`defectscope.methods.rolling.RollingBank`). The first ``min_bank`` images wait and are
  scored together by mutual scoring; later images are scored against the bank as they arrive.
- zero-shot against a fixed folder of good parts (``good``).
- a trained U-Flow or PRN model (``model``).

Verdicts of the zero-shot scorers are conformal: an image is anomalous when at most
``floor(alpha (n + 1)) - 1`` of the n calibration scores (the bank members' leave-one-out
scores; in the first batch, the other images' scores) are at least its score, i.e. its
conformal p-value is <= alpha = ``false_alarm_rate``. A trained model's verdict is its own
(U-Flow: a region was detected).

Overlays share the colour rule of ``score``'s report (1st to 99th percentile of the map values)
over the maps shown so far; images decided together (the first batch) share one scale, and the
report redraws its thumbnails on the scale of the moment it is written.

Files: an image is read only when its size and modification time have not changed for
``settle`` seconds and it decodes; one that stays undecodable for ``give_up`` seconds is logged
and listed in ``OUT/skipped.csv``. Both CSV files are journals: a row is appended, flushed and
fsynced once the image's overlay is on disk; on start the journals say what is done (a torn last
line from a killed run is dropped), and the rolling bank is rebuilt from the last normal rows.
So a run killed at any moment and started again neither loses nor repeats a row.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from defectscope.data.io import IMAGE_EXTENSIONS, read_image
from defectscope.errors import ConfigError, DefectscopeError, ImageReadError
from defectscope.report.atomic import cut_torn_line, is_defectscope_folder, write_marker

VERDICTS = "verdicts.csv"
SKIPPED = "skipped.csv"
REPORT_ENTRIES = 100
REPORT_THUMBNAIL = 160
COLOR_SAMPLE_PER_MAP = 4096
"""Values of each shown map kept for the colour scale (fixed stride)."""
COLOR_SAMPLE_MAPS = 200
"""Shown maps the colour scale comes from: the latest ones."""


def stream_threshold(calibration: Sequence[float], alpha: float) -> float:
    """The conformal threshold of :func:`defectscope.methods.verdict.conformal_threshold` on the
    calibration scores, or inf while there are too few of them for ``alpha`` (nothing flagged)."""
    from defectscope.methods.verdict import conformal_count, conformal_threshold

    if len(calibration) < conformal_count(alpha):
        return math.inf
    return conformal_threshold(np.asarray(calibration, dtype=np.float64), alpha, source="bank images").value


@dataclass
class Scored:
    """One image's outcome: ``score`` None when it could not be scored (a lone image at exit)."""

    key: str
    image: np.ndarray
    score: float | None
    anomalous: bool | None
    anomaly_map: np.ndarray | None
    ready_at: float
    review: bool = False
    """The scorer sent the image to review (its statistic lies in the review band)."""

    @property
    def verdict(self) -> str:
        """``anomalous``, ``review`` or ``normal``; empty when there is no verdict."""
        if self.anomalous is None:
            return ""
        return "anomalous" if self.anomalous else ("review" if self.review else "normal")


class Journal:
    """An append-only CSV whose rows survive a kill: flushed and fsynced one by one."""

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self.path = path
        self.header = list(header)
        cut_torn_line(path)
        if not path.exists() or path.stat().st_size == 0:
            self._append_line(self.header)

    def rows(self) -> list[dict[str, str]]:
        with open(self.path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def _append_line(self, values: Sequence[object]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, values: Sequence[object]) -> None:
        self._append_line(values)


class ZeroShotScorer:
    """MuSc features of one image at a time, scored against a rolling or a fixed bank."""

    def __init__(self, musc, alpha: float, bank_size: int, min_bank: int) -> None:
        from defectscope.methods.rolling import RollingBank

        if not 2 <= min_bank <= bank_size:
            raise ConfigError(f"--min-bank must lie in [2, --bank-size], got {min_bank} with a bank of {bank_size}")
        self.musc = musc
        self.alpha = alpha
        self.min_bank = min_bank
        self.bank = RollingBank(bank_size, musc.config.lower, musc.config.upper)
        self.rolling = True
        self.started = False
        self.pending: list[tuple[str, np.ndarray, list[torch.Tensor], float]] = []
        self.grid: tuple[int, int] = (0, 0)
        self._calibration: np.ndarray | None = None

    def features(self, image: np.ndarray) -> list[torch.Tensor]:
        sets, self.grid, _ = self.musc.feature_sets([image], native_grids=self.musc.config.native_grids)
        return [s[0] for s in sets]

    def _maps(self, per_set: list[torch.Tensor]) -> np.ndarray:
        from defectscope.methods.musc import to_finest_grid

        n = per_set[0].shape[0]
        patch = torch.stack([to_finest_grid(s.reshape(n, -1), self.grid) for s in per_set]).mean(dim=0)
        return self.musc.maps_from_patch_scores(patch, self.grid).cpu().numpy()

    def calibration(self) -> np.ndarray:
        """Leave-one-out image scores of the bank members (cached until the bank changes)."""
        if self._calibration is None:
            maps = self._maps(self.bank.leave_one_out())
            self._calibration = maps.reshape(len(maps), -1).max(axis=1)
        return self._calibration

    def use_good(self, keyed_images: Sequence[tuple[str, np.ndarray]]) -> None:
        """Make the bank the given good images, fixed (no admissions)."""
        from defectscope.methods.rolling import RollingBank

        if len(keyed_images) < 2:
            raise ConfigError(f"--good needs at least 2 readable images, found {len(keyed_images)}")
        self.bank = RollingBank(len(keyed_images), self.musc.config.lower, self.musc.config.upper)
        for key, image in keyed_images:
            self.bank.add(key, self.features(image))
        self.rolling = False
        self.started = True

    def restore(self, keyed_images: Sequence[tuple[str, np.ndarray]], any_rows: bool) -> None:
        """Rebuild the rolling bank after a restart from the images last judged normal."""
        for key, image in keyed_images:
            self.bank.add(key, self.features(image))
        self.started = any_rows and len(self.bank) >= 2

    def score(self, key: str, image: np.ndarray, ready_at: float) -> list[Scored]:
        """Score one image; returns the rows now decided (none while the first batch waits)."""
        sets = self.features(image)
        if not self.started:
            self.pending.append((key, image, sets, ready_at))
            return self._first_batch() if len(self.pending) >= self.min_bank else []
        calibration = self.calibration()
        comparison = self.bank.compare(sets)
        anomaly_map = self._maps([s.unsqueeze(0) for s in self.bank.query_scores(comparison)])[0]
        score = float(anomaly_map.max())
        anomalous = score > stream_threshold(calibration, self.alpha)
        if self.rolling and not anomalous:
            self.bank.add(key, sets, comparison)
            self._calibration = None
        return [Scored(key, image, score, anomalous, anomaly_map, ready_at)]

    def _first_batch(self) -> list[Scored]:
        """Mutual scoring of the waiting images; those judged normal stay in the bank."""
        for key, _, sets, _ in self.pending:
            self.bank.add(key, sets)
        self._calibration = None
        scores = self.calibration()
        maps = self._maps(self.bank.leave_one_out())
        position = {key: index for index, key in enumerate(self.bank.members())}
        rows = []
        for key, image, _, ready_at in self.pending:
            index = position[key]
            others = np.delete(scores, index)
            anomalous = bool(scores[index] > stream_threshold(others, self.alpha))
            rows.append(Scored(key, image, float(scores[index]), anomalous, maps[index], ready_at))
            if anomalous:
                self.bank.remove(key)
        self.pending = []
        self._calibration = None
        self.started = len(self.bank) >= 2
        return rows

    def flush(self) -> list[Scored]:
        """At exit: score the waiting images together, or report a lone one as unscored."""
        if len(self.pending) >= 2:
            return self._first_batch()
        rows = [Scored(key, image, None, None, None, ready_at) for key, image, _, ready_at in self.pending]
        self.pending = []
        return rows


class ModelScorer:
    """A trained U-Flow or PRN model, one image at a time."""

    rolling = False

    def __init__(self, detector) -> None:
        self.detector = detector

    def score(self, key: str, image: np.ndarray, ready_at: float) -> list[Scored]:
        result = self.detector.predict([image], [key])
        verdict = getattr(result, "is_anomalous", None)
        if verdict is not None:
            anomalous: bool | None = bool(verdict[0])
        elif result.masks is not None:
            anomalous = bool(result.masks[0].any())
        else:
            anomalous = None
        doubt = getattr(result, "needs_review", None)
        review = doubt is not None and bool(doubt[0]) and not anomalous
        return [Scored(key, image, float(result.image_scores[0]), anomalous, result.anomaly_maps[0], ready_at, review)]

    def flush(self) -> list[Scored]:
        return []


@dataclass
class _Top:
    """A report entry kept while the image is among the highest scores (thumbnail size)."""

    score: float
    verdict: str
    thumbnail: np.ndarray
    small_map: np.ndarray | None
    overlay: np.ndarray


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


@dataclass
class WatchSummary:
    """What a watch run did: rows written, files skipped, latencies of the scored images."""

    written: int = 0
    skipped: int = 0
    seconds: list[float] = field(default_factory=list)
    interrupted: bool = False
    """Stopped by Ctrl-C or SIGTERM: images still waiting for the first bank were not scored
    (they have no row, so the next start over the same ``OUT`` scores them)."""


def _is_candidate(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _overlay_name(key: str, root: Path) -> str:
    relative = Path(key).relative_to(root) if Path(key).is_relative_to(root) else Path(Path(key).name)
    text = "__".join(relative.with_suffix("").parts) or "image"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) + ".png"


class Watcher:
    """The watch loop over ``in_dir`` writing into ``out`` (see the module docstring)."""

    def __init__(
        self,
        in_dir: str | Path,
        out: str | Path,
        scorer,
        *,
        settle: float = 1.0,
        give_up: float = 10.0,
        poll: float = 0.5,
        report_every: float = 10.0,
        settings: dict | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.in_dir = Path(in_dir).absolute()
        self.out = Path(out).absolute()
        if not self.in_dir.is_dir():
            raise ConfigError(f"input folder '{in_dir}' does not exist or is not a folder")
        if settle < 0 or give_up < settle or poll <= 0:
            raise ConfigError(f"need 0 <= --settle <= --give-up and --poll > 0, got {settle}, {give_up}, {poll}")
        self.scorer = scorer
        self.settle, self.give_up, self.poll, self.report_every = settle, give_up, poll, report_every
        self.settings = dict(settings or {})
        self.log = log
        self.seen: dict[Path, _Seen] = {}
        self.summary = WatchSummary()
        self._prepare_out()
        self.verdicts = Journal(self.out / VERDICTS, ["path", "score", "verdict", "seconds"])
        self.skips = Journal(self.out / SKIPPED, ["path", "reason"])
        done = self.verdicts.rows()
        self.counts = Counter(row["verdict"] for row in done)
        self.taken = {row["path"] for row in done} | {row["path"] for row in self.skips.rows()}
        self._last_report = 0.0
        self.top: dict[str, _Top] = {}
        self._shown: list[np.ndarray] = []
        self._color_range: tuple[float, float] | None = None
        self._load_top()

    def _prepare_out(self) -> None:
        if self.out.exists() and any(self.out.iterdir()) and not is_defectscope_folder(self.out):
            raise DefectscopeError(f"output folder '{self.out}' holds files that defectscope did not write; choose another or an empty folder")
        if self.out.exists() and any(self.out.iterdir()) and not (self.out / VERDICTS).exists():
            raise DefectscopeError(f"output folder '{self.out}' holds another defectscope run, not a watch; choose another folder")
        (self.out / "maps").mkdir(parents=True, exist_ok=True)
        write_marker(self.out, data={"command": "watch", "input": str(self.in_dir), **self.settings})

    def restore_bank(self) -> None:
        """After a restart: feed the rolling bank the last normal images of the journal."""
        if not getattr(self.scorer, "rolling", False):
            return
        rows = self.verdicts.rows()
        normal = [row["path"] for row in rows if row["verdict"] == "normal"][-self.scorer.bank.capacity :]
        keyed = []
        for key in normal:
            try:
                keyed.append((key, read_image(key)))
            except ImageReadError as exc:
                self.log(f"bank image no longer readable, left out of the bank: {exc}")
        self.scorer.restore(keyed, any_rows=bool(rows))

    def _scan(self, now: float) -> list[Path]:
        """Files whose size and mtime have been stable for ``settle`` seconds, oldest first."""
        present: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(self.in_dir):
            base = Path(dirpath)
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and (base / d) != self.out]
            for name in filenames:
                path = base / name
                if not _is_candidate(path) or str(path) in self.taken:
                    continue
                try:
                    stat = path.stat()
                except OSError:
                    continue
                present.add(path)
                seen = self.seen.get(path)
                if seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                    self.seen[path] = _Seen(stat.st_size, stat.st_mtime_ns, now)
        for gone in set(self.seen) - present:
            del self.seen[gone]
        stable = [p for p, s in self.seen.items() if now - s.since >= self.settle]
        return sorted(stable, key=lambda p: (self.seen[p].mtime_ns, str(p)))

    def _note_map(self, anomaly_map: np.ndarray) -> None:
        """Add a fixed-stride sample of a shown map to the values the colour scale comes from."""
        values = np.asarray(anomaly_map, dtype=np.float32).reshape(-1)
        self._shown.append(values[:: max(1, -(-values.size // COLOR_SAMPLE_PER_MAP))].copy())
        if len(self._shown) > COLOR_SAMPLE_MAPS:
            self._shown.pop(0)
        self._color_range = None

    def color_range(self) -> tuple[float, float] | None:
        """The overlays' colour scale: the rule of ``score``'s report (1st to 99th percentile of
        the map values, :func:`batch_color_range`) over the maps shown so far (the latest
        ``COLOR_SAMPLE_MAPS``, each sampled); None before any map was shown."""
        from defectscope.report.overlay import batch_color_range

        if self._color_range is None and self._shown:
            self._color_range = batch_color_range(np.concatenate(self._shown))
        return self._color_range

    def _write(self, rows: Sequence[Scored]) -> None:
        from defectscope.report.batch import OVERLAY_MAX_SIDE
        from defectscope.report.overlay import heatmap_overlay, make_thumbnail, save_png

        for row in rows:  # rows decided together (a first batch) share one scale, as in score
            if row.anomaly_map is not None:
                self._note_map(row.anomaly_map)
        for row in rows:
            small_map = None
            if row.anomaly_map is not None:
                vmin, vmax = self.color_range()
                shown = row.image
                if max(shown.shape[:2]) > OVERLAY_MAX_SIDE:
                    shown = make_thumbnail(shown, width=max(1, round(shown.shape[1] * OVERLAY_MAX_SIDE / max(shown.shape[:2]))))
                overlay = heatmap_overlay(shown, row.anomaly_map, vmin=vmin, vmax=vmax)
                save_png(self.out / "maps" / _overlay_name(row.key, self.in_dir), overlay)
                small_map = row.anomaly_map
            verdict = row.verdict
            if row.score is not None:
                self._remember(row.key, row.score, verdict, row.image, small_map, overlay)
            seconds = round(time.monotonic() - row.ready_at, 3)
            self.verdicts.append([row.key, "" if row.score is None else f"{row.score:.6g}", verdict, f"{seconds:.3f}"])
            self.counts[verdict] += 1
            self.summary.written += 1
            self.summary.seconds.append(seconds)
            self.log(f"{verdict or 'unscored':9s} {row.score if row.score is not None else float('nan'):.4f}  {row.key}")

    def _skip(self, path: Path, reason: str) -> None:
        self.skips.append([str(path), reason])
        self.taken.add(str(path))
        self.seen.pop(path, None)
        self.summary.skipped += 1
        self.log(f"skipped: {reason}")

    def step(self) -> bool:
        """One poll: read and score every ready file. True when something happened."""
        now = time.monotonic()
        active = False
        for path in self._scan(now):
            read_at = time.monotonic()
            try:
                image = read_image(path)
            except ImageReadError as exc:
                if now - self.seen[path].since >= self.give_up:
                    self._skip(path, str(exc))
                    active = True
                continue
            del self.seen[path]
            self.taken.add(str(path))
            self._write(self.scorer.score(str(path), image, read_at))
            active = True
        if active and time.monotonic() - self._last_report >= self.report_every:
            self.write_report()
        return active

    def run(self, exit_after_idle: float | None = None) -> WatchSummary:
        """Poll until nothing new arrived for ``exit_after_idle`` seconds (then the images still
        waiting are scored together), or until Ctrl-C / SIGTERM (``KeyboardInterrupt``: the rows
        written so far stay, the report is refreshed and the summary says ``interrupted``)."""
        self.restore_bank()
        idle_since = time.monotonic()
        try:
            while True:
                if self.step() or self.seen:
                    idle_since = time.monotonic()
                elif exit_after_idle is not None and time.monotonic() - idle_since >= exit_after_idle:
                    break
                time.sleep(self.poll)
            self._write(self.scorer.flush())
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self.log("stopped: the rows written so far are kept; images not scored yet are scored on the next start")
        self.write_report()
        return self.summary

    def _remember(
        self, key: str, score: float, verdict: str, image: np.ndarray, anomaly_map: np.ndarray | None, overlay: np.ndarray
    ) -> None:
        """Keep small copies of the image, its map and overlay while it is among the highest
        scores; the report redraws the overlay from the map on the colour scale of that moment
        (an entry restored after a restart has no map and keeps its saved overlay)."""
        from defectscope.report.overlay import make_thumbnail, resize_map

        thumbnail = make_thumbnail(image, width=REPORT_THUMBNAIL)
        small_map = None if anomaly_map is None else resize_map(anomaly_map, thumbnail.shape[:2])
        self.top[key] = _Top(score, verdict, thumbnail, small_map, make_thumbnail(overlay, width=REPORT_THUMBNAIL))
        if len(self.top) > REPORT_ENTRIES:
            del self.top[min(self.top, key=lambda k: self.top[k].score)]

    def _load_top(self) -> None:
        """After a restart: the highest-scoring rows so far, their overlays read from maps/ and
        their images from the input folder (the overlay stands in for an image since removed)."""
        scored = [row for row in self.verdicts.rows() if row["score"]]
        for row in sorted(scored, key=lambda r: -float(r["score"]))[:REPORT_ENTRIES]:
            try:
                overlay = read_image(self.out / "maps" / _overlay_name(row["path"], self.in_dir))
            except ImageReadError:
                continue
            try:
                image = read_image(row["path"])
            except ImageReadError:
                image = overlay
            self._remember(row["path"], float(row["score"]), row["verdict"], image, None, overlay)

    def write_report(self) -> None:
        """Refresh report.html: counts and the (up to 100) highest-scoring images so far."""
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
            "images": sum(self.counts.values()),
            "anomalous": self.counts["anomalous"],
            "review": self.counts["review"],
            "normal": self.counts["normal"],
            "shown": f"the {len(entries)} highest scores",
        }
        write_report(
            self.out / "report.html",
            title=f"defectscope watch: {self.in_dir.name}",
            verdict_counts=self.counts,
            histogram=[(float(row["score"]), row["verdict"] or None) for row in self.verdicts.rows() if row["score"]],
            entries=entries,
            settings=self.settings,
            skipped=[(row["path"], row["reason"]) for row in self.skips.rows()],
            summary=summary,
            color_range=color_range,
            thumbnail_width=REPORT_THUMBNAIL,
        )
        self._last_report = time.monotonic()


def build_scorer(options, *, alpha: float, bank_size: int, min_bank: int, good: str | Path | None, model: str | Path | None, log: Callable[[str], None] = print):
    """The scorer a watch run uses: a trained model, a fixed good bank, or the rolling bank."""
    if good is not None and model is not None:
        raise ConfigError("give either --good or --model, not both")
    if model is not None:
        from defectscope.training import load_detector

        return ModelScorer(load_detector(model, options.device))
    from defectscope.pipeline import build_detector

    musc = build_detector(options)
    scorer = ZeroShotScorer(musc, alpha, bank_size, min(min_bank, bank_size))
    if good is not None:
        from defectscope.data.layouts import training_images
        from defectscope.data.batch import read_batch
        from defectscope.methods.bank import reference_sample

        samples = training_images(good)  # an MVTec category means its train/good, as for score
        chosen = reference_sample(len(samples), bank_size)
        images, paths, skipped = read_batch([samples[i].path for i in chosen], skip_unreadable=True)
        for path, reason in skipped:
            log(f"good image skipped: {reason}")
        scorer.use_good(list(zip(map(str, paths), images)))
    return scorer


def watch_folder(
    in_dir: str | Path,
    out: str | Path,
    options,
    *,
    alpha: float = 0.05,
    bank_size: int = 100,
    min_bank: int = 20,
    good: str | Path | None = None,
    model: str | Path | None = None,
    settle: float = 1.0,
    give_up: float = 10.0,
    poll: float = 0.5,
    exit_after_idle: float | None = None,
    log: Callable[[str], None] = print,
) -> WatchSummary:
    """Watch ``in_dir`` and write verdicts into ``out`` until interrupted or idle (library API
    of `defectscope watch`)."""
    from defectscope.options import apply_threads

    from defectscope.methods.verdict import check_false_alarm_rate, conformal_count

    apply_threads(options.threads)
    check_false_alarm_rate(alpha)
    scorer = build_scorer(options, alpha=alpha, bank_size=bank_size, min_bank=min_bank, good=good, model=model, log=log)
    settings = {
        "scorer": "model" if model else ("good" if good else "rolling bank"),
        "model": str(model) if model else None,
        "good": str(good) if good else None,
        "false_alarm_rate": alpha,
        "bank_size": bank_size,
        "min_bank": min_bank,
        "backbone": options.backbone,
        "image_size": options.image_size,
    }
    if model is None and bank_size < conformal_count(alpha):
        log(f"warning: a bank of {bank_size} images is too small to flag anything at false-alarm rate {alpha}; it needs at least {conformal_count(alpha)}")
    watcher = Watcher(in_dir, out, scorer, settle=settle, give_up=give_up, poll=poll, settings=settings, log=log)
    return watcher.run(exit_after_idle)
