"""The reviewer's decisions, kept in ``OUT/review.csv`` (``path, decision, score, verdict, decided_at``).

The file is the source of truth. Every change re-reads it, applies one decision and writes it
back atomically, under a lock held across threads and processes (``fcntl.flock`` on the hidden
``OUT/.review.lock``), so two tabs or two servers on the same folder never lose each other's
decisions. Decisions:

* ``good``: the part is fine (a confirmed-good reference image);
* ``defective``: the part is defective and the proposed mask, if any, is right;
* ``defective-mask-rejected``: defective, but the proposed mask is wrong;
* ``skip``: looked at, left undecided for now.
"""

from __future__ import annotations

import contextlib
import csv
import io
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from defectscope.errors import ReviewError
from defectscope.report.atomic import atomic_write_text
from defectscope.review.folder import ReviewRun

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the thread lock alone
    fcntl = None

REVIEW_FILE = "review.csv"
LOCK_FILE = ".review.lock"
COLUMNS = ("path", "decision", "score", "verdict", "decided_at")
DECISIONS = ("good", "defective", "defective-mask-rejected", "skip")
DEFECTIVE = ("defective", "defective-mask-rejected")


@dataclass(frozen=True)
class Decision:
    """One row of review.csv."""

    path: str
    decision: str
    decided_at: str


class DecisionStore:
    """Read and change the decisions of one run; see the module docstring."""

    _locks: dict[Path, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def __init__(self, run: ReviewRun) -> None:
        self.run = run
        self.path = run.folder / REVIEW_FILE
        with self._locks_guard:
            self._lock = self._locks.setdefault(self.path.resolve(), threading.Lock())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self.run.folder / LOCK_FILE, "a") as handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self) -> dict[str, Decision]:
        """The decisions on disk by path; ReviewError in one sentence when review.csv is malformed."""
        if not self.path.exists():
            return {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReviewError(f"cannot read '{self.path}' ({exc}); move it away to start the review afresh") from exc
        try:
            reader = csv.DictReader(io.StringIO(text))
            columns = reader.fieldnames or []
            rows = list(reader)
        except csv.Error as exc:
            raise ReviewError(f"'{self.path}' is not a valid CSV file ({exc}); move it away to start the review afresh") from exc
        if tuple(columns[: len(COLUMNS)]) != COLUMNS:
            raise ReviewError(f"'{self.path}' does not start with the columns {', '.join(COLUMNS)}; move it away to start the review afresh")
        decisions: dict[str, Decision] = {}
        for line, row in enumerate(rows, start=2):
            path, decision = row.get("path"), row.get("decision")
            if self.run.part(path or "") is None:
                raise ReviewError(f"'{self.path}' line {line}: '{path}' is not a scored part of this run")
            if decision not in DECISIONS:
                raise ReviewError(f"'{self.path}' line {line}: decision {decision!r} is not one of {', '.join(DECISIONS)}")
            if path in decisions:
                raise ReviewError(f"'{self.path}' lists '{path}' twice (line {line})")
            decisions[path] = Decision(path, decision, row.get("decided_at") or "")
        return decisions

    def _write(self, decisions: dict[str, Decision]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for part in self.run.parts:
            if part.path in decisions:
                entry = decisions[part.path]
                writer.writerow([part.path, entry.decision, repr(part.score), part.verdict or "", entry.decided_at])
        atomic_write_text(self.path, buffer.getvalue())

    def decide(self, path: str, decision: str | None) -> dict[str, Decision]:
        """Record ``decision`` for ``path`` (None clears it); return all decisions after the change."""
        if self.run.part(path) is None:
            raise KeyError(path)
        if decision is not None and decision not in DECISIONS:
            raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        try:
            with self._locked():
                decisions = self.load()
                if decision is None:
                    decisions.pop(path, None)
                else:
                    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    decisions[path] = Decision(path, decision, stamp)
                self._write(decisions)
        except OSError as exc:
            raise ReviewError(f"cannot save the decision to '{self.path}' ({exc.strerror or exc}); is the output folder writable?") from exc
        return decisions
