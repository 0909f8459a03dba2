"""Markdown table of PRN against zero-shot MuSc on the same test images, from ``bench_prn.py
--suite --musc --json`` files (issue 23's paper-type targets: PRN pixel AP at least 5 points
above MuSc's, verdict false alarms at most 5 %).

Pixel figures under the ``image`` protocol (each map resized to its image's own size) for both
methods; the ``map`` protocol's margin (masks at each method's map size) beside it.

Run: python bench/prn_paper_table.py bench/results/prn_paper_*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MARGIN_POINTS = 5.0
MAX_FAR = 0.05


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def row(name: str, r: dict) -> str:
    """One table row of a measured category ``r`` (a value of the JSON's ``rows``)."""
    musc = r["musc"]["pixel"]["image"]["pixel_ap"]
    margin = r["margin_points_image_protocol"]
    far = r["verdict_far"]
    margin_ok = "yes" if margin >= MARGIN_POINTS else f"no ({margin - MARGIN_POINTS:+.1f})"
    far_ok = "n/a" if far is None else "yes" if far <= MAX_FAR else f"no ({100 * (far - MAX_FAR):+.1f})"
    return (
        f"| {name} | {r['test']} ({r['test'] - r['test_defective']}) | {100 * r['pixel_ap']:.1f} | {100 * musc:.1f} | {margin:+.1f} "
        f"| {r['margin_points_map_protocol']:+.1f} | {margin_ok} | {_pct(r['pixel_auroc'])} | {_pct(r['pixel_aupro'])} "
        f"| {_pct(r['image_auroc'])} | {_pct(far)} | {far_ok} | {_pct(r['verdict_recall'])} | {_pct(r.get('verdict_review_share'))} "
        f"| {r['seconds']:.0f} | {r['commit']} |"
    )


def musc_row(name: str, r: dict) -> str:
    """MuSc's other figures on the same images (pixel figures: image protocol), PRN's beside them."""
    m = r["musc"]
    pixel = m["pixel"]["image"]
    return (
        f"| {name} | {_pct(pixel['pixel_auroc'])} / {_pct(r['pixel_auroc'])} | {_pct(pixel['pixel_aupro'])} / {_pct(r['pixel_aupro'])} "
        f"| {_pct(m['image_auroc'])} / {_pct(r['image_auroc'])} | {_pct(m['verdict_false_alarm_rate'])} / {_pct(r['verdict_far'])} "
        f"| {_pct(m['verdict_recall'])} / {_pct(r['verdict_recall'])} | {m['seconds']:.0f} / {r['seconds']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    print("| category | test (normal) | PRN P-AP | MuSc P-AP | margin (points) | margin, map protocol | >= 5 points | PRN P-AUROC "
          "| PRN AUPRO | PRN I-AUROC | verdict FAR % | FAR <= 5 % | recall % | review % | PRN s | commit |")
    print("|---" * 16 + "|")
    measured = [(name, r) for path in args.files for name, r in json.loads(path.read_text())["rows"].items()]
    for name, r in measured:
        print(row(name, r))
    print()
    print("| category | P-AUROC MuSc / PRN | AUPRO MuSc / PRN | I-AUROC MuSc / PRN | verdict FAR % MuSc / PRN | recall % MuSc / PRN | seconds MuSc / PRN |")
    print("|---" * 7 + "|")
    for name, r in measured:
        print(musc_row(name, r))


if __name__ == "__main__":
    main()
