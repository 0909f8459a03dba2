"""Markdown rows of PRN's verdict figures from finished ``defectscope evaluate --method prn`` runs.

Each argument is an ``--out`` folder of ``evaluate`` (one or more categories). Per category it
reads ``metrics.json`` and ``<category>/settings.json`` (protocol, threshold rule, seconds) and
prints: category, normal / defective training images, test images (normal), calibration, verdict
false-alarm rate (flagged / normal), verdict recall, image_f1_max, image AUROC and the seconds of
the whole category (training, reading and predicting the test images).

Run: python bench/prn_verdict_table.py OUT_DIR...
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def rows(folder: Path) -> list[str]:
    """One table row per category evaluated into ``folder``."""
    metrics = json.loads((folder / "metrics.json").read_text())
    lines = []
    for category, values in metrics.items():
        settings = json.loads((folder / category / "settings.json").read_text())
        protocol = settings["protocol"]
        with open(folder / category / "scores.csv", newline="") as handle:
            table = list(csv.DictReader(handle))
        normal = [row for row in table if row["label"] == "good"]
        flagged = sum(row["verdict"] == "anomalous" for row in normal)
        rule = settings["threshold_rule"]
        calibration = "cross-fitted" if "cross-fitted" in rule else "held back" if "held-back" in rule else rule
        lines.append(
            f"| {category} | {protocol['train_normal']} + {protocol['train_defective']} | {protocol['test']} ({len(normal)}) "
            f"| {calibration}, cut {settings['threshold']:.3f} | {_percent(values['verdict_false_alarm_rate'])} ({flagged} of {len(normal)}) "
            f"| {_percent(values['verdict_recall'])} | {_percent(values['image_f1_max'])} | {_percent(values['image_auroc'])} "
            f"| {settings['seconds']:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    print("| category | train (normal + defective) | test (normal) | calibration | verdict FAR % | verdict recall % | image_f1_max % | image AUROC % | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        for line in rows(folder):
            print(line)


if __name__ == "__main__":
    main()
