"""Turning the reviewer's decisions into training data (``defectscope review OUT --export DIR``).

``DIR`` is written atomically (staged, then renamed) as an MVTec AD category, so that it can be
given as it is to the commands that take one:

* ``train/good/``: copies of the confirmed-good images: ``defectscope fit DIR --method uflow``
  trains on them, and ``--good DIR`` calibrates the verdicts on them;
* ``test/defective/`` with ``ground_truth/defective/NAME_mask.png``: the confirmed-defective
  images whose proposed mask the reviewer accepted, the mask (the run's ``masks/`` file)
  enlarged, nearest neighbour, to the image's own size: PRN's ``--anomalies DIR``;
* ``defective-without-mask/``: confirmed-defective images with no usable mask (the method made
  none, the reviewer rejected it, or it is empty); to use them, draw a mask and add the pair to
  ``test/defective`` and ``ground_truth/defective``;
* ``summary.json`` and ``summary.md``: counts, overturned verdicts, the suggested threshold and
  every part left out with the reason.

File names are the image's path below the folder common to the whole run, with separators
turned into ``_`` (``test/crack/000.png`` -> ``crack_000.png``), made unique with ``-2``, ``-3``.
Images are copied byte for byte; inputs and the run are never changed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.data.io import read_image
from defectscope.data.layouts import MASK_SUFFIX
from defectscope.errors import DefectscopeError, ReviewError
from defectscope.report.atomic import atomic_write_text, staged_output
from defectscope.report.overlay import resize_mask, save_png
from defectscope.review.decisions import DEFECTIVE, DecisionStore
from defectscope.review.folder import Part, ReviewRun, safe_name
from defectscope.review.summary import review_summary

FOLDERS = {"good": "train/good", "defective": "test/defective", "defective-without-mask": "defective-without-mask"}
MASK_FOLDER = "ground_truth/defective"


def _export_names(parts: list[Part]) -> dict[str, str]:
    """A unique, flat file name for each part (see the module docstring)."""
    if not parts:
        return {}
    folders = [Path(os.path.abspath(part.path)).parent for part in parts]
    common = Path(os.path.commonpath([str(folder) for folder in folders]))
    names: dict[str, str] = {}
    taken: set[str] = set()
    for part in parts:
        relative = Path(os.path.abspath(part.path)).relative_to(common)
        stem = "_".join((*relative.parent.parts, relative.stem))
        stem = safe_name(stem) or "image"
        if stem.endswith(MASK_SUFFIX):
            stem += "_image"
        suffix = relative.suffix.lower()
        name, count = f"{stem}{suffix}", 1
        while name.lower() in taken:
            count += 1
            name = f"{stem}-{count}{suffix}"
        taken.add(name.lower())
        names[part.path] = name
    return names


def _proposed_mask(part: Part, decision: str, size_hw: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """The accepted mask at the image's size, or None and why there is none."""
    if decision != "defective":
        return None, "the reviewer rejected the proposed mask"
    if part.mask_file is None:
        return None, "the method proposed no mask"
    mask = np.asarray(read_image(part.mask_file))[..., 0] > 127
    if not mask.any():
        return None, "the proposed mask is empty"
    return resize_mask(mask, size_hw), ""


def _summary_markdown(summary: dict[str, Any], written: dict[str, int], left_out: list[tuple[str, str]]) -> str:
    suggested = summary["suggested"]
    lines = [
        "# defectscope review export",
        "",
        f"- reviewed: {summary['reviewed']} of {summary['total']} parts ({summary['counts']['skip']} skipped)",
        f"- {FOLDERS['good']}/: {written['good']} images; {FOLDERS['defective']}/: {written['defective']} images with masks in {MASK_FOLDER}/; {FOLDERS['defective-without-mask']}/: {written['defective-without-mask']} images",
    ]
    if summary["false_alarms"] is None:
        lines.append("- overturned verdicts: n/a (the run has no verdicts)")
    else:
        lines.append(f"- overturned verdicts: {summary['false_alarms']} false alarms (anomalous -> good), {summary['misses']} misses (normal -> defective)")
    lines.append(f"- run threshold: {'none' if summary['threshold'] is None else format(summary['threshold'], '.6g')}")
    if suggested is None:
        lines.append("- suggested threshold: none (needs a confirmed-good and a confirmed-defective part with different scores)")
    else:
        lines.append(f"- suggested threshold: {suggested['threshold']:.6g} ({suggested['wrong']} confirmed parts on the wrong side; rule: {suggested['rule']})")
    if left_out:
        lines += ["", "## Left out", "", "| image | reason |", "|:---|:---|"]
        lines += [f"| {path} | {reason} |" for path, reason in left_out]
    return "\n".join(lines) + "\n"


def export_review(run: ReviewRun, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the export folder ``out`` (see the module docstring); return the summary written."""
    decisions = DecisionStore(run).load()
    if not any(entry.decision != "skip" for entry in decisions.values()):
        raise ReviewError(f"no part of '{run.folder}' is confirmed good or defective yet; review it first with `defectscope review {run.folder}`")
    target_dir, source = Path(out).resolve(), run.folder.resolve()
    if target_dir == source or target_dir in source.parents:
        raise ReviewError(f"export folder '{out}' would replace the run being exported ('{run.folder}'); choose another folder")
    names = _export_names(run.parts)
    written = {kind: 0 for kind in FOLDERS}
    left_out: list[tuple[str, str]] = []
    with staged_output(out, overwrite) as staging:
        for folder in (*FOLDERS.values(), MASK_FOLDER):
            (staging / folder).mkdir(parents=True)
        for part in run.parts:
            entry = decisions.get(part.path)
            if entry is None or entry.decision == "skip":
                continue
            try:
                size_hw = read_image(part.path).shape[:2]
            except DefectscopeError as exc:
                left_out.append((part.path, f"image unreadable: {exc}"))
                continue
            name = names[part.path]
            kind = "good"
            if entry.decision in DEFECTIVE:
                mask, reason = _proposed_mask(part, entry.decision, size_hw)
                if mask is None:
                    kind = "defective-without-mask"
                    left_out.append((part.path, f"not a PRN training defect: {reason}"))
                else:
                    kind = "defective"
                    save_png(staging / MASK_FOLDER / f"{Path(name).stem}{MASK_SUFFIX}.png", mask)
            shutil.copyfile(part.path, staging / FOLDERS[kind] / name)
            written[kind] += 1
        summary = review_summary(run, decisions)
        report = {**summary, "source": str(run.folder), "written": written, "left_out": [{"path": p, "reason": r} for p, r in left_out]}
        atomic_write_text(staging / "summary.json", json.dumps(report, indent=2))
        atomic_write_text(staging / "summary.md", _summary_markdown(summary, written, left_out))
    return report
