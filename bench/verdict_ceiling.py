"""The ceiling of any cut: per stored batch, the recall an oracle cut reaches at false alarms <= 5 %.

    python bench/verdict_ceiling.py /tmp/verdict-data-pose --extra /tmp/verdict-data2 /tmp/verdict-data [--method musc]

Reads bench/verdict_data.py output (per batch: labels, map maxima, RsCIN scores, anomaly maps
max-pooled by 4). For each per-image statistic the oracle knows the labels: its cut is the
smallest value that leaves at most floor(0.05 * normals) normal images strictly above it, and its
recall is the share of defective images strictly above that cut. No label-free rule can beat it
with that statistic (a rule that keeps the budget on a batch must cut at or above the oracle's
cut there). Batches of the ``--extra`` folders are added where an earlier folder lacks them (a
batch stored without maps gets only the maxima column). All of it is development data.

Statistics (all from the stored data, no rescoring):
- ``max``: the map maximum (the verdict statistic today);
- ``rscin``: the ranking score (RsCIN over the map maxima);
- ``topK``: the mean of the K largest cells of the pooled 56 x 56 map (one cell = 4 x 4 pixels);
- ``countQ``: the number of cells above the batch's Q quantile of all cells of all images (the
  batch-level patch null; ties broken by the maximum);
- ``max-med``: the log map maximum minus the log median of the image's own map (per-image level).
"""

from __future__ import annotations

import argparse
import glob
import math
from pathlib import Path

import numpy as np

ALPHA = 0.05


def oracle_recall(stat: np.ndarray, labels: np.ndarray, alpha: float = ALPHA) -> float:
    """Recall at the cut that leaves at most floor(alpha * normals) normal images strictly above."""
    y = labels.astype(bool)
    normal = np.sort(stat[~y])
    allowed = int(math.floor(alpha * normal.size + 1e-9))
    cut = normal[normal.size - allowed - 1]
    return float((stat[y] > cut).mean())


def auroc(stat: np.ndarray, labels: np.ndarray) -> float:
    y = labels.astype(bool)
    pos, neg = stat[y], stat[~y]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def statistics(batch: dict) -> dict[str, np.ndarray]:
    out = {"max": batch["maxima"], "rscin": batch.get("scores")}
    maps = batch.get("maps")
    if maps is None:
        return {k: v for k, v in out.items() if v is not None}
    flat = maps.reshape(maps.shape[0], -1).astype(np.float32)
    ordered = -np.sort(-flat, axis=1)
    for k in (4, 16, 64):
        out[f"top{k}"] = ordered[:, :k].mean(axis=1)
    tiny = 1e-6 * float(np.ptp(batch["maxima"]) or 1.0)
    for q in (0.99, 0.999):
        level = np.quantile(flat, q)
        rank = np.argsort(np.argsort(batch["maxima"])) / len(batch["maxima"])  # tie-break in [0, 1)
        out[f"count{q:g}"] = (flat > level).sum(axis=1) + rank
    out["max-med"] = np.log(np.maximum(flat.max(axis=1), tiny)) - np.log(np.maximum(np.median(flat, axis=1), tiny))
    return out


def load(folder: Path, method: str) -> dict[str, dict]:
    out = {}
    for path in sorted(glob.glob(str(folder / f"*__{method}.npz"))):
        data = np.load(path)
        name = Path(path).name.split("__")[0]
        out[name] = {k: (data[k].astype(np.float64) if k in ("maxima", "scores") else data[k])
                     for k in ("labels", "maxima", "scores", "maps") if k in data.files}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--extra", type=Path, nargs="*", default=[])
    parser.add_argument("--method", default="musc")
    args = parser.parse_args()
    batches = load(args.folder, args.method)
    for extra in args.extra:
        for name, batch in load(extra, args.method).items():
            batches.setdefault(name, batch)
    rows = {name: statistics(batch) for name, batch in batches.items()}
    columns = ["max", "rscin", "top4", "top16", "top64", "count0.99", "count0.999", "max-med"]
    print("| batch | N (defective) | AUROC max | " + " | ".join(f"ceiling {c}" for c in columns) + " |")
    print("|---|---|---|" + "---|" * len(columns))
    sums: dict[str, list[float]] = {c: [] for c in columns}
    groups = {"shared + demo": lambda n: not n.startswith("pose_") and n != "elpv_all", "pose proxy": lambda n: n.startswith("pose_"),
              "elpv, 2,624 cells": lambda n: n == "elpv_all"}
    per_group: dict[str, dict[str, list[float]]] = {g: {c: [] for c in columns} for g in groups}
    for name, stats in rows.items():
        labels = batches[name]["labels"]
        cells = []
        for c in columns:
            if c in stats:
                value = oracle_recall(stats[c], labels)
                sums[c].append(value)
                for g, member in groups.items():
                    if member(name):
                        per_group[g][c].append(value)
                cells.append(f"{100 * value:.1f}")
            else:
                cells.append("-")
        print(f"| {name} | {len(labels)} ({int(labels.sum())}) | {100 * auroc(stats['max'], labels):.1f} | " + " | ".join(cells) + " |")
    for g, values in per_group.items():
        if not any(values.values()):
            continue
        cells = [f"**{100 * np.mean(v):.1f}** ({len(v)})" if v else "-" for v in values.values()]
        print(f"| **mean, {g}** | | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
