"""The several-looks gate's statistic (mean pairwise cosine of the global embeddings,
``pose.embedding_agreement``) of every shared batch, untransformed and on the crop pose proxy
(aligned and turned windows, seeds 0-2): one backbone pass per batch, no scoring.
docs/POSE_CROP.md section 5c.

    POSE_DATA=/tmp/cropproxy/data python bench/looks_agreements.py --out /tmp/agreements.json
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pose_proxy import crop_category  # noqa: E402
from suite import shared_categories  # noqa: E402

import defectscope as ds  # noqa: E402
from defectscope.data import read_image  # noqa: E402
from defectscope.methods.pose import embedding_agreement  # noqa: E402


def agreement(detector, category) -> float:
    images = [read_image(sample.path) for sample in category.test]
    _, _, embeddings = detector.feature_sets(images, None, native_grids=detector.config.native_grids)
    return float(embedding_agreement(embeddings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("POSE_DATA", "/tmp/pose-data"))
    detector, rows = ds.MuSc(), {}
    for category in shared_categories():
        rows[f"{category.name}|plain"] = agreement(detector, category)
        for seed in args.seeds:
            for turned in (False, True):
                crop, _ = crop_category(category, seed=seed, turned=turned, cache=cache)
                rows[f"{category.name}|s{seed}-{'turned' if turned else 'aligned'}"] = agreement(detector, crop)
        print(category.name, {k.split("|")[1]: round(v, 4) for k, v in rows.items() if k.startswith(category.name + "|")}, flush=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
