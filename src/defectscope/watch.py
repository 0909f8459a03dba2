"""`defectscope watch`: inspect each new image of a folder as it arrives, crash-safely.

Each image gets one row in ``OUT/verdicts.csv`` (``path, score, verdict, seconds``: from
reading the file to its row being on disk, for the first batch including the wait) and its
overlay in ``OUT/maps/``; ``OUT/report.html`` is refreshed as rows come in. Three scorers:

- zero-shot against a rolling bank (default): the last ``bank_size`` images judged normal
  (:class:`defectscope.methods.rolling.RollingBank`). The first ``min_bank`` images wait and are
  scored together by mutual scoring; later images are scored against the bank as they arrive.
  ``part_crop`` is decided once on that first batch (docs/PARTCROP.md); the decision is logged
  and recorded as the settings' ``batch_facts`` (the marker file and the report; with ``good``:
  the decision on the good images).
- zero-shot against a folder of good parts (``good``): the detector's reference mode, calibrated
  on them once (the same scores, verdicts and review band as ``score --good``).
- a trained U-Flow or PRN model (``model``).

The rolling bank's verdicts are conformal: an image is anomalous when at most
``floor(alpha (n + 1)) - 1`` of the n calibration scores (the bank members' leave-one-out
scores; in the first batch, the other images' scores) are at least its score, i.e. its
conformal p-value is <= alpha = ``false_alarm_rate``. The other scorers' verdicts are the
detector's own (docs/VERDICTS.md).

This module keeps only the polling and the journals: the scorers are built from the options
resolved by the run layer (:mod:`defectscope.watch_scorers`; the zero-shot one lives in
:mod:`defectscope.methods.rolling`), the overlays and report come from
:mod:`defectscope.watch_report` (the report code of ``score``).

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
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from defectscope.data.io import IMAGE_EXTENSIONS, read_image
from defectscope.errors import ConfigError, DefectscopeError, ImageReadError
from defectscope.methods.rolling import Scored, ZeroShotScorer, stream_threshold  # noqa: F401  (earlier home)
from defectscope.options import RunOptions
from defectscope.report.atomic import cut_torn_line, is_defectscope_folder, write_marker
from defectscope.watch_scorers import WATCH_DEFAULTS, ModelScorer, build_scorer, watch_spec  # noqa: F401
from defectscope.watch_report import WatchReport

VERDICTS = "verdicts.csv"
SKIPPED = "skipped.csv"


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
        self.report = WatchReport(self.out, self.in_dir, self.settings)
        self.report.load_top(done)

    def note_batch_facts(self) -> None:
        """Record what the scorer decided from the stream (``part_crop``, once decided) as the
        settings' ``batch_facts``: in the folder's marker file and the report's settings."""
        facts = self.scorer.batch_facts()
        if facts and facts != self.settings.get("batch_facts"):
            self.settings["batch_facts"] = facts  # the report holds this dict
            self._write_marker()

    def _write_marker(self) -> None:
        write_marker(self.out, data={"command": "watch", "input": str(self.in_dir), **self.settings})

    def _prepare_out(self) -> None:
        if self.out.exists() and any(self.out.iterdir()) and not is_defectscope_folder(self.out):
            raise DefectscopeError(f"output folder '{self.out}' holds files that defectscope did not write; choose another or an empty folder")
        if self.out.exists() and any(self.out.iterdir()) and not (self.out / VERDICTS).exists():
            raise DefectscopeError(f"output folder '{self.out}' holds another defectscope run, not a watch; choose another folder")
        (self.out / "maps").mkdir(parents=True, exist_ok=True)
        self._write_marker()

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

    def color_range(self) -> tuple[float, float] | None:
        """The overlays' colour scale now (:meth:`WatchReport.color_range`)."""
        return self.report.color_range()

    def _write(self, rows: Sequence[Scored]) -> None:
        self.note_batch_facts()
        for row in rows:  # rows decided together (a first batch) share one scale, as in score
            if row.anomaly_map is not None:
                self.report.note_map(row.anomaly_map)
        for row in rows:
            verdict = row.verdict
            if row.score is not None and row.anomaly_map is not None:
                overlay = self.report.save_overlay(row.key, row.image, row.anomaly_map)
                self.report.remember(row.key, row.score, verdict, row.image, row.anomaly_map, overlay)
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
        self.note_batch_facts()  # decided before the stream (--good) or on the rebuilt bank (restart)
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

    def write_report(self) -> None:
        """Refresh report.html: counts and the (up to 100) highest-scoring images so far."""
        self.report.write(self.counts, self.verdicts.rows(), self.skips.rows())
        self._last_report = time.monotonic()


def watch_folder(
    in_dir: str | Path,
    out: str | Path,
    options: RunOptions | None = None,
    *,
    false_alarm_rate: float | None = None,
    bank_size: int | None = None,
    min_bank: int | None = None,
    good: str | Path | None = None,
    model: str | Path | None = None,
    settle: float = 1.0,
    give_up: float = 10.0,
    poll: float = 0.5,
    exit_after_idle: float | None = None,
    log: Callable[[str], None] = print,
) -> WatchSummary:
    """Watch ``in_dir`` and write verdicts into ``out`` until interrupted or idle (library API
    of `defectscope watch`). ``false_alarm_rate`` and ``good`` may also come in
    ``options``; ``bank_size`` and ``min_bank`` default to :data:`WATCH_DEFAULTS`."""
    from defectscope.methods.verdict import conformal_count
    from defectscope.options import apply_threads

    spec = watch_spec(options, false_alarm_rate=false_alarm_rate, good=good, model=model, bank_size=bank_size, min_bank=min_bank)
    apply_threads(spec.threads)
    scorer = build_scorer(spec, bank_size=bank_size, min_bank=min_bank, model=model, log=log)
    settings = {
        "scorer": "model" if model else ("good" if spec.good else "rolling bank"),
        "model": str(model) if model else None,
        **scorer.settings(),
        **spec.run_settings(),
        "settle": settle,
        "give_up": give_up,
        "poll": poll,
    }
    if isinstance(scorer, ZeroShotScorer) and scorer.bank.capacity < conformal_count(spec.false_alarm_rate):
        log(f"warning: a bank of {scorer.bank.capacity} images is too small to flag anything at false-alarm rate {spec.false_alarm_rate}; it needs at least {conformal_count(spec.false_alarm_rate)}")
    watcher = Watcher(in_dir, out, scorer, settle=settle, give_up=give_up, poll=poll, settings=settings, log=log)
    return watcher.run(exit_after_idle)
