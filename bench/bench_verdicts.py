"""Verdicts of the zero-shot methods with default settings on every shared category.

    python bench/bench_verdicts.py                          # musc and codegraph, label-free rule
    python bench/bench_verdicts.py --methods musc --good    # reference mode: train/good as --good
    python bench/bench_verdicts.py --rescore bench/results/verdicts.json   # today's label-free rule on stored scores

Batches: mvtec_bottle test (83), hazelnut_toy test (23), the seeded 100-tile magnetic-tile batch
of bench/ablation_musc.py (80 % defect-free) and the six paper_impurities test sets (72 each, two
thirds defective). Each batch scores itself (zero-shot) and gets the method's own verdict at the
default false-alarm budget; with ``--good`` the category's normal training images are the good
folder instead (magnetic tiles: the normal tiles of the documented split's training half;
``--max-good N`` draws a seeded subset).
Prints a markdown table (false-alarm rate, recall, oracle image F1) and writes JSON (with each
image's label and verdict statistic, so that another rule can be tried on the same scores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ablation_musc import SHARED, batches  # noqa: E402

from defectscope.data import discover, magnetic_tile, mvtec_category  # noqa: E402
from defectscope.metrics import image_metrics, verdict_metrics  # noqa: E402
from defectscope.pipeline import read_batch  # noqa: E402


def categories() -> dict[str, tuple[list, list]]:
    """name -> (test samples, good samples for --good)."""
    test = batches(SHARED)
    out = {
        "bottle": (test["bottle"], mvtec_category(SHARED / "mvtec_bottle").train),
        "hazelnut_toy": (test["hazelnut_toy"], mvtec_category(SHARED / "hazelnut_toy").train),
        "magnetic_tile": (test["magnetic_tile"], magnetic_tile(SHARED / "magnetic_tile", seed=0).train),
    }
    for category in discover(SHARED / "paper_impurities"):
        out[category.name] = (category.test, category.train)
    return out


def detector(method: str, false_alarm_rate: float, backbone: str | None = None):
    """The method at its defaults (``backbone``: another backbone at its own default input)."""
    extra = {"backbone": backbone} if backbone else {}
    if method == "musc":
        from defectscope.methods.musc import MuSc, MuScConfig

        return MuSc(MuScConfig(false_alarm_rate=false_alarm_rate, **extra))
    from defectscope.methods.codegraph import CoDeGraph, CoDeGraphConfig

    return CoDeGraph(CoDeGraphConfig(false_alarm_rate=false_alarm_rate, **extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["musc", "codegraph"], choices=["musc", "codegraph"])
    parser.add_argument("--false-alarm-rate", type=float, default=0.05)
    parser.add_argument("--good", action="store_true", help="reference mode: the category's normal training images as --good")
    parser.add_argument("--max-good", type=int, default=0, help="with --good: at most this many good images, drawn with numpy seed 0 (0: all)")
    parser.add_argument("--only", nargs="*", help="category names (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/verdicts.json"))
    parser.add_argument("--rescore", type=Path, help="apply the current label-free rule to the scores stored in this JSON (no scoring)")
    args = parser.parse_args()
    if args.rescore is not None:
        print_table([rescored(row, args.false_alarm_rate) for row in json.loads(args.rescore.read_text())])
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*more reliable.*")
    rows = []
    for name, (test, good) in categories().items():
        if args.only and name not in args.only:
            continue
        images, _, _ = read_batch([s.path for s in test])
        labels = np.array([s.label for s in test])
        if args.max_good and len(good) > args.max_good:
            good = [good[i] for i in sorted(np.random.default_rng(0).choice(len(good), args.max_good, replace=False))]
        good_images = read_batch([s.path for s in good])[0] if args.good else None
        for method in args.methods:
            started = time.perf_counter()
            model = detector(method, args.false_alarm_rate)
            if good_images is not None:
                model.calibrate(good_images, args.false_alarm_rate)
            result = model.predict(images)
            row = {"category": name, "method": method, "n": len(images), "normal": int((labels == 0).sum()),
                   "good": None if good_images is None else len(good_images),
                   **verdict_metrics(result.is_anomalous, labels, result.needs_review),
                   "image_f1_max": image_metrics(result.image_scores, labels)["image_f1_max"],
                   "threshold": result.threshold, "rule": result.threshold_rule,
                   "seconds": round(time.perf_counter() - started, 1),
                   "labels": labels.tolist(), "verdict_scores": np.asarray(result.verdict_scores).tolist()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print_table(rows)


def rescored(row: dict, false_alarm_rate: float) -> dict:
    """A stored label-free row with its verdict recomputed by today's rule from its stored scores."""
    from defectscope.methods.labelfree import label_free_threshold
    from defectscope.methods.verdict import cap_review, decide, in_review

    scores, labels = np.asarray(row["verdict_scores"]), np.asarray(row["labels"])
    threshold = cap_review(scores, label_free_threshold(scores, false_alarm_rate, statistic="map maxima"), 0.2)
    return {**row, **verdict_metrics(decide(scores, threshold), labels, in_review(scores, threshold)),
            "threshold": threshold.value, "rule": threshold.rule}


def print_table(rows: list[dict]) -> None:
    print("\n| category | method | N (normal) | verdict FAR | verdict recall | review share | image_f1_max |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        keys = ("verdict_false_alarm_rate", "verdict_recall", "verdict_review_share", "image_f1_max")
        cells = [f"{100 * row[k]:.1f}" if row.get(k) is not None else "n/a" for k in keys]
        print(f"| {row['category']} | {row['method']} | {row['n']} ({row['normal']}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
