"""Offline study of PRN map smoothing on maps saved by ``bench/bench_prn.py --save-maps FILE.npz``.

For each sigma (map pixels of PRN's S x S map) and each place of the blur:

* ``map``: blur at map size (what ``PRNConfig.smoothing_sigma`` does), then resize bilinearly to
  each image's own size for the pixel metrics; the image score is the top-k mean of the blurred
  map, and the verdict is re-calibrated exactly as PRN does: the split-conformal cut of the
  blurred calibration maps' top-k means (the held-back normal images under the model that never
  saw them), applied to the top-k means of the blurred verdict maps of the test images.
* ``image``: resize to the image's size first, then blur with sigma scaled to image pixels
  (sigma x sqrt(H W) / S); pixel metrics only (the image score and verdict stay those of sigma 0).

``--which verdict``: the maps of the model(s) that give the verdict instead of the detector's
(with ``final_model`` the held-back model, trained without the held-back share: the maps PRN
gives with ``final_model="never"``), for the pixel metrics and image scores. ``--which mean``: the
average of the two (what PRN gives with ``map_models="all"`` when the saved run's ``maps`` are the
final model's alone, as in runs saved before that setting).

``--split FILE --only-type T``: only the test images of defect type T (from the split JSON that
``bench_prn.py`` writes) and every normal test image (the verdict's FAR stays that of all normals).

``--at map``: the pixel metrics at the map's resolution instead, with each ground-truth mask
resized to S x S (bilinear, > 0.5) as ``defectscope evaluate`` computes them (``place`` is then
``map`` only). The two protocols weigh images differently: at image size a large image has more
pixels; at map size every image has S x S.

sigma 0 reproduces the benchmark's own figures (maps stored as float16: differences in the 4th
decimal). Writes a JSON of all rows next to the .npz unless ``--out`` says otherwise.

    python bench/prn_maps.py bench/results/prn_mtd_k10_maps.npz --sigmas 0 1 2 4 6 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from defectscope.data import read_mask
from defectscope.methods.smoothing import gaussian_blur
from defectscope.methods.verdict import Threshold, conformal_count, conformal_threshold, decide
from defectscope.metrics import image_metrics, pixel_metrics, verdict_metrics
from defectscope.report.atomic import atomic_write_text
from defectscope.report.overlay import resize_map


def top_k(maps: np.ndarray, k: int) -> np.ndarray:
    flat = torch.as_tensor(maps, dtype=torch.float32).flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1).double().numpy()


def blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_blur(torch.as_tensor(np.asarray(maps, dtype=np.float32)), sigma).numpy()


def test_masks(mask_paths, shapes, labels) -> list[np.ndarray]:
    """Each saved test image's ground-truth mask at its own size (all False for a normal image)."""
    return [read_mask(path, tuple(shape)) if label == 1 else np.zeros(tuple(shape), bool)
            for path, shape, label in zip(mask_paths, shapes, labels)]


def at_image_size(maps, shapes) -> list[np.ndarray]:
    """Each map resized (bilinear) to its test image's own size: the benchmark's image protocol."""
    return [resize_map(np.asarray(m, dtype=np.float32), tuple(shape)) for m, shape in zip(maps, shapes)]


def cut(calibration_scores: np.ndarray, alpha: float) -> Threshold:
    """PRN's rule (detector.threshold) on held-back scores."""
    if calibration_scores.size < conformal_count(alpha):
        return Threshold(float(calibration_scores.max()), "largest calibration score")
    return conformal_threshold(calibration_scores, alpha, source="held-back normal training images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("maps", help=".npz from bench_prn.py --save-maps")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0, 1, 2, 4, 6, 8])
    parser.add_argument("--places", nargs="+", choices=("map", "image"), default=["map", "image"])
    parser.add_argument("--which", choices=("final", "verdict", "mean"), default="final",
                        help="whose maps the pixel metrics read (mean: the average of the two models' maps)")
    parser.add_argument("--split", default=None, help="split JSON with each test image's defect type (MTD mode)")
    parser.add_argument("--only-type", default=None, help="keep this defect type's test images and the normal ones")
    parser.add_argument("--at", choices=("image", "map"), default="image", help="resolution of the pixel metrics")
    parser.add_argument("--false-alarm-rate", type=float, default=0.05)
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = np.load(args.maps)
    maps, verdict_maps, calibration = data["maps"], data["verdict_maps"], data["calibration_maps"]
    if args.which == "verdict":
        maps = verdict_maps
    elif args.which == "mean":
        maps = ((maps.astype(np.float32) + verdict_maps.astype(np.float32)) / 2).astype(np.float16)
    labels, shapes, k = data["labels"], data["shapes"], int(data["top_k"])
    mask_paths = data["mask_paths"]
    if args.only_type:
        if not args.split:
            parser.error("--only-type needs --split")
        types = {entry["image"]: entry["type"] for entry in json.loads(Path(args.split).read_text())["test"]}
        keep = np.array([label == 0 or types.get(str(path)) == args.only_type for path, label in zip(data["paths"], labels)])
        if not keep[labels == 1].any():
            parser.error(f"no test image of type {args.only_type!r} in {args.split}")
        maps, verdict_maps, labels, shapes, mask_paths = maps[keep], verdict_maps[keep], labels[keep], shapes[keep], mask_paths[keep]
    size = maps.shape[-1]
    masks = test_masks(mask_paths, shapes, labels)
    if args.at == "map":
        from defectscope.pipeline import _mask_at

        masks = [_mask_at(mask, size) for mask in masks]
        args.places = ["map"]
    print(f"{args.maps}: {len(maps)} test maps ({int(labels.sum())} defective) at {size} px, "
          f"{len(calibration)} calibration maps, top-k {k}, stored cut {float(data['threshold']):.4f}", flush=True)
    rows = []
    header = f"{'place':<6} {'sigma':>5} {'P-AUROC':>8} {'P-AP':>6} {'AUPRO':>6} {'I-AUROC':>8} {'cut':>7} {'FAR':>6} {'recall':>7} {'s':>5}"
    print(header, flush=True)
    for place in args.places:
        for sigma in args.sigmas:
            if place == "image" and sigma == 0 and "map" in args.places and 0 in args.sigmas:
                continue  # identical to map, sigma 0
            started = time.time()
            row: dict = {"place": place, "sigma": sigma}
            if place == "map":
                blurred = blur(maps, sigma)
                resized = list(blurred) if args.at == "map" else at_image_size(blurred, shapes)
                scores = top_k(blurred, k)
                threshold = cut(top_k(blur(calibration, sigma), k), args.false_alarm_rate) if len(calibration) else None
                statistic = top_k(blur(verdict_maps, sigma), k)
                row.update(image_metrics(scores, labels))
                if threshold is not None:
                    row["cut"] = threshold.value
                    row.update(verdict_metrics(decide(statistic, threshold), labels))
            else:
                resized = []
                for m, s in zip(maps, shapes):
                    big = resize_map(m.astype(np.float32), tuple(s))
                    scaled = sigma * float(np.sqrt(s[0] * s[1])) / size
                    resized.append(blur(big[None], scaled)[0] if sigma > 0 else big)
            row.update(pixel_metrics(resized, masks))
            row["seconds"] = round(time.time() - started, 1)
            rows.append(row)

            def fmt(key: str, width: int, digits: int = 3) -> str:
                value = row.get(key)
                return f"{value:{width}.{digits}f}" if isinstance(value, float) else " " * (width - 1) + "-"

            print(f"{place:<6} {sigma:5g} {fmt('pixel_auroc', 8)} {fmt('pixel_ap', 6)} {fmt('pixel_aupro', 6)} "
                  f"{fmt('image_auroc', 8)} {fmt('cut', 7, 4)} {fmt('verdict_false_alarm_rate', 6)} "
                  f"{fmt('verdict_recall', 7)} {row['seconds']:5.0f}", flush=True)
    out = Path(args.out) if args.out else Path(args.maps).with_suffix(".sweep.json")
    atomic_write_text(out, json.dumps({"maps": str(args.maps), "only_type": args.only_type, "which": args.which, "at": args.at, "false_alarm_rate": args.false_alarm_rate, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
