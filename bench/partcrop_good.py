"""Reference mode (``--good``) on the small-part proxy, with and without ``part_crop``.

The good images are the category's ``train/good`` images put through the same small-part
transform as its test images (bench/pose_proxy.py ``small_category``, under the name
``NAME-good`` so that every good image draws its own size, angle and place). MuSc is calibrated
on them (leave-one-out, split-conformal) and scores the small-part test images against them.
Dev data: the crop's thresholds were chosen on these very batches.

    python bench/partcrop_good.py --threads 1 --good-most 40
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pose_proxy import EDGE_PADDED, small_category  # noqa: E402
from suite import shared_categories  # noqa: E402

from defectscope.data.io import read_image  # noqa: E402
from defectscope.data.layouts import Category  # noqa: E402
from defectscope.methods.bank import reference_sample  # noqa: E402
from defectscope.methods.musc import MuSc, MuScConfig  # noqa: E402
from defectscope.metrics import image_metrics, pixel_metrics  # noqa: E402
from defectscope.pipeline import _mask_at, apply_threads, load_ground_truth  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--good-most", type=int, default=40, help="at most this many good images (seeded sample)")
    parser.add_argument("--false-alarm-rate", type=float, default=0.1)
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args()
    apply_threads(args.threads)
    rows = []
    for category in shared_categories():
        if category.name not in EDGE_PADDED or (args.only and category.name not in args.only):
            continue
        train = [category.train[i] for i in reference_sample(len(category.train), args.good_most)]
        good_cat = small_category(Category(category.name + "-good", category.root, category.layout, [], train, False), args.seed)
        test_cat = small_category(category, args.seed)
        good = [read_image(s.path) for s in good_cat.test]
        images = [read_image(s.path) for s in test_cat.test]
        labels = np.array([s.label for s in test_cat.test], dtype=bool)
        truth = load_ground_truth(test_cat.test, images)
        backbone = None
        for mode in ("off", "auto"):
            musc = MuSc(MuScConfig(part_crop=mode), backbone=backbone)
            backbone = musc.backbone
            started = time.perf_counter()
            musc.calibrate(good, args.false_alarm_rate)
            result = musc.predict(images)
            wall = time.perf_counter() - started
            maps = result.anomaly_maps
            masks = np.stack([_mask_at(m, maps.shape[-2:]) for m in truth])
            at224 = F.interpolate(torch.from_numpy(maps).unsqueeze(1), size=(224, 224), mode="bilinear", align_corners=False).squeeze(1).numpy()
            masks224 = np.stack([_mask_at(m, (224, 224)) for m in truth])
            own, common = pixel_metrics(maps, masks), pixel_metrics(at224, masks224)
            flagged = np.asarray(result.is_anomalous, dtype=bool)
            facts = result.extras.get("part_crop", {})
            row = {
                "batch": category.name, "part_crop": mode, "good": len(good), "test": len(images),
                "image_auroc": image_metrics(result.image_scores, labels)["image_auroc"],
                "pixel_auroc": own["pixel_auroc"], "pixel_ap": own["pixel_ap"],
                "pixel_auroc_224": common["pixel_auroc"], "pixel_ap_224": common["pixel_ap"],
                "false_alarms": f"{int((flagged & ~labels).sum())}/{int((~labels).sum())}",
                "recall": f"{int((flagged & labels).sum())}/{int(labels.sum())}",
                "cropped": facts.get("cropped"), "side_share": facts.get("side_share"), "map_side": int(maps.shape[-1]),
                "wall_seconds": round(wall, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| batch | part_crop | I-AUROC | P-AUROC | P-AP | P-AUROC @224 | P-AP @224 | false alarms | recall | cropped | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['part_crop']} | {100 * r['image_auroc']:.1f} | {100 * r['pixel_auroc']:.1f} | {100 * r['pixel_ap']:.1f} | "
              f"{100 * r['pixel_auroc_224']:.1f} | {100 * r['pixel_ap_224']:.1f} | {r['false_alarms']} | {r['recall']} | "
              f"{'yes (%.0f %%)' % (100 * r['side_share']) if r['cropped'] else 'no'} | {r['wall_seconds']} |")


if __name__ == "__main__":
    main()
