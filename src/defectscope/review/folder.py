"""Reading a finished output folder for review: the scored parts, their pictures and the threshold.

Recognised folders (``OUT``):

* ``score`` / ``predict`` / one ``evaluate`` category: ``scores.csv`` (``path, score, rank,
  [verdict, verdict_score], [label], map, status``), ``maps/``, ``masks/`` (when the method makes
  masks) and optionally ``settings.json`` (``threshold``, ``threshold_rule``,
  ``threshold_applies_to``, ``review_threshold``). The threshold is a cut on ``verdict_score``
  (on ``score`` in folders written before that column existed), and so is the review band's
  lower edge; a threshold that applies to no column (U-Flow's NFA level) is not shown as a cut.
  Overlays are ``maps/*.jpg`` (``*.png`` in older folders), masks ``masks/<same name>.png``.
* ``watch``: ``verdicts.csv`` (``path, score, verdict, seconds``) and ``maps/``, where each
  image's overlay is named after its path below the watched folder (``good__000.png``). The
  review reads the rows present when it starts.

Rows without a score (files the run skipped) are listed apart and cannot be decided.
* an ``evaluate`` root (``metrics.json`` and one folder per category): the category is chosen
  with ``category`` (needed only when there are several).

Only files inside ``OUT/maps`` and ``OUT/masks`` are ever resolved as pictures of a part, after
following symbolic links, so a table that names ``../x`` or a link pointing outside gives "no
picture", never a file outside the folder. Input images are the paths in the table (relative
ones are read from the current folder); they are read only by row number.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from defectscope.errors import ReviewError

SCORES_FILE = "scores.csv"
WATCH_FILE = "verdicts.csv"
SETTINGS_FILE = "settings.json"
VERDICTS = ("anomalous", "review", "normal")


@dataclass(frozen=True)
class Part:
    """One scored image of the run. ``index`` is its row number in the review (0 = top score)."""

    index: int
    path: str
    score: float
    rank: int
    verdict: str | None
    label: str | None
    map_file: Path | None
    mask_file: Path | None
    verdict_score: float | None = None

    @property
    def decision_score(self) -> float:
        """The statistic the run's threshold applies to: ``verdict_score``, else ``score``."""
        return self.score if self.verdict_score is None else self.verdict_score


@dataclass
class ReviewRun:
    """A run to review: its folder, its parts (most suspicious first) and its threshold."""

    folder: Path
    title: str
    parts: list[Part]
    threshold: float | None = None
    threshold_rule: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    review_threshold: float | None = None
    """The lower edge of the run's review band (same units as ``threshold``), None without one."""

    def __post_init__(self) -> None:
        self._by_path = {part.path: part for part in self.parts}

    def part(self, path: str) -> Part | None:
        """The part listed under ``path`` in the scores table, or None."""
        return self._by_path.get(path)

    def verdict_counts(self) -> dict[str, int]:
        """How many parts the run called anomalous, review and normal."""
        return {word: sum(part.verdict == word for part in self.parts) for word in VERDICTS}

    @property
    def has_verdicts(self) -> bool:
        """True when the run gave verdicts (a ``verdict`` column with values)."""
        return any(part.verdict is not None for part in self.parts)


def inside(folder: Path, candidate: Path) -> Path | None:
    """``candidate`` with links resolved when it is a file inside ``folder``, else None.

    ``folder`` itself is not followed when it is a link, so a ``maps`` link to elsewhere serves nothing.
    """
    root = folder.parent.resolve() / folder.name
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        return None
    return resolved


def _category_folder(out: Path, category: str | None) -> Path:
    """The folder holding the scores table: ``out`` itself or one evaluate category in it."""
    if (out / SCORES_FILE).is_file() or (out / WATCH_FILE).is_file():
        if category is not None:
            raise ReviewError(f"'{out}' is a single run, not an evaluate output; drop --category")
        return out
    categories = sorted(p.name for p in out.iterdir() if p.is_dir() and (p / SCORES_FILE).is_file())
    if not categories:
        raise ReviewError(f"'{out}' holds no {SCORES_FILE} or {WATCH_FILE}: give the output folder of a score, evaluate, predict or watch run")
    if category is None:
        if len(categories) == 1:
            return out / categories[0]
        raise ReviewError(f"'{out}' is an evaluate output with categories {', '.join(categories)}; choose one with --category")
    if category not in categories:
        raise ReviewError(f"--category '{category}' is not in '{out}'; it has {', '.join(categories)}")
    return out / category


def _cut(path: Path, settings: dict, key: str) -> float | None:
    value = settings.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise ReviewError(f"'{path}' has {key} {value!r}, which is not a finite number")
    return None if value is None else float(value)


def _settings(folder: Path) -> tuple[float | None, str | None, float | None]:
    """The run's threshold, its rule and the review band's lower edge; a threshold that is no cut
    on the verdict score (U-Flow's NFA level) gives no cut."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return None, None, None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReviewError(f"'{path}' is not readable JSON ({exc})") from exc
    if not isinstance(settings, dict):
        raise ReviewError(f"'{path}' is not a JSON object")
    threshold = _cut(path, settings, "threshold")
    review_from = _cut(path, settings, "review_threshold")
    rule = settings.get("threshold_rule")
    if settings.get("threshold_applies_to", "verdict_score") != "verdict_score":
        threshold = review_from = None
    return threshold, (None if rule is None else str(rule)), review_from


def safe_name(text: str) -> str:
    """``text`` with every character but letters, digits, ``-_.`` replaced by ``_`` (as in maps/)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _watch_map(maps: Path, image_path: str) -> Path | None:
    """The overlay ``watch`` wrote for an image: its path below the watched folder, without the
    suffix, parts joined by ``__`` (``IN/good/000.png`` -> ``good__000.png``); the longest match wins."""
    parts = Path(image_path).with_suffix("").parts
    for start in range(len(parts)):
        candidate = maps / f"{safe_name('__'.join(parts[start:]))}.png"
        if candidate.is_file():
            return candidate
    return None


def _read_rows(table: Path) -> list[dict[str, str]]:
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReviewError(f"cannot read '{table}' ({exc})") from exc
    for needed in ("path", "score"):
        if needed not in columns:
            raise ReviewError(f"'{table}' has no '{needed}' column (columns: {', '.join(columns) or 'none'})")
    return rows


def _number(table: Path, line: int, row: dict[str, str], column: str) -> float | None:
    """The finite number in ``row[column]``, None when the cell is empty or missing."""
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ReviewError(f"'{table}' line {line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ReviewError(f"'{table}' line {line}: {column} {text!r} is not finite")
    return value


def _part_fields(table: Path, line: int, row: dict[str, str]) -> tuple[float, str | None, float | None]:
    score = _number(table, line, row, "score")
    if score is None:
        raise ReviewError(f"'{table}' line {line} has no score")
    verdict = (row.get("verdict") or "").strip() or None
    if verdict is not None and verdict not in VERDICTS:
        raise ReviewError(f"'{table}' line {line}: verdict {verdict!r} is not 'anomalous', 'review' or 'normal'")
    return score, verdict, _number(table, line, row, "verdict_score")


def load_run(out: str | Path, category: str | None = None) -> ReviewRun:
    """Read the run in ``out`` (see the module docstring); raise ReviewError in one sentence."""
    out = Path(out)
    if not out.is_dir():
        raise ReviewError(f"output folder '{out}' does not exist or is not a folder")
    folder = _category_folder(out, category)
    watched = not (folder / SCORES_FILE).is_file()
    table = folder / (WATCH_FILE if watched else SCORES_FILE)
    maps, masks = folder / "maps", folder / "masks"
    scored: list[tuple[float, str, str | None, str | None, Path | None, float | None]] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line, row in enumerate(_read_rows(table), start=2):
        path = row.get("path") or ""
        if not path:
            raise ReviewError(f"'{table}' line {line} has an empty path")
        if path in seen:
            raise ReviewError(f"'{table}' lists '{path}' twice (line {line})")
        seen.add(path)
        status = row.get("status") or ""
        if status.startswith("skipped") or not (row.get("score") or "").strip():
            skipped.append((path, status.partition(":")[2].strip() or status or "not scored"))
            continue
        score, verdict, verdict_score = _part_fields(table, line, row)
        if watched:
            overlay = _watch_map(maps, path) if maps.is_dir() else None
        else:
            overlay = folder / row["map"] if row.get("map") else None
        scored.append((score, path, verdict, (row.get("label") or None), overlay, verdict_score))
    scored.sort(key=lambda item: (-item[0], item[1]))
    parts = []
    for index, (score, path, verdict, label, overlay, verdict_score) in enumerate(scored):
        map_file = inside(maps, overlay) if overlay is not None else None
        # A mask is the PNG named like its overlay (overlays are JPEG; folders written before that have PNG).
        mask_file = (inside(masks, masks / f"{overlay.stem}.png") or inside(masks, masks / overlay.name)) if overlay is not None else None
        parts.append(Part(index, path, score, index + 1, verdict, label, map_file, mask_file, verdict_score))
    threshold, rule, review_from = _settings(folder)
    title = folder.name if folder == out else f"{out.name} / {folder.name}"
    return ReviewRun(folder=folder, title=title, parts=parts, threshold=threshold, threshold_rule=rule, skipped=skipped,
                     review_threshold=review_from)
