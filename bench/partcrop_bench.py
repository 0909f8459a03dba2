"""The small-part proxy (docs/PARTCROP.md): MuSc with and without ``part_crop``, per variant.

Every variant runs through the library's evaluate path on the small-part proxy of bottle and
hazelnut_toy (bench/pose_proxy.py: dev data shrunk, turned and placed on its own background).
Pixel metrics are given twice: at the maps' own resolution (with the crop the pasted maps are
finer than the 224 px frame of the uncropped run) and with every map resized to 224 x 224 (the
masks likewise), so the columns ``@224`` compare like with like.

    python bench/partcrop_bench.py --threads 1 --variant off=part_crop=off --variant auto=
    python bench/partcrop_bench.py --threads 1 --variant rot4=part_crop=off,rotations=4 --variant rot4+auto=rotations=4
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
from suite import shared_categories, write_json  # noqa: E402

from defectscope.metrics import pixel_metrics  # noqa: E402
from defectscope.pipeline import RunOptions, _mask_at, apply_threads, evaluate_category, load_ground_truth  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, params = text.partition("=")
    options = {}
    for item in filter(None, params.split(",")):
        key, _, value = item.partition("=")
        options[key.strip()] = value.strip()
    return name, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="NAME=key=value,key=value (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    apply_threads(args.threads)
    categories = [small_category(c, args.seed) for c in shared_categories() if c.name in EDGE_PADDED]
    if args.only:
        categories = [c for c in categories if any(c.name.startswith(p) for p in args.only)]
    rows = []
    for text in args.variant or ["off=part_crop=off", "auto="]:
        name, params = parse_variant(text)
        for category in categories:
            options = RunOptions(method="musc", threads=args.threads, method_options=dict(params))
            started = time.perf_counter()
            result, images, samples, _, metrics = evaluate_category(category, options)
            wall = time.perf_counter() - started
            maps = F.interpolate(torch.from_numpy(result.anomaly_maps).unsqueeze(1), size=(224, 224), mode="bilinear",
                                 align_corners=False).squeeze(1).numpy()
            masks = np.stack([_mask_at(m, (224, 224)) for m in load_ground_truth(samples, images)])
            common = pixel_metrics(maps, masks)
            facts = result.extras.get("part_crop", {})
            row = {
                "variant": name, "batch": category.name, "params": params,
                "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"], "pixel_ap": metrics["pixel_ap"],
                "pixel_auroc_224": common["pixel_auroc"], "pixel_ap_224": common["pixel_ap"],
                "map_side": int(result.anomaly_maps.shape[-1]),
                "seconds_per_image": float(result.settings["seconds"]) / len(samples), "wall_seconds": wall,
                "cropped": facts.get("cropped"), "side_share": facts.get("side_share"),
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "params"}), flush=True)
    print("| variant | batch | I-AUROC | P-AUROC | P-AP | P-AUROC @224 | P-AP @224 | map side | crop (side / short side) | s/img |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        crop = "off" if not r["cropped"] else f"yes ({100 * r['side_share']:.0f} %)"
        print(f"| {r['variant']} | {r['batch']} | {100 * r['image_auroc']:.1f} | {100 * r['pixel_auroc']:.1f} | {100 * r['pixel_ap']:.1f} | "
              f"{100 * r['pixel_auroc_224']:.1f} | {100 * r['pixel_ap_224']:.1f} | {r['map_side']} | {crop} | {r['seconds_per_image']:.3f} |")
    if args.json is not None:
        write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
