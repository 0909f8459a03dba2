"""Two input sizes fused (issue 24, item 5): MuSc at 224 px and at 320 px on every shared batch,
and the two runs' maps and image scores combined.

Each batch runs through the library's evaluate path twice (the defaults, then ``image_size=320``).
Fusion, per batch: each size's maps and image scores are standardised over the batch (minus
their median, over their standard deviation; maps over all pixels of the batch), the 320 px maps
resized to the 224 px maps' shape (bilinear), and the two averaged. The metrics are the
evaluate path's (image AUROC, pixel AUROC, pixel AP, AUPRO; masks at the maps' resolution).
Seconds: the two runs' predict time together. Dev data: the defaults were chosen on these batches.

    python bench/fused_sizes.py --threads 1 [--only bottle --only pa_]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from defectscope.metrics import image_metrics, pixel_metrics
from defectscope.pipeline import RunOptions, _mask_at, apply_threads, evaluate_category, load_ground_truth
from suite import SHARED, shared_categories


def _standard(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    spread = float(x.std())
    return (x - float(np.median(x))) / (spread if spread > 0 else 1.0)


def _resized(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if maps.shape[-2:] == shape:
        return maps
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    return torch.nn.functional.interpolate(t, size=shape, mode="bilinear", align_corners=False)[:, 0].numpy()


def _row(scores: np.ndarray, maps: np.ndarray, labels: np.ndarray, truth: list[np.ndarray]) -> dict[str, float]:
    masks = np.stack([_mask_at(m, tuple(maps.shape[-2:])) for m in truth])
    out = {"image_auroc": image_metrics(scores, labels)["image_auroc"]}
    out.update({k: v for k, v in pixel_metrics(maps, masks).items() if k in ("pixel_auroc", "pixel_ap", "pixel_aupro")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--large", type=int, default=320)
    args = parser.parse_args()
    apply_threads(args.threads)
    categories = shared_categories(SHARED)
    if args.only:
        categories = [c for c in categories if any(c.name.startswith(p) for p in args.only)]
    keys = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_aupro")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for category in categories:
        runs = {}
        for name, size in (("224", None), (str(args.large), args.large)):
            started = time.perf_counter()
            result, images, samples, _, _ = evaluate_category(category, RunOptions(method="musc", image_size=size, threads=args.threads))
            runs[name] = (result, time.perf_counter() - started)
        labels = np.array([s.label for s in samples])
        truth = load_ground_truth(samples, images)
        small, large = runs["224"][0], runs[str(args.large)][0]
        shape = tuple(small.anomaly_maps.shape[-2:])
        rows = {
            "224": _row(small.image_scores, small.anomaly_maps, labels, truth),
            str(args.large): _row(large.image_scores, large.anomaly_maps, labels, truth),
            "fused": _row(
                0.5 * (_standard(small.image_scores) + _standard(large.image_scores)),
                0.5 * (_standard(small.anomaly_maps) + _standard(_resized(large.anomaly_maps, shape))),
                labels,
                truth,
            ),
        }
        n = len(samples)
        rows["224"]["s_per_image"] = runs["224"][1] / n
        rows[str(args.large)]["s_per_image"] = runs[str(args.large)][1] / n
        rows["fused"]["s_per_image"] = (runs["224"][1] + runs[str(args.large)][1]) / n
        table[category.name] = rows
        print(category.name, {k: {m: round(100 * v, 1) if m in keys else round(v, 3) for m, v in r.items()} for k, r in rows.items()}, flush=True)
    print("| variant | " + " | ".join(table) + " | mean |")
    print("|---" * (len(table) + 2) + "|")
    for variant in ("224", str(args.large), "fused"):
        for key in keys:
            values = [table[c][variant][key] for c in table]
            print(f"| {variant} {key} | " + " | ".join(f"{100 * v:.1f}" for v in values) + f" | {100 * np.mean(values):.1f} |")


if __name__ == "__main__":
    main()
