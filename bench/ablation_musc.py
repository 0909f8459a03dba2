"""MuSc default-setting ablation on all three shared datasets.

For each (backbone, input size) the features of every batch are extracted once with layers at
strides 8, 16 and 32 (on the stride-8 grid); MSM patch scores are computed once per (layer,
degree). Every setting in the table is then an average over a subset of those per-(layer,
degree) scores, plus optional smoothing, so all settings are compared on identical work.

Batches (test images only, zero-shot, no labels used for scoring):
- mvtec_bottle: the 83 test images;
- hazelnut_toy: the 23 test images;
- magnetic_tile: a seeded batch of 100 tiles: 80 defect-free tiles from the test half of the
  documented split (seed 0) and 4 of each defect class (20), drawn with numpy seed 0.

    python bench/ablation_musc.py --out bench/results/ablation.json

Prints a markdown table (per dataset and mean: I-AUROC, P-AUROC, P-AP, AUPRO) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from defectscope.backbones import get_backbone
from defectscope.data import magnetic_tile, mvtec_category, read_image
from defectscope.methods.features import extract_in_batches
from defectscope.methods.musc import gaussian_blur, lnamd, mutual_scores, rscin
from defectscope.pipeline import _mask_at, load_ground_truth
from defectscope.metrics import image_metrics, pixel_metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
STRIDES = ("stride8", "stride16", "stride32")
DEGREES = (1, 3, 5)


def batches(shared: Path) -> dict[str, list]:
    out = {
        "bottle": mvtec_category(shared / "mvtec_bottle").test,
        "hazelnut_toy": mvtec_category(shared / "hazelnut_toy").test,
    }
    tiles = magnetic_tile(shared / "magnetic_tile", seed=0).test
    rng = np.random.default_rng(0)
    free = [s for s in tiles if s.label == 0]
    chosen = [free[i] for i in sorted(rng.choice(len(free), 80, replace=False))]
    for kind in sorted({s.defect_type for s in tiles if s.label == 1}):
        members = [s for s in tiles if s.defect_type == kind]
        chosen += [members[i] for i in sorted(rng.choice(len(members), 4, replace=False))]
    out["magnetic_tile"] = chosen
    return out


def per_set_scores(backbone_name: str, size: int, images):
    backbone = get_backbone(backbone_name, image_size=size, layers=list(STRIDES))
    t = time.perf_counter()
    features = extract_in_batches(backbone, images, 8)
    t_features = time.perf_counter() - t
    scores = {}
    t = time.perf_counter()
    for name, layer in zip(STRIDES, features.layers):
        for degree, feature_set in zip(DEGREES, lnamd(layer, DEGREES)):
            scores[(name, degree)] = mutual_scores(feature_set)
    t_scoring = time.perf_counter() - t
    return scores, features.grid, features.embedding, t_features, t_scoring


def evaluate(scores, grid, embedding, size, layers, degrees, sigma, labels, masks):
    chosen = torch.stack([scores[(layer, degree)] for layer in layers for degree in degrees]).mean(0)
    maps = torch.nn.functional.interpolate(chosen.view(-1, 1, *grid), size=(size, size), mode="bilinear", align_corners=True).squeeze(1)
    maps = gaussian_blur(maps, sigma)
    raw = maps.flatten(1).amax(1)
    image_scores = rscin(raw, embedding, (1, 2, 3))
    result = dict(image_metrics(image_scores, labels))
    result.update(pixel_metrics(maps.numpy(), masks))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/ablation.json"))
    parser.add_argument("--configs", nargs="*", default=["efficientnet-lite0:224", "efficientnet-lite0:320", "efficientnet-lite1:256", "efficientnet-lite2:256"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = batches(SHARED)
    loaded = {}
    for name, samples in data.items():
        images = [read_image(s.path) for s in samples]
        labels = np.array([s.label for s in samples])
        loaded[name] = (images, labels, load_ground_truth(samples, images))
    settings = []
    for layers in (("stride8",), ("stride16",), ("stride8", "stride16"), ("stride8", "stride16", "stride32")):
        for degrees in ((1,), (1, 3), (1, 3, 5)):
            for sigma in (0.0, 4.0):
                settings.append((layers, degrees, sigma))
    rows = []
    for config in args.configs:
        backbone_name, size = config.split(":")
        size = int(size)
        per_dataset = {}
        for name, (images, labels, masks_full) in loaded.items():
            scores, grid, embedding, tf, ts = per_set_scores(backbone_name, size, images)
            masks = np.stack([_mask_at(m, size) for m in masks_full])
            per_dataset[name] = (scores, grid, embedding, masks, labels)
            print(f"{config} {name}: features {tf:.1f}s, scoring 9 sets {ts:.1f}s", flush=True)
        for layers, degrees, sigma in settings:
            row = {"backbone": backbone_name, "size": size, "layers": "+".join(layers), "degrees": ",".join(map(str, degrees)), "sigma": sigma}
            for name, (scores, grid, embedding, masks, labels) in per_dataset.items():
                row[name] = evaluate(scores, grid, embedding, size, layers, degrees, sigma, labels, masks)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    keys = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_aupro")
    print("| backbone | size | layers | degrees | sigma | " + " | ".join(f"{d} {k}" for d in data for k in keys) + " | mean I-AUROC | mean P-AP |")
    for row in rows:
        cells = [f"{100 * row[d][k]:.1f}" if row[d][k] is not None else "n/a" for d in data for k in keys]
        mean_i = np.mean([row[d]["image_auroc"] for d in data])
        mean_p = np.mean([row[d]["pixel_ap"] for d in data])
        print(f"| {row['backbone']} | {row['size']} | {row['layers']} | {row['degrees']} | {row['sigma']} | " + " | ".join(cells) + f" | {100 * mean_i:.1f} | {100 * mean_p:.1f} |")


if __name__ == "__main__":
    main()
