"""Compare label-free verdict rules on stored zero-shot scores (bench/verdict_data.py output).

    python bench/verdict_rules.py /tmp/verdict-data [--method musc]

For each batch and rule: false-alarm rate (normal images called anomalous), recall (defective
images called anomalous), review share (all images sent to review). Rules see only the batch's
verdict statistics (map maxima), never the labels.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

from defectscope.methods.verdict import Threshold, decide, in_review, label_free_threshold


def current(maxima: np.ndarray, alpha: float) -> Threshold:
    return label_free_threshold(maxima, alpha)


def load(folder: Path, method: str) -> dict[str, dict]:
    out = {}
    for path in sorted(glob.glob(str(folder / f"*__{method}.npz"))):
        data = np.load(path)
        out[Path(path).name.split("__")[0]] = {"labels": data["labels"], "maxima": data["maxima"].astype(np.float64)}
    return out


def evaluate(rule, batches: dict[str, dict], alpha: float = 0.05) -> dict[str, dict]:
    rows = {}
    for name, batch in batches.items():
        y, s = batch["labels"].astype(bool), batch["maxima"]
        threshold = rule(s, alpha)
        anomalous, review = decide(s, threshold), in_review(s, threshold)
        rows[name] = {
            "far": float(anomalous[~y].mean()) if (~y).any() else None,
            "recall": float(anomalous[y].mean()) if y.any() else None,
            "review": float(review.mean()),
            "missed": float((~anomalous & ~review)[y].mean()) if y.any() else None,
        }
    return rows


def summary(rows: dict[str, dict]) -> dict[str, float]:
    fars = [r["far"] for r in rows.values() if r["far"] is not None]
    recalls = [r["recall"] for r in rows.values() if r["recall"] is not None]
    return {"max_far": max(fars), "over_budget": sum(f > 0.05 for f in fars), "mean_recall": float(np.mean(recalls)),
            "max_review": max(r["review"] for r in rows.values()), "mean_review": float(np.mean([r["review"] for r in rows.values()]))}


def table(name: str, rows: dict[str, dict]) -> str:
    lines = [f"### {name}", "| batch | FAR | recall | review | missed |", "|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for batch, r in rows.items():
        lines.append(f"| {batch} | {fmt(r['far'])} | {fmt(r['recall'])} | {fmt(r['review'])} | {fmt(r['missed'])} |")
    s = summary(rows)
    lines.append(f"| **max FAR / mean recall / max review** | {fmt(s['max_far'])} | {fmt(s['mean_recall'])} | {fmt(s['max_review'])} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--method", default="musc")
    args = parser.parse_args()
    batches = load(args.folder, args.method)
    print(table("current", evaluate(current, batches)))
