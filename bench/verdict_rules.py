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

from defectscope.methods.labelfree import label_free_threshold
from defectscope.methods.verdict import Threshold, cap_review, decide, gumbel_threshold, in_review


def gumbel(maxima: np.ndarray, alpha: float) -> Threshold:
    """The rule before the review band: the Gumbel cut alone."""
    return gumbel_threshold(maxima, alpha)


def consensus(maxima: np.ndarray, alpha: float) -> Threshold:
    """Today's rule: the three-cut agreement, review capped at the default 20 %."""
    return cap_review(maxima, label_free_threshold(maxima, alpha), 0.2)


def normal_only(batches: dict[str, dict]) -> dict[str, dict]:
    """Proxies of batches without defects: each batch's normal images' statistics alone, and
    three draws of 6 of bottle's normal images (a small batch of good parts)."""
    out = {}
    for name, batch in batches.items():
        keep = batch["labels"] == 0
        if keep.sum() >= 8:
            out[f"{name} (normals only)"] = {"labels": batch["labels"][keep], "maxima": batch["maxima"][keep]}
    if "bottle" in batches:
        normal = batches["bottle"]["maxima"][batches["bottle"]["labels"] == 0]
        rng = np.random.default_rng(0)
        for draw in range(3):
            out[f"6 good bottles, draw {draw}"] = {"labels": np.zeros(6, dtype=int), "maxima": rng.choice(normal, 6, replace=False)}
    return out


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
    recalls = [r["recall"] for r in rows.values() if r["recall"] is not None] or [float("nan")]
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
    proxies = normal_only(batches)
    for name, rule in (("Gumbel cut alone (the rule before)", gumbel), ("three-cut agreement, review capped at 20 % (default)", consensus)):
        print(table(f"{args.method}: {name}", evaluate(rule, batches)))
        print(table(f"{args.method}: {name}, batches without defects (proxies)", evaluate(rule, proxies)))
        print()
