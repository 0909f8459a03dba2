"""What keeping the aspect of tiled maps is worth: one saved PRN model (``tile_aspect`` > 0), its
test maps scored as they are (S x n*S) and squashed to S x S first (the maps before 2026-12-04).

Same model, same test images (``kshot_split`` of the category at ``--k`` / ``--seed``), same
pixel metric code (maps resized bilinearly to each image's size, `prn_benchmark.predict_test`);
only the map's shape differs: ``squashed`` resizes each long map to S x S (bilinear) before it is
resized to the image, which is what ``tiles.stitch`` did to every tiled map. Image scores are
the detector's (each image's own long map) in both rows.

    python bench/prn_long_squash.py --root /tmp/prnlong/long_strip --model /tmp/prnlong/model_tile15_s0 \
        --json bench/results/prn_long_tile15_s0_squashed.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prn_benchmark import category_split, predict_test  # noqa: E402

from defectscope.methods.prn import PRN  # noqa: E402
from defectscope.metrics import pixel_metrics  # noqa: E402
from defectscope.report.atomic import atomic_write_text  # noqa: E402
from defectscope.report.overlay import resize_map  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, _, test = category_split(args.root, args.k, args.seed)
    detector = PRN.load(args.model)
    size = detector.config.image_size
    raw: list = []
    maps, masks, *_ = predict_test(detector, test, 16, raw_maps=raw)
    squashed = [resize_map(resize_map(m, (size, size)), mask.shape) for m, mask in zip(raw, masks)]
    rows = {"as_returned": pixel_metrics(maps, masks), "squashed": pixel_metrics(squashed, masks),
            "map_shapes": sorted({str(tuple(np.shape(m))) for m in raw}), "test": len(test), "model": args.model,
            "config": detector.config.to_json()}
    print(json.dumps({k: rows[k] for k in ("as_returned", "squashed", "map_shapes")}, indent=1))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
