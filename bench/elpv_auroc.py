"""Image metrics of a `defectscope score` run over the elpv cells against the package's labels.

Defective = the experts' defect probability > 0 (1/3, 2/3 or 1); also per cell type (mono, poly).

    python bench/elpv_auroc.py OUT/scores.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from defectscope.metrics import image_metrics
from defectscope.sample import elpv_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path)
    args = parser.parse_args()
    labels = {}
    with open(elpv_root() / "labels.csv", newline="") as handle:
        for row in csv.reader(handle, delimiter=" ", skipinitialspace=True):
            labels[Path(row[0]).name] = (float(row[1]) > 0, row[2])
    with open(args.scores, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["score"]]
    names = [Path(r["path"]).name for r in rows]
    scores = np.array([float(r["score"]) for r in rows])
    defective = np.array([labels[n][0] for n in names], dtype=int)
    kinds = np.array([labels[n][1] for n in names])
    report = {"all": {"n": len(rows), "defective": int(defective.sum()), **image_metrics(scores, defective)}}
    for kind in ("mono", "poly"):
        keep = kinds == kind
        report[kind] = {"n": int(keep.sum()), "defective": int(defective[keep].sum()), **image_metrics(scores[keep], defective[keep])}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
