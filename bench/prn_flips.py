"""PRN's ``map_flips`` (test-time flips averaged into the maps) on a saved model, without retraining.

Loads a model written by ``bench/bench_prn.py --suite --only CATEGORY --save-model DIR``, sets
``map_flips`` to each value asked for and scores the same test images as that run (the split and
metric code of `bench/prn_benchmark.py`: ``category_split`` and ``score_test``, so ``none``
repeats the bench_prn run's figures): pixel AP / AUROC / AUPRO (maps resized to each image's own
size, the benchmark's ``image`` protocol), the pixel AP under the ``map`` protocol, image AUROC,
the verdict's false-alarm rate and recall, and the seconds the predictions took. ``--reference``
(the run's ``--json``) checks that ``none`` gives its figures. The seconds of the scoring pass
are one measurement each; ``--time-images N --time-repeats R`` then also times the predictions
alone on the first N test images R times per value (images read once first) and reports the
median seconds per image (the machine's load as it is: say what it was).

    python bench/prn_flips.py /tmp/prntta/mt_s0_model --only magnetic_tile --seed 0 --threads 1 \\
        --reference bench/results/prn_mt_tta_none_s0.json --json bench/results/prn_mt_tta_s0.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prn import SHARED, shared_categories  # noqa: E402
from prn_benchmark import category_split, score_test  # noqa: E402

from defectscope.data import read_image  # noqa: E402
from defectscope.methods.prn import PRN  # noqa: E402
from defectscope.methods.prn.config import MAP_FLIPS  # noqa: E402
from defectscope.report.atomic import atomic_write_text  # noqa: E402

COMPARED = ("pixel_ap", "pixel_auroc", "pixel_aupro", "image_auroc", "verdict_far", "verdict_recall")


def row_of(figures: dict) -> dict:
    """The figures bench_prn's ``--json`` rows store, from :func:`prn_benchmark.score_test`."""
    m = figures["metrics"]
    return {"pixel_ap": m["pixel_ap"], "pixel_auroc": m["pixel_auroc"], "pixel_aupro": m["pixel_aupro"],
            "pixel_ap_map_protocol": figures["pixel_protocols"]["map"]["pixel_ap"], "image_auroc": m["image_auroc"],
            "verdict_far": m["verdict_false_alarm_rate"], "verdict_recall": m["verdict_recall"],
            "verdict_review_share": m.get("verdict_review_share"), "threshold": figures["threshold"],
            "test_defective": figures["test_defective"], "predict_seconds": round(figures["predict_seconds"], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="folder of a model saved by bench_prn.py --save-model")
    parser.add_argument("--only", required=True, help="the shared category the model was trained on")
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the run's --seed (it sets the split)")
    parser.add_argument("--flips", nargs="+", default=list(MAP_FLIPS), choices=list(MAP_FLIPS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", default=None, help="the bench_prn run's --json: 'none' must give its figures")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    parser.add_argument("--time-images", type=int, default=0, help="also time predict() on this many test images")
    parser.add_argument("--time-repeats", type=int, default=3)
    parser.add_argument("--time-only", action="store_true", help="only the timing (no figures)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, _, test = category_split(shared_categories(Path(args.shared))[args.only], args.k, args.seed)
    detector = PRN.load(args.model)
    trained = detector.config
    if trained.seed != args.seed:
        sys.exit(f"the model was trained with seed {trained.seed}, not --seed {args.seed}: the test images would differ")
    print(f"{args.only}, seed {args.seed}: {len(test)} test images; model {args.model} (map_flips saved: {trained.map_flips})")
    print(f"{'flips':<6} {'P-AP':>6} {'P-AP map':>8} {'P-AUROC':>8} {'AUPRO':>6} {'I-AUROC':>8} {'FAR':>6} {'recall':>7} {'s':>6}")
    rows = {}
    for flips in args.flips if not args.time_only else ():
        detector.config = replace(trained, map_flips=flips)
        row = row_of(score_test(detector, test))
        rows[flips] = row
        print(f"{flips:<6} {row['pixel_ap']:6.3f} {row['pixel_ap_map_protocol']:8.3f} {row['pixel_auroc']:8.3f} "
              f"{row['pixel_aupro']:6.3f} {row['image_auroc']:8.3f} {row['verdict_far']:6.3f} {row['verdict_recall']:7.3f} "
              f"{row['predict_seconds']:6.0f}", flush=True)
    if args.time_images:
        images = [read_image(s.path) for s in test[: args.time_images]]
        for flips in args.flips:
            detector.config = replace(trained, map_flips=flips)
            seconds = []
            for _ in range(args.time_repeats):
                started = time.perf_counter()
                for start in range(0, len(images), 16):  # the chunks score_test predicts in
                    detector.predict(images[start : start + 16])
                seconds.append(time.perf_counter() - started)
            rows.setdefault(flips, {})["predict_seconds_per_image_median"] = round(float(np.median(seconds)) / len(images), 4)
            rows[flips]["predict_seconds_timed"] = [round(v, 2) for v in seconds]
            print(f"{flips:<6} predict: median {np.median(seconds) / len(images):.3f} s per image "
                  f"({args.time_repeats} runs of {len(images)} images)", flush=True)
    same = None
    if args.reference and not args.time_only and "none" in rows:
        stored = json.loads(Path(args.reference).read_text())["rows"][args.only]
        differences = {key: (rows["none"][key], stored[key]) for key in COMPARED if rows["none"][key] != stored[key]}
        same = not differences
        print("'none' repeats the reference run exactly" if same else f"'none' differs from the reference run: {differences}")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps({
            "category": args.only, "k": args.k, "seed": args.seed, "threads": args.threads, "model": args.model,
            "test": len(test), "pixel_protocol": "image (maps resized to each image's size); pixel_ap_map_protocol: map",
            "reference": args.reference, "none_equals_reference": same, "rows": rows,
            "timing": {"images": args.time_images, "repeats": args.time_repeats} if args.time_images else None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1) + "\n")
    return 0 if same is not False else 1


if __name__ == "__main__":
    sys.exit(main())
